"""The recursion scaling study: a grid of ordinary runs over width, layers, T, n and supervision steps, then the CSV,
the fitted law and the plots.

    python recipes/scaling_study.py --config configs/study/sudoku6_quick.yaml [key=value ...] [--dry-run]
    accelerate launch --num_processes 4 recipes/scaling_study.py --config configs/study/sudoku_gpu.yaml   # 4 GPUs
    python -m torch.distributed.run --standalone --nproc_per_node 2 recipes/scaling_study.py --config ...   # 2 CPUs

Every point is a run of `recipes/train_pure.py` or `recipes/train_hybrid.py` (a subprocess, one process each) in
`<output_dir>/points/<name>/`, then a test-time-depth evaluation (`recipes/evaluate.py` or `recipes/depth_sweep.py`).
Several processes split the unfinished points between them (Accelerate's split_between_processes) and the main
process gathers the results. Run the same command again after a stop: finished points are skipped, an interrupted
one resumes from its latest checkpoint (run.resume=auto). --dry-run prints the points, their steps and FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from hybrid.config import ConfigError, from_dict, load_config, split_cli
from hybrid.scaling.fit import fit_law, frontier, plot_compute, plot_depth
from hybrid.scaling.grid import (
    POINT_RESULT, PointArch, StudyConfig, assign_steps, atomic_write_json, balanced_order, check_same_point,
    child_env, core_params, effective_depth, expand_grid, point_row, read_point_result, record_attempt,
    seed_summary, train_flops_per_step, training_wall, write_csv, write_summary,
)
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.scaling_study")
RECIPES = Path(__file__).resolve().parent


def recipe_config_class(recipe: str):
    from hybrid.train.config import PureTrainConfig
    from hybrid.train.config import HybridTrainConfig

    return {"train_pure": PureTrainConfig, "train_hybrid": HybridTrainConfig}[recipe]


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the points, steps and FLOPs; train nothing")
    parser.add_argument("--max-points", type=int, help="train at most this many points in this process, then stop")
    args, rest = parser.parse_known_args(argv)
    path, overrides = split_cli(rest)
    if path is None:
        raise UserError("scaling_study.py needs --config FILE (see configs/study/)")
    return args, Path(path), overrides


def point_configs(cfg: StudyConfig, base: Path, points, out: Path) -> list:
    """Every point's recipe config, loaded before anything runs, so a bad axis key or value fails first."""
    cls = recipe_config_class(cfg.recipe)
    configs = []
    for p in points:
        try:
            configs.append(load_config(cls, base, [*p.overrides, f"run.output_dir={out / 'points' / p.name}"]))
        except ConfigError as err:
            raise ConfigError(f"grid point {p.name}: {err}") from None
    if cfg.recipe == "train_hybrid" and any(c.model.get("head", "recursive") != "recursive" for c in configs):
        raise ConfigError("the study varies recursion: every point needs model.head=recursive")
    return configs


def read_dataset_sizes(data_path: Path) -> dict | None:
    meta = data_path / "train" / "dataset.json"
    if not meta.is_file():
        return None
    raw = json.loads(meta.read_text())
    return {k: raw[k] for k in ("seq_len", "vocab_size", "num_puzzle_identifiers")}


def point_arch(cfg: StudyConfig, run_cfg) -> PointArch:
    """The counts' view of a point's resolved config."""
    batch = run_cfg.training.global_batch_size
    if cfg.recipe == "train_hybrid":
        m = run_cfg.model_config(task="sequence", num_labels=2)  # the model section with the model's own defaults
        return PointArch(family=m.core, H_cycles=m.H_cycles, L_cycles=m.L_cycles, L_layers=m.L_layers,
                         H_layers=m.H_layers, hidden_size=m.hidden_size, expansion=m.expansion, mlp_t=False,
                         seq_len=cfg.seq_len, halt_max_steps=m.halt_max_steps, global_batch_size=batch,
                         target_q_step=m.core == "hrm")
    from hybrid.models.pure import PureConfig

    sizes = read_dataset_sizes(Path(run_cfg.data.path))
    if sizes is None:
        if cfg.seq_len is None:
            raise ConfigError(f"data.path={run_cfg.data.path} is missing: build it, or set seq_len (grid tokens) to "
                              "count FLOPs without it")
        sizes = {"seq_len": cfg.seq_len, "vocab_size": 2, "num_puzzle_identifiers": 1}
    elif cfg.seq_len is not None and cfg.seq_len != sizes["seq_len"]:
        raise ConfigError(f"seq_len={cfg.seq_len} contradicts data.path={run_cfg.data.path} "
                          f"(seq_len {sizes['seq_len']})")
    a = from_dict(PureConfig, {**sizes, **run_cfg.arch}, origin="section 'arch'")
    return PointArch(family=a.family, H_cycles=a.H_cycles, L_cycles=a.L_cycles, L_layers=a.L_layers,
                     H_layers=a.H_layers, hidden_size=a.hidden_size, expansion=a.expansion, mlp_t=a.mlp_t,
                     seq_len=a.total_len, halt_max_steps=a.halt_max_steps, global_batch_size=batch,
                     target_q_step=not a.no_ACT_continue, separate_networks=a.separate_networks,
                     one_step_gradient=a.one_step_gradient)


def build_data(cfg: StudyConfig, run_cfgs) -> None:
    """Build the pure-mode data folder with recipes/build_data.py when it is missing and the config says how."""
    if cfg.recipe != "train_pure":
        return
    missing = sorted({c.data.path for c in run_cfgs if not Path(c.data.path).is_dir()})
    if not missing:
        return
    if cfg.build_data is None:
        raise UserError(f"data folder {missing[0]} is missing and the study config has no build_data")
    log.info(f"building {missing[0]}: recipes/build_data.py {' '.join(cfg.build_data)}")
    subprocess.run([sys.executable, str(RECIPES / "build_data.py"), *cfg.build_data], check=True)
    still = [p for p in missing if not Path(p).is_dir()]
    if still:
        raise UserError(f"build_data ran but {still[0]} is still missing: its --output-dir must be the data.path")


def dry_run(cfg: StudyConfig, points, processes: int) -> None:
    total_flops, total_s = 0.0, 0.0
    print(f"{len(points)} points ({cfg.budget.kind} budget), {processes} process(es)")
    print(f"{'point':<60} {'params':>9} {'depth':>6} {'steps':>6} {'FLOPs/step':>10} {'FLOPs':>10} {'time':>8}")
    for p in points:
        per_step = train_flops_per_step(p.arch)
        flops = None if per_step is None else per_step * p.steps
        secs = None if flops is None or not cfg.device_flops_per_s else flops / cfg.device_flops_per_s
        total_flops += flops or 0.0
        total_s += secs or 0.0
        fmt = lambda v, spec: "?" if v is None else format(v, spec)  # noqa: E731
        print(f"{p.name:<60} {core_params(p.arch):>9,} {effective_depth(p.arch):>6} {p.steps:>6} "
              f"{fmt(per_step, '10.3g')} {fmt(flops, '10.3g')} {fmt(secs, '8.0f')}")
    line = f"total training FLOPs {total_flops:.3g}"
    if cfg.device_flops_per_s:
        line += (f"; at {cfg.device_flops_per_s:.3g} FLOP/s per process: {total_s / 3600:.2f} h of one process, "
                 f"{total_s / 3600 / processes:.2f} h wall on {processes} process(es) (training only)")
    print(line)


def last_eval(folder: Path, steps: int) -> dict | None:
    """The pure run's final evaluation record, when the run finished (curves.png is written after its last save)."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file() or not (folder / "curves.png").is_file():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    final = [r for r in records if r.get("split") == "eval" and r.get("step") == steps]
    return final[-1] if final else None


def hybrid_results(cfg: StudyConfig, folder: Path) -> tuple[str, dict] | None:
    """The reported held-out set of a finished hybrid run (eval_set, else its first) and its results."""
    results = folder / "results.json"
    if not results.is_file():
        return None
    sets = json.loads(results.read_text())["results"]
    name = cfg.eval_set or next(iter(sets))
    if name not in sets:
        raise UserError(f"eval_set={name} is not a held-out set of {folder} ({', '.join(sets)})")
    return name, sets[name]


def trained_accuracy(cfg: StudyConfig, folder: Path, steps: int) -> dict | None:
    if cfg.recipe == "train_pure":
        return last_eval(folder, steps)
    found = hybrid_results(cfg, folder)
    return None if found is None else found[1]


def run_logged(cmd: list[str], log_path: Path, env: dict) -> int:
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def accuracy_at_depth(cfg: StudyConfig, run_cfg, folder: Path, steps: int, log_path: Path, env: dict) -> dict | None:
    """Held-out accuracy with test_time_factor x the trained supervision steps."""
    limit = ["--max-examples", str(run_cfg.eval.max_examples)] if run_cfg.eval.max_examples else []
    if cfg.recipe == "train_pure":
        out = folder / "study_eval_tt.json"
        cmd = [sys.executable, str(RECIPES / "evaluate.py"), "--checkpoint", str(folder), "--halt-max-steps",
               str(steps), "--out", str(out), *limit]
        return json.loads(out.read_text()) if run_logged(cmd, log_path, env) == 0 else None
    name = hybrid_results(cfg, folder)[0]
    out = folder / "study_depth_tt"
    cmd = [sys.executable, str(RECIPES / "depth_sweep.py"), "--checkpoint", str(folder / "model"), "--data",
           str(folder / "data" / name), "--steps", str(steps), "--out", str(out), *limit]
    if run_logged(cmd, log_path, env) != 0:
        return None
    return next(r for r in json.loads((out / "sweep.json").read_text())["rows"] if r["steps"] == steps)


def run_point(cfg: StudyConfig, base: Path, p, run_cfg, out: Path, env: dict, process: int) -> str | None:
    """Train (or resume) one point, evaluate it at test-time depth, write its result file; the error, if any."""
    folder, log_path = out / "points" / p.name, out / "logs" / f"{p.name}.log"
    accuracy = trained_accuracy(cfg, folder, p.steps)
    if accuracy is None:
        atomic_write_json(out / "logs" / f"{p.name}.launch.json", {"overrides": p.overrides, "steps": p.steps})
        launch = [f"training.total_steps={p.steps}", f"run.output_dir={folder}", "run.resume=auto",
                  "run.progress_bar=false"]
        if cfg.recipe == "train_hybrid" and run_cfg.feature_cache != "none":
            # Frozen backbone: features computed once per process and shared by its points (a folder per process,
            # so no two processes write one cache).
            launch += ["feature_cache=disk", f"cache_dir={out / 'feature_cache' / f'process{process}'}"]
        recipe = RECIPES / f"{cfg.recipe}.py"
        started = time.perf_counter()
        code = run_logged([sys.executable, str(recipe), "--config", str(base), *p.overrides, *launch], log_path, env)
        if folder.is_dir():
            record_attempt(folder, time.perf_counter() - started)
        accuracy = trained_accuracy(cfg, folder, p.steps)
        if code != 0 or accuracy is None:
            return f"training exited with status {code}; see {log_path}"
    tt_steps = cfg.test_time_factor * p.arch.halt_max_steps
    tt = accuracy_at_depth(cfg, run_cfg, folder, tt_steps, log_path, env)
    if tt is None:
        return f"test-time evaluation failed; see {log_path}"
    row = point_row(p, accuracy, tt, tt_steps, training_wall(folder))
    atomic_write_json(folder / POINT_RESULT, {"overrides": p.overrides, "steps": p.steps, "row": row})
    return None


def gather(cfg: StudyConfig, points, out: Path) -> None:
    rows = [read_point_result(out / "points" / p.name)["row"] for p in points]
    optimal = frontier(rows) if all(r["train_flops"] is not None for r in rows) else []
    for row in rows:
        row["compute_optimal"] = row["point"] in optimal
    write_csv(rows, out / "study.csv")
    markdown = write_summary(seed_summary(points, rows), cfg.test_time_factor, out / "study_summary.csv",
                             out / "study_summary.md")
    law = fit_law([r["params"] for r in rows], [r["effective_depth"] for r in rows],
                  [1 - r["exact_accuracy"] for r in rows])
    law_tt = fit_law([r["params"] for r in rows], [r["effective_depth"] * cfg.test_time_factor for r in rows],
                     [1 - r["exact_accuracy_tt"] for r in rows])
    summary = {"points": len(rows), "budget": cfg.budget.kind, "fit": law, "fit_test_time_steps": law_tt,
               "compute_optimal": optimal, "best": max(rows, key=lambda r: r["exact_accuracy"])["point"]}
    atomic_write_json(out / "study.json", summary)
    plot_depth(rows, law, out / "accuracy_vs_depth.png")
    if optimal:
        plot_compute(rows, law, optimal, out / "accuracy_vs_flops.png")
    if law.get("fitted"):
        log.info(f"fit: a={law['a']:.3f} (params), b={law['b']:.3f} (depth), c={law['c']:.4f}; weak: {law['weak']}")
    log.info("mean over seeds (study_summary.md):\n" + markdown)
    log.info(f"wrote {out / 'study.csv'}, {out / 'study_summary.csv'}, {out / 'study.json'} and the plots")


def main(argv: list[str]) -> None:
    args, path, overrides = parse(argv)
    cfg = load_config(StudyConfig, path, overrides)
    base = (path.resolve().parent / cfg.base_config).resolve()
    if not base.is_file():
        raise UserError(f"{path}: base_config {cfg.base_config} not found (looked for {base})")
    out = Path(cfg.output_dir)
    points = expand_grid(cfg)
    run_cfgs = point_configs(cfg, base, points, out)

    from accelerate import PartialState

    # cpu=True without CUDA: otherwise every rank of a CPU launch would run the whole grid alone. The long timeout
    # lets the final barrier wait for the slowest process's points.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(days=7))
    if not args.dry_run:
        if state.is_main_process:
            build_data(cfg, run_cfgs)
        state.wait_for_everyone()
    for p, run_cfg in zip(points, run_cfgs):
        p.arch = point_arch(cfg, run_cfg)
        p.base_steps, p.warmup = run_cfg.training.total_steps, run_cfg.training.lr_warmup_steps
    assign_steps(points, cfg.budget)
    if args.dry_run:
        if state.is_main_process:
            dry_run(cfg, points, state.num_processes)
        return

    pending = []
    for p, run_cfg in zip(points, run_cfgs):
        # A finished point, or one started earlier (its launch record), must have been run with this config.
        done = read_point_result(out / "points" / p.name)
        started = out / "logs" / f"{p.name}.launch.json"
        recorded = done or (json.loads(started.read_text()) if started.is_file() else None)
        if recorded is not None:
            check_same_point(out / "points" / p.name, recorded, p.overrides, p.steps)
        if done is None:
            pending.append((p, run_cfg))
    # Similar work per process: the costliest points dealt out first (FLOPs per point; steps where unknown).
    costs = [(train_flops_per_step(p.arch) or 1.0) * p.steps for p, _ in pending]
    pending = balanced_order(pending, costs, state.num_processes)
    state.wait_for_everyone()  # every process has listed the pending points before any point can finish
    if state.is_main_process:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        log.info(f"{len(points) - len(pending)} of {len(points)} points done; {len(pending)} to run on "
                 f"{state.num_processes} process(es)")
    state.wait_for_everyone()

    from tqdm.auto import tqdm

    env = child_env(dict(os.environ), state.local_process_index if torch.cuda.is_available() else None)
    failures = []
    with state.split_between_processes(pending) as mine:
        mine = mine[: args.max_points] if args.max_points is not None else mine
        bar = tqdm(mine, desc=f"process {state.process_index}: points", position=state.process_index)
        for p, run_cfg in bar:
            bar.set_postfix_str(p.name)
            log.info(f"process {state.process_index}: point {p.name} ({p.steps} steps)", extra={"all_ranks": True})
            error = run_point(cfg, base, p, run_cfg, out, env, state.process_index)
            if error:
                failures.append(f"{p.name}: {error}")
                log.info(f"point {p.name} failed: {error}", extra={"all_ranks": True})
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [p.name for p in points if read_point_result(out / "points" / p.name) is None]
        if missing:
            log.info(f"{len(points) - len(missing)} of {len(points)} points done; run the same command again to "
                     f"finish the other {len(missing)}")
        else:
            gather(cfg, points, out)
    if failures:
        raise UserError(f"{len(failures)} point(s) failed on process {state.process_index}: " + "; ".join(failures))


if __name__ == "__main__":
    run_main(main)
