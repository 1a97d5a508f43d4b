"""Eviction policies: one ``Policy`` subclass per module; each maps a node to a sort key (lowest
evicted first). The contract is ``kvflow.policies.base.Policy``.

Adding a policy = one module (copy ``lru.py``) + one ``conf/policy/<name>.yaml`` whose
``eviction._target_`` names the class (``module.Class``), plus its keyword arguments. The policy
names that ``make_policy`` accepts (``POLICY_NAMES``: each class's ``name``) come from those YAMLs;
nothing else lists them.
"""

from __future__ import annotations

import functools
import importlib
from importlib.resources import files
from typing import Any

import yaml

from kvflow.policies.base import Policy

__all__ = ["POLICY_NAMES", "Policy", "load_policy_class", "make_policy", "policy_classes"]


def load_policy_class(target: str) -> type[Policy]:
    """The ``Policy`` subclass named by ``module.Class`` (or ``module:Class``)."""
    module_name, _, cls_name = target.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name) if module_name else None
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"eviction._target_ '{target}': cannot import it ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ValueError(f"eviction._target_ '{target}': not a kvflow.policies.base.Policy subclass")
    return cls


@functools.cache
def policy_classes() -> dict[str, type[Policy]]:
    """Policy name -> class, for every class a ``conf/policy/*.yaml`` targets: plain policies
    before their refinements (subclasses later), each group in YAML file order."""
    found: dict[str, type[Policy]] = {}
    for path in sorted(files("conf").joinpath("policy").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        target = ((yaml.safe_load(path.read_text()) or {}).get("eviction") or {}).get("_target_")
        if not target:
            raise ValueError(f"conf/policy/{path.name}: eviction._target_ is missing")
        cls = load_policy_class(str(target))
        found.setdefault(cls.name, cls)
    return dict(sorted(found.items(), key=lambda item: len(item[1].__mro__)))  # (a stable sort)


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Instantiate a policy by name (``POLICY_NAMES``), or by ``module.Class`` path for a policy
    no YAML names yet."""
    cls = policy_classes().get(name)
    if cls is None:
        if "." not in name and ":" not in name:
            raise ValueError(f"unknown policy '{name}'; valid: {', '.join(policy_classes())}")
        cls = load_policy_class(name)
    return cls(**kwargs)


def __getattr__(attr: str) -> Any:
    if attr == "POLICY_NAMES":  # derived lazily: reading the YAMLs imports every policy module
        return tuple(policy_classes())
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
