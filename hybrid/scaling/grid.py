"""Study configs, grid points, step budgets, analytic FLOP and parameter counts, and per-point bookkeeping.

A point is an ordinary run of an existing recipe: the base config plus the point's `key=value` overrides. This
module knows nothing of models or training; the recipe reads each point's resolved architecture into a `PointArch`
and this module counts from it.

FLOPs count the matmuls of the recursive core, as `hybrid.eval.depth.CoreFlops` measures them (2 per multiply-add,
attention scores included, embeddings and output heads left out). One optimiser step runs one supervision step per
example (the official persistent carry): every network call forward, plus 2x forward (the backward) for the calls
with gradient (TRM: the last cycle's n + 1 calls; HRM and TRM's 1-step-gradient ablation: the last L and H calls,
arXiv 2506.21734 section 3 "one-step gradient"), plus HRM's extra no-grad step for the Q-continue target.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hybrid.config import ConfigError

POINT_RESULT = "study_point.json"  # written last, atomically: its presence marks a finished point
ATTEMPTS = "study_attempts.jsonl"  # wall seconds of every training attempt (a resumed point sums them)

CSV_COLUMNS = [
    "point", "seed", "params", "hidden_size", "layers", "H_cycles", "L_cycles", "halt_max_steps",
    "effective_depth", "steps", "global_batch_size", "train_flops", "wall_s", "exact_accuracy", "token_accuracy",
    "test_time_steps", "exact_accuracy_tt", "token_accuracy_tt", "compute_optimal",
]
SUMMARY_METRICS = ("exact_accuracy", "exact_accuracy_tt", "token_accuracy")
SUMMARY_COLUMNS = ["group", "seeds", "params", "steps", "train_flops", "wall_s_mean"] + [
    f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std", "min", "max")]


@dataclass
class BudgetConfig:
    kind: Literal["steps", "flops"] = "steps"
    steps: int | None = None  # equal steps: every point trains this many (default: the base's training.total_steps)
    flops: float | None = None  # equal FLOPs: training FLOPs per point; a point's steps = round(flops / FLOPs per step)
    min_steps: int = 1  # a FLOP budget that leaves a point fewer steps than this (or than its warm-up) is an error

    def __post_init__(self):
        if self.kind == "flops" and (self.flops is None or self.flops <= 0):
            raise ValueError("budget.kind=flops needs budget.flops > 0 (training FLOPs per point; --dry-run shows "
                             "every point's FLOPs per step)")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"budget.steps must be >= 1, got {self.steps}")


@dataclass
class StudyConfig:
    """`recipes/scaling_study.py`: a grid of runs of one recipe."""

    recipe: Literal["train_pure", "train_hybrid"]
    base_config: str  # the recipe config every point starts from, relative to this file
    output_dir: str  # study.csv, study.json, plots, and points/<name>/ (each point's run folder)
    grid: dict = field(default_factory=dict)  # dotted recipe key -> list of values; the points are their product
    # Named rows (name -> list of key=value), crossed with the grid and the seeds: variants that differ in several
    # keys at once, such as the rows of an ablation table. A point's name starts with variant-<name>.
    variants: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])  # run.seed of each point, innermost axis
    overrides: list[str] = field(default_factory=list)  # key=value applied to every point (before the grid values)
    follow: dict = field(default_factory=dict)  # dotted key -> grid key whose value it copies (e.g. a width)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    build_data: list[str] | None = None  # arguments of recipes/build_data.py, run when the data folder is missing
    test_time_factor: int = 2  # test-time supervision steps = this x the trained halt_max_steps
    eval_set: str | None = None  # hybrid: the held-out set reported (default: the first in results.json)
    seq_len: int | None = None  # tokens per example for FLOP counts (pure: read from the data when present)
    device_flops_per_s: float | None = None  # sustained training FLOP/s of one process, for --dry-run's time

    def __post_init__(self):
        if not self.grid and not self.variants:
            raise ValueError("grid must name at least one axis (dotted key -> list of values), or variants one row")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise ValueError(f"variants.{name} must be a list of key=value overrides, got {overrides!r}")
        # A command-line override grid.arch.T=[1,2] arrives nested ({"arch": {"T": ...}}): back to dotted keys.
        self.grid = _flatten(self.grid)
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid axis {key!r} must be a non-empty list of values, got {values!r}")
            if key in ("run.seed", "run.output_dir", "run.resume", "training.total_steps"):
                raise ValueError(f"grid axis {key!r} is set by the study itself (seeds, output_dir, budget)")
        for key, source in self.follow.items():
            if source not in self.grid:
                raise ValueError(f"follow.{key}: {source!r} is not a grid axis ({', '.join(self.grid)})")
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        if self.test_time_factor < 1:
            raise ValueError(f"test_time_factor must be >= 1, got {self.test_time_factor}")


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class PointArch:
    """What the counts need from a point's resolved config (the recipe fills it from the pure or hybrid config)."""

    family: str  # trm, hrm or trm_singlez
    H_cycles: int
    L_cycles: int
    L_layers: int
    H_layers: int
    hidden_size: int
    expansion: float
    mlp_t: bool
    seq_len: int | None  # tokens the core sees per example (prefix included); None: FLOPs unknown
    halt_max_steps: int
    global_batch_size: int
    target_q_step: bool  # HRM's extra no-grad step for the Q-continue target
    separate_networks: bool = False  # TRM with f_H and f_L as two networks of L_layers layers each
    one_step_gradient: bool = False  # TRM with HRM's gradient through the last L and H calls only


@dataclass
class Point:
    name: str
    group: str  # the name without the seed: the points that differ only in their seed form one row of the summary
    values: dict  # grid key -> value, plus "run.seed"
    overrides: list[str]  # the study's and the point's overrides, without steps and folders
    arch: PointArch | None = None
    base_steps: int | None = None  # the point's training.total_steps before the budget
    warmup: int = 0  # the point's training.lr_warmup_steps
    steps: int | None = None

    @property
    def seed(self) -> int:
        return self.values["run.seed"]


# ---- grid ------------------------------------------------------------------------------------------------------------


def _short_names(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two axes share a last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _format(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _folder_name(values: dict) -> str:
    name = "_".join(f"{key}-{_format(v)}" for key, v in values.items())
    return "".join(c if c.isalnum() or c in "-_.=" else "" for c in name.replace("run.seed", "seed"))


def expand_grid(cfg: StudyConfig) -> list[Point]:
    """Every point of the grid (the product of the variants, the axes and the seeds, seeds innermost), named by its
    values."""
    keys = list(cfg.grid)
    rows = ["variant"] if cfg.variants else []
    short = _short_names(rows + keys + ["run.seed"])
    points = []
    axes = ([list(cfg.variants)] if cfg.variants else []) + [cfg.grid[k] for k in keys]
    for combo in itertools.product(*axes, cfg.seeds):
        values = dict(zip(rows + keys + ["run.seed"], combo))
        overrides = list(cfg.overrides) + list(cfg.variants.get(values.get("variant"), []))
        overrides += [f"{k}={_format(values[k])}" for k in keys]
        overrides += [f"{key}={_format(values[source])}" for key, source in cfg.follow.items()]
        overrides.append(f"run.seed={values['run.seed']}")
        group = _folder_name({short[k]: v for k, v in values.items() if k != "run.seed"})
        name = _folder_name({short[k]: v for k, v in values.items()})
        points.append(Point(name=name, group=group, values=values, overrides=overrides))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points get the same folder name: grid values must differ after dropping "
                          f"characters other than letters, digits and -_.= ({names})")
    return points


# ---- counts ----------------------------------------------------------------------------------------------------------


def swiglu_width(width: int, expansion: float) -> int:
    """The official SwiGLU intermediate size (hybrid.core.layers.swiglu_intermediate_size, restated here so this
    module stays below the model code)."""
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


def block_flops_per_example(a: PointArch) -> int:
    """Forward matmul FLOPs of one block over one example's a.seq_len tokens."""
    D, S = a.hidden_size, a.seq_len
    mlp = 2 * 3 * D * swiglu_width(D, a.expansion) * S
    if a.mlp_t:
        mix = 2 * 3 * S * swiglu_width(S, a.expansion) * D
    else:
        mix = 2 * 4 * D * D * S + 2 * 2 * S * S * D  # q, k, v, o projections; scores and weighted sum
    return mix + mlp


def block_params(a: PointArch) -> int:
    mlp = 3 * a.hidden_size * swiglu_width(a.hidden_size, a.expansion)
    mix = 3 * a.seq_len * swiglu_width(a.seq_len, a.expansion) if a.mlp_t else 4 * a.hidden_size**2
    return mix + mlp


def _calls(a: PointArch) -> tuple[dict[str, int], dict[str, int]]:
    """Network calls of one supervision step, and those of them with gradient, by network (L or H)."""
    T, n = a.H_cycles, a.L_cycles
    hrm = a.family == "hrm"
    grad_L = 1 if hrm or a.one_step_gradient else n  # z_L updates of the last cycle with gradient
    if hrm or a.separate_networks:
        return {"L": T * n, "H": T}, {"L": grad_L, "H": 1}
    return {"L": T * (n + 1)}, {"L": grad_L + 1}


def _layers(a: PointArch) -> dict[str, int]:
    return {"L": a.L_layers, "H": a.H_layers if a.family == "hrm" else a.L_layers}


def _total_layers(a: PointArch) -> int:
    """Layers of all the networks together."""
    return sum(_layers(a)[net] for net in _calls(a)[0])


def core_params(a: PointArch) -> int:
    """Parameters of the recursive network(s), without embeddings and output heads (the scaling-law convention)."""
    if a.seq_len is None and a.mlp_t:
        raise ValueError("mlp_t parameters depend on the sequence length; set seq_len in the study config")
    nets = _calls(a)[0]
    return sum(_layers(a)[net] * block_params(a) for net in nets)


def effective_depth(a: PointArch) -> int:
    """Blocks applied per example from input to answer: T(n+1) network calls x layers x supervision steps."""
    calls = _calls(a)[0]
    return sum(calls[net] * _layers(a)[net] for net in calls) * a.halt_max_steps


def train_flops_per_step(a: PointArch) -> float | None:
    """Training FLOPs of one optimiser step (the whole global batch); None when the sequence length is unknown."""
    if a.seq_len is None:
        return None
    calls, grad = _calls(a)
    per_call = {net: _layers(a)[net] * block_flops_per_example(a) for net in calls}
    forward = sum(calls[net] * per_call[net] for net in calls)
    backward = sum(2 * grad[net] * per_call[net] for net in grad)
    extra = forward if a.target_q_step else 0
    return float(a.global_batch_size * (forward + backward + extra))


def assign_steps(points: list[Point], budget: BudgetConfig) -> None:
    """Set every point's training steps: equal steps, or equal training FLOPs (steps = budget / FLOPs per step);
    a point left fewer steps than its warm-up (or budget.min_steps) is an error before anything runs."""
    for p in points:
        if budget.kind == "steps":
            p.steps = budget.steps or p.base_steps
            if p.steps is None:
                raise ConfigError("budget.kind=steps needs budget.steps or training.total_steps in the base config")
            why = f"budget.steps={p.steps}"
        else:
            per_step = train_flops_per_step(p.arch)
            if per_step is None:
                raise ConfigError("budget.kind=flops needs the sequence length: build the data first or set seq_len")
            p.steps = round(budget.flops / per_step)
            why = f"budget.flops={budget.flops:.3g} ({per_step:.3g} FLOPs per step)"
        if p.steps < max(budget.min_steps, p.warmup, 1):
            raise ConfigError(f"{why} gives point {p.name} only {p.steps} steps, below budget.min_steps="
                              f"{budget.min_steps} or its training.lr_warmup_steps={p.warmup}")


def balanced_order(items: list, costs: list[float], processes: int) -> list:
    """Reorder `items` so that contiguous equal-count chunks (Accelerate's split_between_processes) carry similar
    cost: deal them round-robin in order of decreasing cost, then lay each process's share out in turn."""
    ranked = sorted(range(len(items)), key=lambda i: -costs[i])
    shares = [ranked[k::processes] for k in range(processes)]
    return [items[i] for share in shares for i in share]


# ---- bookkeeping -----------------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_point_result(folder: Path) -> dict | None:
    path = folder / POINT_RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def check_same_point(folder: Path, recorded: dict, overrides: list[str], steps: int) -> None:
    """A point recorded (finished or started) with other overrides or steps than the config's belongs to another
    study: resuming it would mix two configurations in one run folder."""
    if recorded["overrides"] != overrides or recorded["steps"] != steps:
        raise ConfigError(
            f"{folder} was run with overrides {recorded['overrides']} and {recorded['steps']} steps, but this config "
            f"asks for {overrides} and {steps} steps: use a new output_dir (finished points are never overwritten)"
        )


def record_attempt(folder: Path, seconds: float) -> None:
    """Append one training attempt's wall time (a resumed point has several)."""
    with open(folder / ATTEMPTS, "a") as f:
        f.write(json.dumps({"wall_s": seconds}) + "\n")


def training_wall(folder: Path) -> float:
    """Wall seconds of all training attempts of a point (NaN if none was recorded)."""
    path = folder / ATTEMPTS
    if not path.is_file():
        return float("nan")
    return sum(json.loads(line)["wall_s"] for line in path.read_text().splitlines() if line.strip())


def point_row(p: Point, accuracy: dict, tt_accuracy: dict, tt_steps: int, wall_s: float) -> dict:
    a = p.arch
    per_step = train_flops_per_step(a)
    return {
        "point": p.name, "seed": p.seed, "params": core_params(a), "hidden_size": a.hidden_size,
        "layers": _total_layers(a), "H_cycles": a.H_cycles,
        "L_cycles": a.L_cycles, "halt_max_steps": a.halt_max_steps, "effective_depth": effective_depth(a),
        "steps": p.steps, "global_batch_size": a.global_batch_size,
        "train_flops": None if per_step is None else per_step * p.steps, "wall_s": round(wall_s, 2),
        "exact_accuracy": accuracy["exact_accuracy"], "token_accuracy": accuracy["accuracy"],
        "test_time_steps": tt_steps, "exact_accuracy_tt": tt_accuracy["exact_accuracy"],
        "token_accuracy_tt": tt_accuracy["accuracy"],
    }


def write_csv(rows: list[dict], path: Path, columns: list[str] = CSV_COLUMNS) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in columns})
    os.replace(tmp, path)


def seed_summary(points: list[Point], rows: list[dict]) -> list[dict]:
    """One row per group of points that differ only in their seed (a row of an ablation table): the mean, sample
    standard deviation (None for one seed), minimum and maximum over the seeds of each accuracy."""
    groups: dict[str, list[dict]] = {}
    for p, row in zip(points, rows, strict=True):
        groups.setdefault(p.group, []).append(row)
    summary = []
    for group, members in groups.items():
        first = members[0]
        out = {"group": group, "seeds": len(members), "params": first["params"], "steps": first["steps"],
               "train_flops": first["train_flops"],
               "wall_s_mean": round(statistics.fmean(r["wall_s"] for r in members), 2)}
        for metric in SUMMARY_METRICS:
            values = [r[metric] for r in members]
            out |= {f"{metric}_mean": statistics.fmean(values),
                    f"{metric}_std": statistics.stdev(values) if len(values) > 1 else None,
                    f"{metric}_min": min(values), f"{metric}_max": max(values)}
        summary.append(out)
    return summary


def summary_markdown(summary: list[dict], test_time_factor: int) -> str:
    """The summary as a Markdown table, accuracies in percent: mean ± standard deviation [min, max] over seeds."""

    def cell(row: dict, metric: str) -> str:
        mean, std = 100 * row[f"{metric}_mean"], row[f"{metric}_std"]
        if std is None:
            return f"{mean:.1f}"
        return f"{mean:.1f} ± {100 * std:.1f} [{100 * row[f'{metric}_min']:.1f}, {100 * row[f'{metric}_max']:.1f}]"

    lines = [f"| row | seeds | params | steps | exact % | exact % at {test_time_factor}x the supervision steps | cell % "
             "| wall s |", "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(f"| {row['group']} | {row['seeds']} | {row['params']:,} | {row['steps']} | "
                     f"{cell(row, 'exact_accuracy')} | {cell(row, 'exact_accuracy_tt')} | "
                     f"{cell(row, 'token_accuracy')} | {row['wall_s_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: list[dict], test_time_factor: int, csv_path: Path, markdown_path: Path) -> str:
    """Write the summary as CSV and Markdown; return the Markdown."""
    write_csv(summary, csv_path, SUMMARY_COLUMNS)
    markdown = summary_markdown(summary, test_time_factor)
    atomic_write_text(markdown_path, markdown)
    return markdown


# Launchers' variables: a point's child is a single-process run and must not join the study's process group.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
_LAUNCH_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "TORCH_NCCL_", "FSDP_")


def child_env(environ: dict, gpu: int | None) -> dict:
    """The environment of a point's subprocess: launcher variables removed; on GPUs, only this process's device."""
    env = {k: v for k, v in environ.items() if k not in _LAUNCH_VARS and not k.startswith(_LAUNCH_PREFIXES)}
    if gpu is not None:
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(gpu + 1)]
        env["CUDA_VISIBLE_DEVICES"] = devices[gpu % len(devices)]
    return env
