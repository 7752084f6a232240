"""Plots of the research tools: accuracy against supervision steps (depth sweeps), against mean steps per example
(adaptive halting), and against reasoning depth k with one line per head (the heads benchmark)."""

from __future__ import annotations

from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_sweep(rows: list[dict], path, *, trained_steps: int | None = None) -> Path:
    """PNG: exact and token accuracy against supervision steps (log2 axis), one line per (T, n); a dotted line marks
    the trained depth."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the sweep plot is written as .png")
    settings = sorted({(r["H_cycles"], r["L_cycles"]) for r in rows})
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("exact_accuracy", "accuracy"), ("exact accuracy", "token accuracy")):
        for T, n in settings:
            line = sorted((r["steps"], r[metric]) for r in rows if (r["H_cycles"], r["L_cycles"]) == (T, n))
            ax.plot(*zip(*line), marker="o", label=f"T={T}, n={n}")
        if trained_steps is not None:
            ax.axvline(trained_steps, color="grey", linestyle=":", label=f"trained ({trained_steps} steps)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("supervision steps")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_adaptive(fixed: list[dict], adaptive: list[dict], path) -> Path:
    """PNG: exact accuracy against mean steps per example, fixed depth (line) and each adaptive rule (points)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the adaptive-halting plot is written as .png")
    fig = _figure(6, 4)
    ax = fig.subplots()
    line = sorted((r["steps"], r["exact_accuracy"]) for r in fixed)
    ax.plot(*zip(*line), marker="o", color="black", label="fixed depth")
    for r in adaptive:
        ax.scatter(r["steps"], r["exact_accuracy"], zorder=3)
        ax.annotate(
            r["rule"], (r["steps"], r["exact_accuracy"]), fontsize=7, xytext=(4, -8), textcoords="offset points"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean supervision steps per example")
    ax.set_ylabel("exact accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_k(curves: dict[str, dict[int, list[float]]], path, *, trained_k: list[int] | None = None) -> Path:
    """PNG: accuracy against depth k, one line per head: the mean over seeds with a band of +- one standard deviation
    (sample std; no band for a single seed). curves: head -> k -> one accuracy (0..1) per seed. A shaded span marks
    the trained depths."""
    import statistics

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the accuracy-vs-k plot is written as .png")
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    if trained_k:
        ax.axvspan(min(trained_k) - 0.3, max(trained_k) + 0.3, color="grey", alpha=0.15, label="trained k")
    for head, by_k in curves.items():
        ks = sorted(by_k)
        means = [100 * statistics.fmean(by_k[k]) for k in ks]
        (line,) = ax.plot(ks, means, marker="o", label=head)
        if all(len(by_k[k]) > 1 for k in ks):
            spread = [100 * statistics.stdev(by_k[k]) for k in ks]
            ax.fill_between(ks, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)],
                            color=line.get_color(), alpha=0.15)
    ax.set_xlabel("k (kinship facts to chain)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


__all__ = ["plot_accuracy_vs_k", "plot_adaptive", "plot_sweep"]
