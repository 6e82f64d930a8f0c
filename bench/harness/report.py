"""Turn per-server outcomes into the printed comparison table."""

from __future__ import annotations

from harness.metrics import Metric
from harness.servers import BOX, FORSUN

GAIN_HEADER = "gain x (>1: forsun-box better)"


def _fmt(metric: Metric | None) -> str:
    if metric is None:
        return "-"
    value, unit = metric.value, metric.unit
    if value is None:
        return metric.display or "-"
    if unit in ("count", "plans") or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def gain(metric_box: Metric | None, metric_forsun: Metric | None) -> str:
    """forsun-box / forsun for higher-is-better figures, forsun / forsun-box for the others."""
    if metric_box is None or metric_forsun is None:
        return "-"
    b, f = metric_box.value, metric_forsun.value
    if b is None or f is None:
        return "-"
    num, den = (b, f) if metric_box.higher_is_better else (f, b)
    if den == 0:
        return "=" if num == 0 else "inf"
    if num < 0 or den < 0:
        return "n/a"  # early (negative) lateness has no meaningful ratio
    return f"{num / den:.2f}"


def table(results: dict[str, dict[str, Metric]], order: list[str]) -> str:
    """Rows ``metric | unit | forsun-box | forsun | gain`` in measurement order."""
    rows = [("metric", "unit", BOX, FORSUN, GAIN_HEADER)]
    for key in order:
        box, forsun = results.get(BOX, {}).get(key), results.get(FORSUN, {}).get(key)
        some = box or forsun
        assert some is not None
        rows.append(
            (
                some.label,
                some.unit + ("" if some.higher_is_better else " (lower better)"),
                _fmt(box),
                _fmt(forsun),
                gain(box, forsun),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append(" | ".join(cells))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
