"""When will a paused session call again? An online learner of per-session pause lengths.

A *pause* is the time between the moment a session (client) has no call left in the engine (its
last running request finished) and its next submit: think time, tool runs and user turns alike.
``GapLearner`` predicts the next pause of a session from the pauses it has seen, per session and
per *context* (the agent whose call ended the running period: ``main`` or a sub-agent type; the
trace format carries no stop reason through a request), with a prior for sessions seen little.

The estimate works in log space, where pause lengths (seconds to minutes, heavy-tailed) are close
to normal. Three levels, each shrunk towards the one above by ``shrink_n`` pseudo-observations:
- population: mean = log of the *median* of every pause observed so far (robust to the tail; before
  any observation, ``prior_gap_s``), variance = the log-variance of all pauses (``prior_log_sd``
  before two observations);
- session: ``(shrink_n * population + n * session mean) / (shrink_n + n)``, variance likewise;
- context: the same against the session's estimate.
The predicted pause is ``exp(mean)`` (the median of that log-normal); ``quantile_s`` and
``residual_median_s`` (the median remaining pause given the session has been idle ``waited_s``)
read the same distribution. Pure Python, no clock: callers pass times (``now_s``).
``SessionActivity`` tells when a session pauses and resumes from the engine's submits and finishes.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from statistics import NormalDist

_STD_NORMAL = NormalDist()
MIN_GAP_S = 1e-3  # a pause of 0 (a sub-agent spawned as its parent's call ended) counts as 1 ms


@dataclass
class _LogStats:
    """Welford running mean / sum of squared deviations of log pause lengths."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)


class _RunningMedian:
    """Median of a growing multiset in O(log n) per insert (two heaps)."""

    def __init__(self) -> None:
        self.low: list[float] = []  # max-heap (negated)
        self.high: list[float] = []  # min-heap

    def add(self, x: float) -> None:
        if self.low and x > -self.low[0]:
            heapq.heappush(self.high, x)
        else:
            heapq.heappush(self.low, -x)
        if len(self.low) > len(self.high) + 1:
            heapq.heappush(self.high, -heapq.heappop(self.low))
        elif len(self.high) > len(self.low):
            heapq.heappush(self.low, -heapq.heappop(self.high))

    def median(self) -> float | None:
        if not self.low:
            return None
        if len(self.low) > len(self.high):
            return -self.low[0]
        return (-self.low[0] + self.high[0]) / 2


class GapLearner:
    """Per-session, per-context pause predictor with a population prior (module docstring)."""

    def __init__(self, prior_gap_s: float = 10.0, prior_log_sd: float = 1.5, shrink_n: float = 3.0) -> None:
        if prior_gap_s <= 0 or prior_log_sd <= 0 or shrink_n < 0:
            raise ValueError("prior_gap_s and prior_log_sd must be > 0, shrink_n >= 0")
        self.prior_gap_s, self.prior_log_sd, self.shrink_n = prior_gap_s, prior_log_sd, shrink_n
        self.population = _LogStats()
        self.population_median = _RunningMedian()
        self.sessions: dict[str, _LogStats] = {}
        self.contexts: dict[tuple[str, str], _LogStats] = {}

    def observe(self, client: str, context: str, gap_s: float) -> None:
        """A pause of ``gap_s`` seconds of ``client`` after a call of ``context`` ended."""
        x = math.log(max(gap_s, MIN_GAP_S))
        self.population.add(x)
        self.population_median.add(x)
        self.sessions.setdefault(client, _LogStats()).add(x)
        self.contexts.setdefault((client, context), _LogStats()).add(x)

    def forget(self, client: str) -> None:
        """A session ended: drop its own statistics (the population keeps its pauses)."""
        self.sessions.pop(client, None)
        for key in [k for k in self.contexts if k[0] == client]:
            del self.contexts[key]

    # ----- the estimate -------------------------------------------------------------------------
    def _prior(self) -> tuple[float, float]:
        median = self.population_median.median()
        mean = math.log(self.prior_gap_s) if median is None else median
        pop = self.population
        var = pop.m2 / (pop.n - 1) if pop.n >= 2 else self.prior_log_sd**2
        return mean, var

    def _shrink(self, mean: float, var: float, stats: _LogStats | None) -> tuple[float, float]:
        if stats is None or stats.n == 0:
            return mean, var
        k, n = self.shrink_n, stats.n
        return (k * mean + n * stats.mean) / (k + n), (k * var + stats.m2) / (k + n)

    def log_normal(self, client: str, context: str | None = None) -> tuple[float, float]:
        """(mean, sd) of the log pause predicted for ``client`` (after a call of ``context``)."""
        mean, var = self._shrink(*self._prior(), self.sessions.get(client))
        if context is not None:
            mean, var = self._shrink(mean, var, self.contexts.get((client, context)))
        return mean, max(math.sqrt(var), 1e-6)

    def predict_s(self, client: str, context: str | None = None) -> float:
        """Predicted pause length (the median of the learned log-normal), seconds."""
        return math.exp(self.log_normal(client, context)[0])

    def quantile_s(self, client: str, context: str | None, p: float) -> float:
        """The ``p``-quantile of the predicted pause (0 < p < 1), seconds."""
        mean, sd = self.log_normal(client, context)
        return math.exp(mean + sd * _STD_NORMAL.inv_cdf(p))

    def residual_median_s(self, client: str, context: str | None, waited_s: float) -> float:
        """Median total pause given it already lasted ``waited_s``: the pause length ``g`` with
        ``P(G > g) = P(G > waited) / 2``. Grows with ``waited_s`` (a long pause predicts a longer one)."""
        mean, sd = self.log_normal(client, context)
        survive = 1.0 - _STD_NORMAL.cdf((math.log(max(waited_s, MIN_GAP_S)) - mean) / sd)
        if survive <= 1e-12:  # far in the tail: the normal has no usable mass left
            return 2.0 * max(waited_s, MIN_GAP_S)
        z = _STD_NORMAL.inv_cdf(1.0 - survive / 2)
        return max(math.exp(mean + sd * z), waited_s)


class SessionActivity:
    """Per-session count of calls in the engine: a session *pauses* when its count drops to 0 and
    *resumes* at its next submit. Also remembers each session's (client, agent) users."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.users: dict[str, set[tuple[str, str]]] = {}

    def submit(self, client: str, user: tuple[str, str] | None) -> bool:
        """A call of ``client`` arrived; True when it resumes a paused (or new) session."""
        count = self.active.get(client, 0)
        self.active[client] = count + 1
        if user is not None:
            self.users.setdefault(client, set()).add(user)
        return count == 0

    def finish(self, client: str) -> bool:
        """A call of ``client`` finished; True when the session now has no call left (a pause)."""
        count = self.active.get(client, 0) - 1
        if count <= 0:
            self.active.pop(client, None)
            return True
        self.active[client] = count
        return False

    def running(self, client: str) -> bool:
        return client in self.active

    def end(self, client: str) -> set[tuple[str, str]]:
        """The session ended: forget it; returns its users."""
        self.active.pop(client, None)
        return self.users.pop(client, set())
