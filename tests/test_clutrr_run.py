"""configs/hybrid/clutrr.yaml end to end on a tiny backbone and a tiny CLUTRR folder: every k and noise set is reported,
and bench/depth_per_k.py reads the run's model and saved k sets into one table."""

import importlib.util
import json
from pathlib import Path

import pytest
from test_backbones import make_tiny_backbone
from test_clutrr import _write
from test_train_hybrid import overrides, train_hybrid

from hybrid.utils import UserError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("depth_per_k", REPO / "bench" / "depth_per_k.py")
depth_per_k = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(depth_per_k)
_spec = importlib.util.spec_from_file_location("hybrid_heads", REPO / "bench" / "hybrid_heads.py")
hybrid_heads = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hybrid_heads)


def test_clutrr_config_trains_reports_every_set_and_depth_per_k_reads_the_run(tmp_path):
    bert = make_tiny_backbone("bert", tmp_path / "bert")
    run = tmp_path / "run"
    args = overrides(bert, run, steps=2, **{"task.data_dir": _write(tmp_path / "clutrr"), "task.num_train": "null",
                                            "training.global_batch_size": 2})
    train_hybrid.main(["--config", str(REPO / "configs" / "hybrid" / "clutrr.yaml"), *args])
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "clutrr" and results["halt_max_steps"] == 2
    assert list(results["results"]) == ["k=2", "k=4", "k=10", "noise_none", "noise_irrelevant"]

    depth_per_k.main(["--run", str(run), "--steps", "1", "3", "--batch-size", "2"])
    summary = json.loads((run / "depth_per_k" / "depth_per_k.json").read_text())
    assert [r["k"] for r in summary["rows"]] == [2, 4, 10] and [r["count"] for r in summary["rows"]] == [1, 1, 1]
    assert all(set(r["fixed"]) == {"1", "3"} and 1 <= r["adaptive"]["steps"] <= 2 for r in summary["rows"])
    table = (run / "depth_per_k" / "depth_per_k.md").read_text().splitlines()
    assert table[0] == "| k | examples | 1 steps | 3 steps | adaptive (q_halt>0) acc | mean steps taken |"
    assert len(table) == 5 and table[2].startswith("| 2 | 1 | ")

    with pytest.raises(UserError, match="no model/ folder"):
        depth_per_k.main(["--run", str(tmp_path / "bert")])


def test_readout_tokens_on_clutrr_need_the_query_marks_and_then_train(tmp_path):
    bert = make_tiny_backbone("bert", tmp_path / "bert")
    data = _write(tmp_path / "clutrr")
    common = {"task.data_dir": data, "task.num_train": "null", "training.global_batch_size": 2,
              "model.readout_tokens": "['<', '{']"}
    unmarked = overrides(bert, tmp_path / "unmarked", steps=2, **common)
    with pytest.raises(UserError, match=r"texts of the train set have no '<' .*task.mark_query=true"):
        train_hybrid.main(["--config", str(REPO / "configs" / "hybrid" / "clutrr.yaml"), *unmarked])
    assert not (tmp_path / "unmarked" / "results.json").exists()

    run = tmp_path / "marked"
    marked = overrides(bert, run, steps=2, **common, **{"task.mark_query": "true"})
    train_hybrid.main(["--config", str(REPO / "configs" / "hybrid" / "clutrr.yaml"), *marked])
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["readout_tokens"] == ["<", "{"] and len(saved["readout_token_ids"]) == 2
    assert list(json.loads((run / "results.json").read_text())["results"])[0] == "k=2"
    # The heads table measures FLOPs on a model rebuilt from the run's config, readout included.
    flops = hybrid_heads.training_flops(run, examples=2)
    assert flops["head"] > 0 and flops["backbone"] == 0


def test_readout_tokens_on_a_token_level_task_is_a_user_error_before_the_backbone_loads(tmp_path):
    args = overrides(tmp_path / "no-backbone-here", tmp_path / "run", **{"model.readout_tokens": "['<']"})
    with pytest.raises(UserError, match="task text_sudoku: .*readout_tokens is for task='sequence'"):
        train_hybrid.main(args)
