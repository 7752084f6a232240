"""bench/hybrid_heads.py's results table: step budgets, token columns only where they add a number, mean +- std over seeds,
the mean over k=4..10, FLOPs, the accuracy-vs-k plot; the table rebuilt from finished runs (no training)."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("hybrid_heads", Path(__file__).resolve().parents[1] / "bench" / "hybrid_heads.py")
hybrid_heads = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hybrid_heads)


def _row(head, steps, results):
    return {"head": head, "trainable_parameters": 1234, "steps": steps, "wall_seconds": 9.6, "results": results}


def test_table_shows_steps_and_drops_token_columns_that_repeat_exact():
    sequence = {"hops1": {"exact_accuracy": 0.9, "accuracy": 0.9}, "hops3": {"exact_accuracy": 0.5, "accuracy": 0.5}}
    lines = hybrid_heads.table([_row("recursive", 4000, sequence), _row("lora+linear", 2000, sequence)]).splitlines()
    assert lines[0] == "| head | trainable params | steps | hops1 exact | hops3 exact | wall s |"
    assert lines[3] == "| lora+linear | 1,234 | 2000 | 90.0 | 50.0 | 10 |"
    token = {"test": {"exact_accuracy": 0.25, "accuracy": 0.75}}
    assert hybrid_heads.table([_row("mlp", 10, token)]).splitlines()[2] == "| mlp | 1,234 | 10 | 25.0 | 75.0 | 10 |"


def _seeded(head, seed, accuracies):
    results = {name: {"exact_accuracy": a, "accuracy": a} for name, a in accuracies.items()}
    return {"head": head, "seed": seed, "trainable_parameters": 1000, "steps": 300, "wall_seconds": 10.0 + seed,
            "results": results, "flops": {"head": 2e9, "backbone": 0.0 if head == "recursive" else 5e9}}


def _clutrr_rows():
    rows = []
    for seed, a in enumerate([0.5, 0.6, 0.7]):
        rows.append(_seeded("recursive", seed, {"k=2": 0.9, "k=4": a, "k=10": a - 0.2, "noise_none": 0.8}))
        rows.append(_seeded("full-ft+linear", seed, {"k=2": 1.0, "k=4": 0.3, "k=10": 0.1, "noise_none": 0.5}))
    return rows


def test_table_with_seeds_shows_mean_and_std_and_the_extrapolation_mean():
    lines = hybrid_heads.table(_clutrr_rows()).splitlines()
    assert lines[0] == ("| head | trainable params | steps | seeds | k=2 exact | k=4 exact | k=10 exact | noise_none exact "
                        "| mean k=4..10 | wall s | head GFLOPs/ex | backbone GFLOPs/ex |")
    # k=4: 50, 60, 70 -> 60 +- 10 (sample std); mean over k=4..10 per seed: 40, 50, 60 (k=2 and noise left out).
    assert lines[2] == "| recursive | 1,000 | 300 | 3 | 90.0 ± 0.0 | 60.0 ± 10.0 | 40.0 ± 10.0 | 80.0 ± 0.0 | 50.0 ± 10.0 | 11 | 2.000 | - |"
    assert lines[3].endswith("| 20.0 ± 0.0 | 11 | 2.000 | 5.000 |")


def test_k_curves_and_plot(tmp_path):
    curves = hybrid_heads.k_curves(_clutrr_rows())
    assert curves["recursive"] == {2: [0.9, 0.9, 0.9], 4: [0.5, 0.6, 0.7], 10: [0.5 - 0.2, 0.6 - 0.2, 0.7 - 0.2]}
    assert set(curves) == {"recursive", "full-ft+linear"}
    from hybrid.eval.plots import plot_accuracy_vs_k

    path = plot_accuracy_vs_k(curves, tmp_path / "k.png", trained_k=[2, 3])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.png"):
        plot_accuracy_vs_k(curves, tmp_path / "k.pdf")


def test_main_builds_table_and_plot_from_finished_runs_without_training(tmp_path):
    import json

    for row in _clutrr_rows():
        run_dir = tmp_path / row["head"].replace("+", "_") / f"seed{row['seed']}"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps({k: v for k, v in row.items() if k not in ("flops", "seed")}))
    (tmp_path / "flops.json").write_text(json.dumps({"recursive": {"head": 2e9, "backbone": 0.0},
                                                     "full-ft+linear": {"head": 2e9, "backbone": 5e9}}))
    hybrid_heads.main(["--task", "clutrr", "--heads", "recursive", "full-ft+linear", "--seeds", "0", "1", "2",
                       "--reuse", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text().splitlines() == hybrid_heads.table(_clutrr_rows()).splitlines()
    assert (tmp_path / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "results.json").read_text())) == 6


def test_the_person_graph_heads_are_clutrr_heads_from_their_own_config(tmp_path, monkeypatch):
    import json

    launched = []

    def train(argv):  # a stand-in for recipes/train_hybrid.py: records the launch, writes a run's results.json
        launched.append(argv)
        out = Path(next(a for a in argv if a.startswith("run.output_dir=")).split("=", 1)[1])
        out.mkdir(parents=True)
        result = {"exact_accuracy": 0.5, "accuracy": 0.5, "count": 10}
        (out / "results.json").write_text(json.dumps({"trainable_parameters": 1, "steps": 1, "wall_seconds": 1.0,
                                                      "results": {"k=2": result, "k=4": result}}))

    monkeypatch.setattr(hybrid_heads, "load_recipe", lambda: type("Recipe", (), {"main": staticmethod(train)}))
    monkeypatch.setattr(hybrid_heads, "training_flops", lambda run_dir: {"head": 1.0, "backbone": 0.0})
    with pytest.raises(SystemExit):  # argparse's error: Sudoku has no stories for the person graph
        hybrid_heads.main(["--task", "sudoku", "--heads", "people-chain", "--out", str(tmp_path / "sudoku")])
    assert not launched
    hybrid_heads.main(["--task", "clutrr", "--out", str(tmp_path / "clutrr")])
    configs = {argv[1] for argv in launched[: len(hybrid_heads.HEADS)]}
    assert configs == {str(hybrid_heads.TASKS["clutrr"])}
    assert {argv[1] for argv in launched[len(hybrid_heads.HEADS):]} == {str(hybrid_heads.PERSON_CONFIG)}
    assert len(launched) == len(hybrid_heads.HEADS) + 2
    assert "model.core=chain" in launched[-2] and "model.L_layers=4" in launched[-1]
    assert "eval.halt_max_steps=1" in launched[-1] and "feature_cache=disk" in launched[-1]
    assert "| people-chain |" in (tmp_path / "clutrr" / "table.md").read_text()
