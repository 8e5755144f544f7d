"""What every benchmark writes: one JSON result and a bar chart of it, with the machine it ran on.

Benchmarks compare as ratios measured in one run (two sides against the same server, data and load), so
each side is measured over several rounds and reported as the median; the chart shows the median as a bar
and every round as a dot, so a reader sees the spread the median hides.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True, kw_only=True)
class Panel:
    """One subplot of a bar chart: a bar per label at the median of its samples.

    Attributes:
        title: Subplot title (what is measured).
        unit: Y-axis label.
        bars: Label → samples (one per round); each bar is their median, each sample a dot.
    """

    title: str
    unit: str
    bars: Mapping[str, Sequence[float]]


def median(values: Sequence[float]) -> float:
    """The median of the measured rounds.

    Raises:
        ValueError: No values (a benchmark that measured nothing has no result).
    """
    if not values:
        raise ValueError("median of no measurements")
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is not positive (nothing to compare with)."""
    return numerator / denominator if denominator > 0 else None


def percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean of request latencies in ms, and how many requests they cover."""
    values = np.asarray(latencies_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "requests": len(values),
    }


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPU count, platform, Python, and the load average when measured."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        # Other work on the host shifts absolute rates (not the ratios), so the load goes with the numbers.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def bar_chart(path: Path, *, title: str, panels: Sequence[Panel], note: str | None = None) -> Path:
    """Draw panels side by side into a PNG: median bars labelled with their value, one dot per round.

    Args:
        path: PNG file to write (its folder is created).
        title: Figure title.
        panels: One subplot each.
        note: A line under the title (e.g. the ratio and its goal).

    Returns:
        ``path``.
    """
    # Figure + Agg canvas instead of pyplot: no global backend switch, no GUI, safe in any thread.
    width = 4.2 * max(len(panels), 1)
    figure = Figure(figsize=(width, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    # Wrapped to the figure's width (~11 characters an inch at this size): a long note was cut at both edges.
    wrapped = textwrap.fill(note, width=int(11 * width)) if note else ""
    figure.suptitle(f"{title}\n{wrapped}" if note else title, fontsize=11)
    for index, panel in enumerate(panels, start=1):
        _draw_panel(figure.add_subplot(1, max(len(panels), 1), index), panel)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _draw_panel(axes: Any, panel: Panel) -> None:
    labels = list(panel.bars)
    medians = [median(panel.bars[label]) for label in labels]
    positions = range(len(labels))
    bars = axes.bar(positions, medians, color=[f"C{i}" for i in positions], alpha=0.75)
    axes.bar_label(bars, labels=[f"{m:.3g}" for m in medians], padding=2, fontsize=9)
    for position, label in zip(positions, labels, strict=True):
        samples = panel.bars[label]
        axes.scatter([position] * len(samples), samples, color="black", s=12, zorder=3)
    axes.set_xticks(list(positions), labels)
    axes.set_title(panel.title, fontsize=10)
    axes.set_ylabel(panel.unit)
    axes.set_ylim(0, max([*medians, *(s for label in labels for s in panel.bars[label]), 1e-9]) * 1.18)


def write_report(
    out: Path, result: Mapping[str, Any], *, title: str, panels: Sequence[Panel], note: str | None = None
) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` and its chart to the same stem with ``.png``.

    The JSON is written to a temporary name and renamed, so a crash never leaves half a result behind.

    Returns:
        The result as written (with ``plot``: the PNG's file name, relative to the JSON).
    """
    png = bar_chart(out.with_suffix(".png"), title=title, panels=panels, note=note)
    written = {**result, "plot": png.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(written, indent=2, default=str) + "\n")
    tmp.replace(out)
    return written
