"""SLO attainment and goodput against request rate, one line per label, as a PNG."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .report import Summary


def plot_rates(summaries: list[Summary], path: str | Path, title: str = "") -> None:
    """Two panels over the offered rate: SLO attainment (share of requests meeting every target) and
    goodput (such requests per second). Runs without a rate (trace replays) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.rate is not None:
            series[s.label].append(s)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, runs in series.items():
        runs.sort(key=lambda s: s.rate)
        rates = [s.rate for s in runs]
        left.plot(rates, [100 * (s.attainment or 0.0) for s in runs], marker="o", label=label)
        right.plot(rates, [s.goodput for s in runs], marker="o", label=label)
    left.set(xlabel="offered rate (requests/s)", ylabel="SLO attainment (%)", ylim=(-3, 103))
    right.set(xlabel="offered rate (requests/s)", ylabel="goodput (requests/s meeting every SLO)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
