"""Generator parameters: typed parsing of CLI strings (`key=value`) and Python values.

Token counts and delays accept a constant or a distribution spec: `32`, `uniform:16:64`,
`normal:MEAN:SD`, `exp:MEAN`, `choice:A|B|C`. Arrivals: `zero`, `poisson:RATE_PER_S`,
`interval:SECONDS`. Every error is a ValueError naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dist:
    """A constant or a random distribution over non-negative numbers."""

    kind: str
    args: tuple[float, ...]
    text: str

    def sample(self, rng: np.random.Generator) -> float:
        k, a = self.kind, self.args
        v: Any  # a float, or a numpy integer from an integer range (kept: the draws are pinned)
        if k == "const":
            v = a[0]
        elif k == "uniform":
            v = (
                rng.uniform(a[0], a[1])
                if a[0] != int(a[0]) or a[1] != int(a[1])
                else rng.integers(int(a[0]), int(a[1]) + 1)
            )
        elif k == "normal":
            v = rng.normal(a[0], a[1])
        elif k == "exp":
            v = rng.exponential(a[0])
        else:  # choice
            v = a[int(rng.integers(0, len(a)))]
        return max(0.0, float(v))

    def sample_int(self, rng: np.random.Generator) -> int:
        return int(round(self.sample(rng)))

    def __str__(self) -> str:
        return self.text


def parse_dist(text: Any) -> Dist:
    if isinstance(text, Dist):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return Dist("const", (float(text),), str(text))
    if not isinstance(text, str):
        raise ValueError("expected a number or a distribution like uniform:16:64")
    name, _, rest = text.partition(":")
    arity = {"uniform": 2, "normal": 2, "exp": 1}
    try:
        if not rest:
            return parse_dist(int(name) if name.strip().lstrip("-").isdigit() else float(name))
        if name == "choice":
            vals = tuple(float(v) for v in rest.split("|"))
        elif name in arity:
            vals = tuple(float(v) for v in rest.split(":"))
            if len(vals) != arity[name]:
                raise ValueError
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"bad value {text!r}: expected N, uniform:LO:HI, normal:MEAN:SD, exp:MEAN or choice:A|B"
        ) from None
    if any(v < 0 or v != v for v in vals) or (name == "uniform" and vals[0] > vals[1]):
        raise ValueError(f"bad value {text!r}: bounds must be non-negative and ordered")
    return Dist(name, vals, text)


@dataclass(frozen=True)
class Arrival:
    """When each workflow instance (client) starts."""

    kind: str
    value: float
    text: str

    def starts(self, n: int, rng: np.random.Generator) -> list[float]:
        if self.kind == "zero":
            return [0.0] * n
        if self.kind == "interval":
            return [i * self.value for i in range(n)]
        gaps = rng.exponential(1.0 / self.value, size=max(n - 1, 0))
        return [0.0] + np.cumsum(gaps).tolist()

    def __str__(self) -> str:
        return self.text


def parse_arrival(text: Any) -> Arrival:
    if isinstance(text, Arrival):
        return text
    s = str(text)
    name, _, rest = s.partition(":")
    if name == "zero" and not rest:
        return Arrival("zero", 0.0, s)
    try:
        value = float(rest)
    except ValueError:
        value = -1.0
    if name in ("poisson", "interval") and value > 0 and value != float("inf"):
        return Arrival(name, value, s)
    raise ValueError(f"bad value {s!r}: expected zero, poisson:RATE_PER_S or interval:SECONDS")


def parse_count(text: Any, minimum: int = 1) -> int:
    if isinstance(text, bool):
        raise ValueError(f"bad value {text!r}: expected an integer")
    try:
        v = int(text) if not isinstance(text, float) or text.is_integer() else None
    except (TypeError, ValueError):
        v = None
    if v is None:
        raise ValueError(f"bad value {text!r}: expected an integer")
    if v < minimum:
        raise ValueError(f"bad value {text!r}: must be >= {minimum}")
    return v


def parse_fraction(text: Any) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"bad value {text!r}: expected a number in [0, 1]")
    return v


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    s = str(text).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"bad value {text!r}: expected true or false")


Parser = Callable[[Any], Any]
COUNT: Parser = parse_count
COUNT0: Parser = lambda v: parse_count(v, minimum=0)  # noqa: E731
DIST: Parser = parse_dist
ARRIVAL: Parser = parse_arrival
FRACTION: Parser = parse_fraction
BOOL: Parser = parse_bool


def parse_params(workload: str, spec: dict[str, tuple[Parser, Any]], given: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and parse every given value; unknown keys and bad values name the key."""
    out: dict[str, Any] = {}
    for key in given:
        if key not in spec:
            raise ValueError(f"unknown parameter {key!r} for {workload} (known: {', '.join(sorted(spec))})")
    for key, (parse, default) in spec.items():
        raw = given.get(key, default)
        try:
            out[key] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {exc}") from None
    return out
