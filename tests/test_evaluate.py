"""recipes/evaluate.py reproduces the training loop's final evaluation from a checkpoint, and runs other depths."""

import importlib.util
import json
from pathlib import Path

import pytest

from hybrid.utils import UserError
from test_train_pure import config, sudoku4, train_pure  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("evaluate_recipe", REPO / "recipes" / "evaluate.py")
evaluate_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_recipe)


def test_evaluate_matches_the_runs_final_eval(tmp_path, sudoku4):
    path, out = config(tmp_path, sudoku4, steps=6)
    train_pure.main(["--config", str(path), "eval.max_examples=null"])
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["split"] == "eval"

    report = tmp_path / "eval.json"
    evaluate_recipe.main(["--checkpoint", str(out), "--out", str(report)])
    again = json.loads(report.read_text())
    for key in ("count", "accuracy", "exact_accuracy", "lm_loss", "q_halt_accuracy", "steps"):
        assert again[key] == pytest.approx(final[key], rel=1e-9), key

    evaluate_recipe.main(["--checkpoint", str(out), "--halt-max-steps", "7", "--out", str(report)])
    assert json.loads(report.read_text())["steps"] == 7.0


def test_evaluate_rejects_a_dataset_of_another_shape(tmp_path, sudoku4, data_dir):
    path, out = config(tmp_path, sudoku4, steps=2)
    train_pure.main(["--config", str(path), "training.lr_warmup_steps=1"])
    maze = data_dir / "maze-30x30-hard-1k"
    with pytest.raises(UserError, match="seq_len=900.*trained with seq_len=16"):
        evaluate_recipe.main(["--checkpoint", str(out), "--data", str(maze)])
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        evaluate_recipe.main(["--checkpoint", str(tmp_path)])
