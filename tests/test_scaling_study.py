"""The recursion scaling study: grid, budgets, counts against the real model, the fit, and the recipe end to end
(stop and rerun finishes only the missing points, an interrupted point resumes bit for bit, 2 processes = 1)."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.config import ConfigError, from_dict
from hybrid.scaling.fit import fit_law, frontier, predict_error
from hybrid.scaling.grid import (
    BudgetConfig, PointArch, StudyConfig, assign_steps, balanced_order, child_env, core_params, effective_depth,
    expand_grid, seed_summary, summary_markdown, train_flops_per_step,
)

REPO = Path(__file__).resolve().parents[1]


def study_config(**over) -> StudyConfig:
    raw = {"recipe": "train_pure", "base_config": "base.yaml", "output_dir": "out",
           "grid": {"arch.hidden_size": [32, 64], "arch.H_cycles": [1, 2, 4]}, "seeds": [0, 1],
           "follow": {"arch.puzzle_emb_ndim": "arch.hidden_size"}, "overrides": ["arch.L_cycles=2"]}
    return from_dict(StudyConfig, {**raw, **over})


def arch(**over) -> PointArch:
    a = dict(family="trm", H_cycles=2, L_cycles=2, L_layers=1, H_layers=0, hidden_size=32, expansion=4.0, mlp_t=True,
             seq_len=38, halt_max_steps=4, global_batch_size=64, target_q_step=False)
    return PointArch(**{**a, **over})


def test_grid_expansion_names_and_overrides():
    points = expand_grid(study_config())
    assert len(points) == 2 * 3 * 2
    assert len({p.name for p in points}) == 12
    first, last = points[0], points[-1]
    assert first.name == "hidden_size-32_H_cycles-1_seed-0" and last.name == "hidden_size-64_H_cycles-4_seed-1"
    # study overrides first, then the axes, the followers and the seed
    assert last.overrides == ["arch.L_cycles=2", "arch.hidden_size=64", "arch.H_cycles=4", "arch.puzzle_emb_ndim=64",
                              "run.seed=1"]
    assert [p.seed for p in points[:2]] == [0, 1]


def test_seed_summary_averages_each_row_over_its_seeds_only():
    cfg = study_config(variants={"ref": [], "wide": ["arch.expansion=8"]}, grid={"arch.H_cycles": [1, 2]},
                       seeds=[0, 1, 2], follow={})
    points = expand_grid(cfg)
    rng = np.random.default_rng(0)
    rows = [{"params": 100 + i // 3, "steps": 50, "train_flops": 1e9, "wall_s": 10.0 + i,
             "exact_accuracy": rng.random(), "exact_accuracy_tt": rng.random(), "token_accuracy": rng.random()}
            for i in range(len(points))]
    table = seed_summary(points, rows)
    assert [r["group"] for r in table] == ["variant-ref_H_cycles-1", "variant-ref_H_cycles-2",
                                            "variant-wide_H_cycles-1", "variant-wide_H_cycles-2"]
    for g, row in enumerate(table):
        members = rows[3 * g: 3 * g + 3]  # seeds are the innermost axis
        assert row["seeds"] == 3 and row["params"] == 100 + g and row["wall_s_mean"] == 11.0 + 3 * g
        for metric in ("exact_accuracy", "exact_accuracy_tt", "token_accuracy"):
            values = np.array([m[metric] for m in members])
            assert row[f"{metric}_mean"] == pytest.approx(values.mean())
            assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1))
            assert (row[f"{metric}_min"], row[f"{metric}_max"]) == (values.min(), values.max())
    md = summary_markdown(table, 2).splitlines()
    assert len(md) == 2 + 4 and "at 2x the supervision steps" in md[0]
    mean, std = 100 * table[0]["exact_accuracy_mean"], 100 * table[0]["exact_accuracy_std"]
    assert md[2].startswith(f"| variant-ref_H_cycles-1 | 3 | 100 | 50 | {mean:.1f} ± {std:.1f} [")

    one_seed = expand_grid(study_config(seeds=[4]))
    table = seed_summary(one_seed, rows[: len(one_seed)])
    assert len(table) == len(one_seed) and all(r["seeds"] == 1 and r["exact_accuracy_std"] is None for r in table)
    assert [r["group"] for r in table] == [p.name.removesuffix("_seed-4") for p in one_seed]


def test_grid_from_a_nested_override_is_flattened():
    cfg = study_config(grid={"arch.hidden_size": [32], "arch": {"H_cycles": [1, 2]}})
    assert cfg.grid == {"arch.hidden_size": [32], "arch.H_cycles": [1, 2]}


def test_balanced_order_gives_each_process_similar_work():
    costs = [1, 2, 3, 4, 5, 6, 7]
    order = balanced_order(list(range(7)), costs, 2)
    assert sorted(order) == list(range(7))
    first, second = order[:4], order[4:]  # split_between_processes: the first process takes the extra item
    assert first == [6, 4, 2, 0] and second == [5, 3, 1]
    assert abs(sum(costs[i] for i in first) - sum(costs[i] for i in second)) <= 7


def test_equal_flops_budget_gives_equal_flops_and_equal_steps_gives_equal_steps():
    points = expand_grid(study_config())
    for p in points:
        p.arch = arch(hidden_size=p.values["arch.hidden_size"], H_cycles=p.values["arch.H_cycles"])
        p.warmup = 10
    assign_steps(points, BudgetConfig(kind="steps", steps=123))
    assert {p.steps for p in points} == {123}
    budget = 5e12
    assign_steps(points, BudgetConfig(kind="flops", flops=budget))
    totals = [p.steps * train_flops_per_step(p.arch) for p in points]
    assert all(abs(t / budget - 1) < 0.01 for t in totals)
    # deeper and wider points get fewer steps
    steps = {(p.values["arch.hidden_size"], p.values["arch.H_cycles"]): p.steps for p in points}
    assert steps[(32, 1)] > steps[(32, 4)] > steps[(64, 4)]
    with pytest.raises(ConfigError, match=r"only \d+ steps, below budget.min_steps=100000"):
        assign_steps(points, BudgetConfig(kind="flops", flops=budget, min_steps=100000))
    points[3].warmup = 200  # a warm-up longer than the run fails before anything runs, not in the child
    with pytest.raises(ConfigError, match=f"point {points[3].name} only 123 steps.*lr_warmup_steps=200"):
        assign_steps(points, BudgetConfig(kind="steps", steps=123))
    with pytest.raises(ValueError, match="budget.flops"):
        BudgetConfig(kind="flops")


def test_counts_follow_the_formula():
    a = arch(H_cycles=3, L_cycles=2, L_layers=2)
    assert effective_depth(a) == 3 * 3 * 2 * 4
    hrm = arch(family="hrm", H_cycles=2, L_cycles=3, L_layers=1, H_layers=2, target_q_step=True)
    assert effective_depth(hrm) == (2 * 3 * 1 + 2 * 2) * 4
    # the extra no-grad target step of HRM adds one forward of every call
    assert train_flops_per_step(hrm) > train_flops_per_step(arch(family="hrm", H_cycles=2, L_cycles=3, L_layers=1,
                                                                    H_layers=2))
    assert train_flops_per_step(arch(seq_len=None)) is None


@pytest.mark.parametrize("family,mlp_t,ablation", [
    ("trm", True, {}), ("trm", False, {}), ("hrm", False, {}), ("trm_singlez", True, {}),
    ("trm", True, {"separate_networks": True}), ("trm", True, {"one_step_gradient": True}),
    ("trm", True, {"separate_networks": True, "one_step_gradient": True}),
])
def test_params_and_flops_match_the_model(family, mlp_t, ablation):
    """The analytic counts against the real core: its parameters, and torch's FLOP counter on one training step of
    the core (forward; backward too for mlp_t, whose ops all have counter formulas on CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hybrid.eval.compute import CoreFlops
    from hybrid.models.pure import PureConfig, build_pure_model

    cfg = PureConfig(seq_len=14, vocab_size=6, num_puzzle_identifiers=1, family=family, H_cycles=3, L_cycles=2,
                     L_layers=2, H_layers=2 if family == "hrm" else 0, hidden_size=32, num_heads=2, expansion=2,
                     puzzle_emb_ndim=32, puzzle_emb_len=2, pos_encodings="rope" if family == "hrm" else "none",
                     mlp_t=mlp_t, forward_dtype="float32", halt_max_steps=3, **ablation)
    reasoner, _ = build_pure_model(cfg)
    a = PointArch(family=family, H_cycles=3, L_cycles=2, L_layers=2, H_layers=cfg.H_layers, hidden_size=32,
                  expansion=2.0, mlp_t=mlp_t, seq_len=cfg.total_len, halt_max_steps=3, global_batch_size=4,
                  target_q_step=False, **ablation)
    core = reasoner.core
    nets = [m for name, m in core.named_children() if name in ("net", "L_net", "H_net")]
    assert core_params(a) == sum(p.numel() for net in nets for p in net.parameters())

    batch = 4
    carry = core.empty_carry(batch, cfg.total_len)
    x = torch.randn(batch, cfg.total_len, 32, requires_grad=True)
    with CoreFlops(reasoner) as counted:  # any module holding the core
        out = core(carry, x)
    T, n = 3, 2
    calls = T * (n + 1)  # TRM and HRM alike: T(n+1) network calls per supervision step
    grad_calls = 2 if family == "hrm" or ablation.get("one_step_gradient") else n + 1
    fwd = counted.flops
    assert fwd > 0
    if mlp_t:
        with FlopCounterMode(display=False) as counter:
            out[0].sum().backward()
        backward = counter.get_total_flops()
        assert fwd + backward == pytest.approx(train_flops_per_step(a), rel=1e-9)
    else:
        per_call = fwd / calls
        assert fwd + 2 * grad_calls * per_call == pytest.approx(train_flops_per_step(a), rel=1e-9)


def test_fit_recovers_known_exponents():
    rng = np.random.default_rng(0)
    params = np.repeat([1e4, 3e4, 1e5, 3e5], 5)
    depth = np.tile([4, 8, 16, 32, 64], 4)
    truth = {"A": 30.0, "a": 0.4, "b": 0.6, "c": 0.02}
    error = predict_error(truth, params, depth) * np.exp(rng.normal(0, 0.03, len(params)))
    law = fit_law(params, depth, error, bootstrap=50)
    assert law["fitted"] and law["n_points"] == 20
    assert law["a"] == pytest.approx(0.4, abs=0.08) and law["b"] == pytest.approx(0.6, abs=0.08)
    assert law["c"] == pytest.approx(0.02, abs=0.01)
    for name, true in (("a", 0.4), ("b", 0.6)):  # uncertainties of the right size: the truth within 4 sigma
        assert 0 < law[f"{name}_se"] < 0.05 and abs(law[name] - true) < 4 * law[f"{name}_se"]
        lo, hi = law[f"{name}_ci68"]
        assert lo <= law[name] <= hi and hi - lo < 0.1
    # depth that does not help is fitted as such, not forced positive
    flat = fit_law(params, depth, predict_error({"A": 30.0, "a": 0.4, "b": 0.0, "c": 0.02}, params, depth),
                   bootstrap=0)
    assert abs(flat["b"]) < 0.02
    single = fit_law([1e4] * 6, [4, 8, 16, 32, 64, 128], [0.5, 0.4, 0.3, 0.25, 0.22, 0.2], bootstrap=0)
    assert single["fitted"] and single["a"] == 0.0 and any("one params value" in w for w in single["weak"])
    assert not fit_law([1e4, 2e4], [4, 8], [0.5, 0.4])["fitted"]


def test_frontier_keeps_only_points_no_cheaper_point_beats():
    rows = [{"point": "a", "train_flops": 1, "exact_accuracy": 0.2}, {"point": "b", "train_flops": 2,
            "exact_accuracy": 0.1}, {"point": "c", "train_flops": 3, "exact_accuracy": 0.5},
            {"point": "d", "train_flops": 4, "exact_accuracy": 0.5}]
    assert frontier(rows) == ["a", "c"]


def test_child_env_drops_launcher_variables_and_pins_one_gpu():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "1",
           "ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "r", "PATH": "/bin", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "4,5"}
    child = child_env(env, gpu=1)
    assert child == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "5"}
    assert "CUDA_VISIBLE_DEVICES" not in child_env({"RANK": "0"}, gpu=None)


def test_config_errors():
    with pytest.raises(ValueError, match="grid axis 'arch.H_cycles' must be a non-empty list"):
        study_config(grid={"arch.H_cycles": 2})
    with pytest.raises(ValueError, match="set by the study itself"):
        study_config(grid={"run.seed": [1, 2]})
    with pytest.raises(ValueError, match="follow.arch.puzzle_emb_ndim: 'arch.width' is not a grid axis"):
        study_config(follow={"arch.puzzle_emb_ndim": "arch.width"})


# ---- the recipe end to end -------------------------------------------------------------------------------------------

BASE = """\
# python recipes/train_pure.py --config base.yaml (written by the test)
run: {{output_dir: unused, seed: 0, log_every: 5, trackers: [], progress_bar: false}}
data: {{path: {data}}}
arch: {{family: trm, H_cycles: 1, L_cycles: 1, L_layers: 1, hidden_size: 16, num_heads: 1, expansion: 2,
        puzzle_emb_ndim: 16, puzzle_emb_len: 1, forward_dtype: float32, halt_max_steps: 2, halt_exploration_prob: 0.1}}
training: {{global_batch_size: 16, total_steps: 1000, lr: 3.0e-3, lr_warmup_steps: 2, ema: false,
           puzzle_emb_lr: 1.0e-2}}
eval: {{interval: 0, max_examples: 32}}
checkpoint: {{every: 10, keep_last: 5}}
"""

STUDY = """\
# python recipes/scaling_study.py --config study.yaml (written by the test)
recipe: train_pure
base_config: base.yaml
output_dir: {out}
grid: {{arch.H_cycles: [1, 2]}}
overrides: [arch.L_cycles=1]
budget: {{kind: steps, steps: 20}}
"""


def _run_study(config: Path, out: Path, *extra, launcher=(sys.executable,), expect=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([*launcher, str(REPO / "recipes" / "scaling_study.py"), "--config", str(config),
                           f"output_dir={out}", *extra], env=env, capture_output=True, text=True, timeout=600,
                          cwd=config.parent)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc.stderr


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from hybrid.data.format import atomic_output_dir, write_identifiers
    from hybrid.data.sudoku import generate_puzzles, write_sudoku_split

    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    q, a = generate_puzzles(96, box_rows=2, box_cols=2, givens=6, seed=1)
    with atomic_output_dir(data) as out:
        write_sudoku_split(out, "train", [(x[None], y[None]) for x, y in zip(q[:64], a[:64])], 4)
        write_sudoku_split(out, "test", [(x[None], y[None]) for x, y in zip(q[64:], a[64:])], 4)
        write_identifiers(out, ["<blank>"])
    (root / "base.yaml").write_text(BASE.format(data=data))
    (root / "study.yaml").write_text(STUDY.format(out=root / "one"))
    return root


@pytest.mark.multiprocess
def test_stopped_study_finishes_only_the_missing_points_and_two_processes_equal_one(study):
    config, one = study / "study.yaml", study / "one"
    log = _run_study(config, one, "--max-points", "1")
    assert "1 of 2 points done" in log and not (one / "study.csv").exists()
    finished = [p for p in (one / "points").iterdir() if (p / "study_point.json").is_file()]
    assert [p.name for p in finished] == ["H_cycles-2_seed-0"]  # the costliest point goes first
    first = finished[0]
    before = _snapshot(first)

    log = _run_study(config, one)
    assert "1 of 2 points done; 1 to run" in log
    assert _snapshot(first) == before  # the finished point was not touched
    for name in ("H_cycles-1_seed-0", "H_cycles-2_seed-0"):
        launches = (one / "logs" / f"{name}.log").read_text().count("recipes/train_pure.py")
        assert launches == 1, name
    rows = _csv(one / "study.csv")
    assert [r["point"] for r in rows] == ["H_cycles-1_seed-0", "H_cycles-2_seed-0"]
    assert [int(r["effective_depth"]) for r in rows] == [4, 8] and {r["steps"] for r in rows} == {"20"}
    assert all(0 <= float(r["token_accuracy"]) <= 1 and r["test_time_steps"] == "4" for r in rows)
    summary = json.loads((one / "study.json").read_text())
    assert summary["points"] == 2 and "fit" in summary
    with open(one / "study_summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["group"] for r in table] == ["H_cycles-1", "H_cycles-2"] and {r["seeds"] for r in table} == {"1"}
    assert [r["exact_accuracy_mean"] for r in table] == [r["exact_accuracy"] for r in rows]
    assert "| H_cycles-2 | 1 |" in (one / "study_summary.md").read_text()
    assert (one / "accuracy_vs_depth.png").is_file() and (one / "accuracy_vs_flops.png").is_file()

    # The same output_dir with another budget is refused before anything runs: nothing is overwritten or mixed.
    log = _run_study(config, one, "budget.steps=21", expect=2)
    assert "use a new output_dir" in log and _snapshot(first) == before

    two = study / "two"
    log = _run_study(config, two, launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc_per_node", "2"))
    assert "to run on 2 process(es)" in log
    ran = {}
    for proc, name in re.findall(r"process (\d): point (\S+) \(", log):
        ran.setdefault(name, []).append(int(proc))
    assert sorted(ran) == [r["point"] for r in rows] and all(len(v) == 1 for v in ran.values())
    assert {v[0] for v in ran.values()} == {0, 1}  # both processes worked, on disjoint points
    assert _csv(two / "study.csv") == rows


def test_interrupted_point_resumes_from_its_checkpoint(study):
    """A point stopped mid-training (run.stop_at_step) is resumed, not restarted, and ends bit for bit like a
    point trained in one go (same accuracy as the uninterrupted study's row)."""
    out = study / "resumed"
    folder = out / "points" / "H_cycles-2_seed-0"  # the point the study runs first
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    overrides = ["arch.L_cycles=1", "arch.H_cycles=2", "run.seed=0", "training.total_steps=20",
                 f"run.output_dir={folder}", "run.stop_at_step=10"]
    subprocess.run([sys.executable, str(REPO / "recipes" / "train_pure.py"), "--config", str(study / "base.yaml"),
                    *overrides], env=env, check=True, capture_output=True, cwd=study)
    _run_study(study / "study.yaml", out, "--max-points", "1")
    point_log = (out / "logs" / "H_cycles-2_seed-0.log").read_text()
    assert "resumed from" in point_log and "step_00000010" in point_log
    train_steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()
                   if json.loads(x)["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 20
    resumed = json.loads((folder / "study_point.json").read_text())["row"]
    reference = study / "one" / "points" / "H_cycles-2_seed-0" / "study_point.json"
    if reference.is_file():  # written by the test above when it ran first
        straight = json.loads(reference.read_text())["row"]
        for key in ("exact_accuracy", "token_accuracy", "exact_accuracy_tt", "token_accuracy_tt"):
            assert resumed[key] == straight[key], key


def test_unknown_axis_key_fails_before_anything_runs(study, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling_study", REPO / "recipes" / "scaling_study.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    config = tmp_path / "bad.yaml"
    config.write_text(STUDY.format(out=tmp_path / "bad").replace("base_config: base.yaml",
                                                                  f"base_config: {study / 'base.yaml'}")
                      .replace("arch.H_cycles: [1, 2]", "arch.H_cycles: [1], trainng.lr: [0.1]"))
    with pytest.raises(ConfigError, match=r"grid point H_cycles-1_lr-0.1_seed-0: .*unknown key 'trainng'"):
        recipe.main(["--config", str(config)])
    assert not (tmp_path / "bad").exists()


def test_every_study_config_loads_and_names_its_base_and_launch_command():
    from hybrid.config import load_config

    files = sorted((REPO / "configs" / "study").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        first = path.read_text().splitlines()[0]
        assert "recipes/scaling_study.py" in first and str(path.relative_to(REPO)) in first, path
        cfg = load_config(StudyConfig, path)
        assert (path.parent / cfg.base_config).is_file(), path


def test_hybrid_point_trains_on_a_shared_feature_cache_and_reads_test_time_depth(tmp_path):
    """A hybrid study point: train_hybrid with the per-process disk feature cache, then depth_sweep at 2x steps on
    the saved model/ and data/ folders."""
    from test_backbones import make_tiny_backbone

    backbone = make_tiny_backbone("bert", tmp_path / "bert")
    base = tmp_path / "base.yaml"
    base.write_text(
        "# python recipes/train_hybrid.py --config base.yaml (written by the test)\n"
        f"run: {{output_dir: unused, trackers: [], progress_bar: false, log_every: 4}}\n"
        f"model: {{backbone_name_or_path: {backbone}, hidden_size: 32, num_heads: 2, L_layers: 1, L_cycles: 1}}\n"
        "task: {num_train: 64, num_test: 24}\n"
        "training: {global_batch_size: 16, total_steps: 100, lr_warmup_steps: 2}\n"
        "eval: {interval: 0}\n"
    )
    config = tmp_path / "study.yaml"
    config.write_text("# python recipes/scaling_study.py --config study.yaml (written by the test)\n"
                      "recipe: train_hybrid\nbase_config: base.yaml\noutput_dir: unused\n"
                      "grid: {model.H_cycles: [2]}\noverrides: [model.halt_max_steps=2]\n"
                      "budget: {kind: steps, steps: 8}\nseq_len: 40\n")
    out = tmp_path / "out"
    _run_study(config, out)
    point = out / "points" / "H_cycles-2_seed-0"
    assert any((out / "feature_cache" / "process0").iterdir())
    row = _csv(out / "study.csv")[0]
    assert row["test_time_steps"] == "4" and int(row["effective_depth"]) == 2 * 2 * 1 * 2
    sweep = json.loads((point / "study_depth_tt" / "sweep.json").read_text())
    assert float(row["exact_accuracy_tt"]) == sweep["rows"][0]["exact_accuracy"]
    results = json.loads((point / "results.json").read_text())["results"]
    assert float(row["exact_accuracy"]) == next(iter(results.values()))["exact_accuracy"]
