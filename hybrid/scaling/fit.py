"""The scaling law fit, the compute-optimal frontier and the study's plots.

The law is error = A * params^-a * depth^-b + c (error = 1 - held-out exact accuracy), fitted by least squares on
log(error), the usual form of scaling-law fits (Kaplan et al. 2020, arXiv 2001.08361; Hoffmann et al. 2022, arXiv
2203.15556). An exponent is fitted only along an axis with at least two distinct values. Uncertainty: the standard
errors from the fit's covariance and a bootstrap over points (resampled with replacement, refitted), which stays
honest when the covariance does not (few points, a parameter at its bound).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LAW = "error = A * params^-a * depth^-b + c, error = 1 - exact_accuracy, fitted on log(error)"


def _model(free: tuple[bool, bool]):
    """log-error model over x = (log params, log depth) with the exponents of fixed axes held at 0."""

    def f(x, log_A, *rest):
        rest = list(rest)
        a = rest.pop(0) if free[0] else 0.0
        b = rest.pop(0) if free[1] else 0.0
        c = rest.pop(0)
        return np.log(np.exp(log_A - a * x[0] - b * x[1]) + c)

    return f


def _fit_once(x, y, free, p0):
    from scipy.optimize import curve_fit

    k = sum(free)
    lower = [-50.0] + [-5.0] * k + [0.0]
    upper = [50.0] + [5.0] * k + [1.0]
    return curve_fit(_model(free), x, y, p0=p0, bounds=(lower, upper), maxfev=20000)


def fit_law(params, depth, error, *, floor: float = 1e-3, bootstrap: int = 200, seed: int = 0) -> dict:
    """Fit the law to points (params, depth, error); errors are clipped to [floor, 1] before the log."""
    params, depth = np.asarray(params, float), np.asarray(depth, float)
    error = np.clip(np.asarray(error, float), floor, 1.0)
    free = (len(set(params)) > 1, len(set(depth)) > 1)
    k = 2 + sum(free)
    weak = []
    if not any(free):
        return {"law": LAW, "fitted": False, "reason": "every point has the same params and depth"}
    if len(error) < k + 1:
        return {"law": LAW, "fitted": False, "reason": f"{len(error)} points for {k} parameters: too few to fit"}
    for axis, ok in zip(("params", "depth"), free):
        if not ok:
            weak.append(f"one {axis} value only: its exponent is not fitted (held at 0)")
    x, y = np.stack([np.log(params), np.log(depth)]), np.log(error)
    p0 = [math.log(max(error.max(), floor))] + [0.1] * sum(free) + [min(error.min() / 2, 0.5)]
    popt, pcov = _fit_once(x, y, free, p0)
    se = np.sqrt(np.clip(np.diag(pcov), 0, None)) if np.all(np.isfinite(pcov)) else np.full(len(popt), np.nan)

    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if len(set(idx)) < k:
            continue
        try:
            draws.append(_fit_once(x[:, idx], y[idx], free, popt)[0])
        except (RuntimeError, ValueError):
            continue
    draws = np.array(draws) if draws else np.empty((0, len(popt)))

    names = ["log_A"] + [n for n, ok in zip(("a", "b"), free) if ok] + ["c"]
    out = {"law": LAW, "fitted": True, "n_points": int(len(y)), "floor": floor, "bootstrap_fits": int(len(draws))}
    for i, name in enumerate(names):
        out[name] = float(popt[i])
        out[f"{name}_se"] = float(se[i])
        if len(draws) >= 10:
            lo, hi = np.percentile(draws[:, i], [16, 84])
            out[f"{name}_ci68"] = [float(lo), float(hi)]
    for name in ("a", "b"):
        out.setdefault(name, 0.0)
    out["A"] = float(math.exp(out.pop("log_A")))
    out.pop("log_A_se", None), out.pop("log_A_ci68", None)
    residual = y - _model(free)(x, *popt)
    out["rmse_log_error"] = float(np.sqrt(np.mean(residual**2)))
    total = float(np.sum((y - y.mean()) ** 2))
    out["r2_log_error"] = float(1 - np.sum(residual**2) / total) if total > 0 else None
    if len(y) < 2 * k:
        weak.append(f"{len(y)} points for {k} fitted parameters")
    if len(draws) < 10:
        weak.append("the bootstrap refits failed: no bootstrap interval")
    out["weak"] = weak
    return out


def predict_error(law: dict, params, depth):
    return law["A"] * np.asarray(params, float) ** -law["a"] * np.asarray(depth, float) ** -law["b"] + law["c"]


def frontier(rows: list[dict], key: str = "exact_accuracy") -> list[str]:
    """Points no other point beats at equal or lower training FLOPs: the compute-optimal ones, cheapest first."""
    best, names = -math.inf, []
    for row in sorted(rows, key=lambda r: (r["train_flops"], -r[key])):
        if row[key] > best:
            best = row[key]
            names.append(row["point"])
    return names


def _mean_by(rows, group, x, y):
    """{group value: [(x, mean y over rows with that x)]} sorted by x (seeds and equal-x points averaged)."""
    out: dict = {}
    for row in rows:
        out.setdefault(row[group], {}).setdefault(row[x], []).append(row[y])
    return {g: sorted((xv, float(np.mean(ys))) for xv, ys in pts.items()) for g, pts in sorted(out.items())}


def plot_depth(rows: list[dict], law: dict, path: Path) -> None:
    """Exact accuracy against effective depth, one line per parameter count; hollow: 2x test-time steps; dashed:
    the fitted law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    trained = _mean_by(rows, "params", "effective_depth", "exact_accuracy")
    tested = _mean_by(rows, "params", "effective_depth", "exact_accuracy_tt")
    for i, (params, pts) in enumerate(trained.items()):
        color = f"C{i}"
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-", color=color, label=f"{params:,} params")
        tx, ty = zip(*tested[params])
        ax.plot(tx, ty, "o:", color=color, mfc="none", alpha=0.7)
        if law.get("fitted"):
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, 1 - predict_error(law, params, grid), "--", color=color, alpha=0.6)
    ax.set_xscale("log")
    depths = sorted({r["effective_depth"] for r in rows})
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.minorticks_off()
    ax.set_xlabel("effective depth: T(n+1) x layers x supervision steps (trained)")
    ax.set_ylabel("held-out exact accuracy")
    title = "solid: trained steps; dotted, hollow: 2x test-time steps"
    if law.get("fitted"):
        title += f"\ndashed: fit, a={law['a']:.2f} (params), b={law['b']:.2f} (depth), c={law['c']:.3f}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compute(rows: list[dict], law: dict, optimal: list[str], path: Path) -> None:
    """Exact accuracy against training FLOPs, coloured by parameter count; the compute-optimal frontier joined and
    ringed; crosses: the fitted law's prediction for each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = sorted({r["params"] for r in rows})
    for i, params in enumerate(sizes):
        mine = [r for r in rows if r["params"] == params]
        ax.scatter([r["train_flops"] for r in mine], [r["exact_accuracy"] for r in mine], color=f"C{i}",
                   label=f"{params:,} params")
        if law.get("fitted"):
            pred = 1 - predict_error(law, [r["params"] for r in mine], [r["effective_depth"] for r in mine])
            ax.scatter([r["train_flops"] for r in mine], pred, marker="x", color=f"C{i}", alpha=0.6)
    by_name = {r["point"]: r for r in rows}
    front = [by_name[n] for n in optimal]
    ax.step([r["train_flops"] for r in front], [r["exact_accuracy"] for r in front], "k-", where="post", lw=1,
            label="compute-optimal frontier")
    ax.scatter([r["train_flops"] for r in front], [r["exact_accuracy"] for r in front], s=120, facecolors="none",
               edgecolors="k")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (recursive core matmuls)")
    ax.set_ylabel("held-out exact accuracy")
    ax.set_title("x: fitted law" if law.get("fitted") else "no fit", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
