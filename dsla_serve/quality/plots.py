"""PNG plots of quality results (matplotlib, Agg backend: no display needed).

Every function takes plain data (labels and numbers, as found in the results JSON) and a path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_position_curves(curves: dict[str, dict], path: str | Path, title: str = "Loss by token position") -> Path:
    """curves: {label: {"position": [...], "nll": [...]}} (the "curve" of a perplexity result)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, c in curves.items():
        ax.plot(c["position"], c["nll"], label=label, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("mean negative log-likelihood (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy(series: dict[str, tuple[list, list]], path: str | Path, xlabel: str, title: str,
                  log_x: bool = False) -> Path:
    """series: {label: (x values, accuracies in [0, 1])}, one line with markers per label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, [100 * y for y in ys], marker="o", label=label)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_by_depth(series: dict[str, tuple[list, list]], path: str | Path, ylabel: str, title: str,
                  reference: float | None = None, reference_label: str = "teacher") -> Path:
    """series: {label: (depths, values)}; an optional reference line (the teacher's value). When every
    series holds the same single depth, a line plot says nothing: one horizontal bar per series instead."""
    plt = _pyplot()
    depths = {tuple(xs) for xs, _ in series.values()}
    if len(depths) == 1 and len(only := next(iter(depths))) == 1:
        return _plot_one_depth(plt, series, only[0], path, ylabel, title, reference, reference_label)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("conversion depth (layers converted)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_one_depth(plt, series, depth, path, xlabel, title, reference, reference_label) -> Path:
    labels = list(series)
    values = [series[k][1][0] for k in labels]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(labels)))
    ax.barh(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
    ax.set_yticks(range(len(labels)), [textwrap.fill(k, 45) for k in labels], fontsize=7)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1)
        ax.text(reference, -0.5, f" {reference_label} {reference:.3g}", fontsize=7, va="bottom")
    ax.set_xlim(0, 1.15 * max(values + ([reference] if reference is not None else [])))
    ax.set_xlabel(xlabel)
    ax.set_title(textwrap.fill(f"{title} (depth {depth})", 70), fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curve(steps: list[int], train_loss: list[float], path: str | Path,
                        val_steps: list[int] | None = None, val_loss: list[float] | None = None,
                        answer_loss: list[float | None] | None = None, title: str = "Teacher training",
                        stage_starts: dict[str, int] | None = None) -> Path:
    """Training loss per step; when given, validation loss at its evaluation steps, the loss on
    retrieval answer tokens per step (None where a batch had none), and stage boundaries {name: step}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train_loss, linewidth=1, label="train loss")
    if answer_loss:
        pts = [(s, a) for s, a in zip(steps, answer_loss) if a is not None]
        if pts:
            ax.plot(*zip(*pts), linewidth=0.8, alpha=0.8, label="train loss on answer tokens")
    if val_steps:
        ax.plot(val_steps, val_loss, marker="o", markersize=3, label="validation loss")
    top = ax.get_ylim()[1]
    for i, (name, start) in enumerate((stage_starts or {}).items()):
        ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
        # one label per line, staggered downwards, so labels of short stages do not overlap
        ax.text(start, top, "\n" * i + f" {name}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if stage_starts:  # the stage labels take the top of the plot
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8)
    else:
        ax.legend()
    return _save(fig, path)


def plot_eval_runs(runs: list[dict], out_dir: str | Path) -> list[Path]:
    """The standard plots of a `dsla-serve eval` results list (one entry per model/depth, with "label")."""
    out_dir = Path(out_dir)
    paths = []
    curves = {r["label"]: r["perplexity"]["curve"] for r in runs if "perplexity" in r}
    if curves:
        paths.append(plot_position_curves(curves, out_dir / "perplexity_by_position.png"))
    pk = {r["label"]: ([x["length"] for x in r["passkey"]["rows"]], [x["accuracy"] for x in r["passkey"]["rows"]])
          for r in runs if "passkey" in r}
    if pk:
        paths.append(plot_accuracy(pk, out_dir / "passkey.png", "context length (tokens)", "Passkey retrieval",
                                   log_x=True))
    mq = {r["label"]: ([x["pairs"] for x in r["mqar"]["rows"]], [x["accuracy"] for x in r["mqar"]["rows"]])
          for r in runs if "mqar" in r}
    if mq:
        paths.append(plot_accuracy(mq, out_dir / "mqar.png", "key-value pairs", "Multi-query associative recall",
                                   log_x=True))
    return paths
