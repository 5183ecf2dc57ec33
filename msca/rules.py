"""Value rules for config fields: `(test, what the value must be)`, checked at launch with the key named. Hydra
checks keys and types; these check values (a negative count must not run silently)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def at_least(lo):
    return (lambda v: v >= lo), f"must be >= {lo}"


def above(lo):
    return (lambda v: v > lo), f"must be > {lo}"


def within(lo, hi, hi_open=False):
    return (lambda v: lo <= v < hi if hi_open else lo <= v <= hi), f"must be in [{lo}, {hi}{')' if hi_open else ']'}"


def one_of(*choices):
    return (lambda v: v in choices), f"is not one of {list(choices)}"


def check(key: str, value, rule) -> None:
    ok, must = rule
    if value is not None and not ok(value):
        raise ValueError(f"{key}={value!r} {must}" if must.startswith("is not") else f"{key}={value} {must}")


def ruled(default: Any, rule) -> Any:
    """A dataclass field whose rule sits next to it: `nodes: int = ruled(1, at_least(1))`."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})
