"""What a measurement returns: named figures with a unit and a direction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One figure of one server. ``higher_is_better`` decides how the two are compared."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    value: float | None
    display: str | None = None  # shown instead of a missing value, e.g. "missed"


@dataclass
class Outcome:
    """The figures of one measurement on one server, plus raw details for the JSON file."""

    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        higher: bool,
        value: float | None,
        display: str | None = None,
    ) -> None:
        self.metrics.append(Metric(key, label, unit, higher, value, display))


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats drifting
    return sorted_values[min(len(sorted_values), int(rank)) - 1]
