"""recipes/train_hybrid.py end to end on tiny random backbones: the shared loop trains the hybrid head, the
exported model reloads through the Auto classes with the same held-out numbers, and a resumed run is exact."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybrid.config import ConfigError
from hybrid.utils import UserError
from test_backbones import make_tiny_backbone

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_hybrid", REPO / "recipes" / "train_hybrid.py")
train_hybrid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_hybrid)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_backbone("bert", tmp_path_factory.mktemp("bb") / "bert")


def overrides(backbone, out, steps=8, **extra):
    args = {
        "run.output_dir": out, "run.trackers": "[]", "run.progress_bar": "false", "run.log_every": 1,
        "model.backbone_name_or_path": backbone, "model.hidden_size": 32, "model.num_heads": 2, "model.L_layers": 1,
        "model.halt_max_steps": 2, "task.num_train": 64, "task.num_test": 24, "training.global_batch_size": 16,
        "training.total_steps": steps, "training.lr_warmup_steps": 2, "eval.interval": 0,
    } | extra
    return [f"{k}={v}" for k, v in args.items()]


def test_default_config_is_the_documented_main_job():
    from hybrid.config import load_config
    from hybrid.train.config import HybridTrainConfig

    cfg = load_config(HybridTrainConfig, train_hybrid.DEFAULT_CONFIG)
    assert cfg.task.name == "text_sudoku"
    # The main job's model, pinned: its section fills HybridRecursiveConfig, whose own defaults differ.
    m = cfg.model_config(task="token", num_labels=4)
    assert m.backbone_name_or_path == "sentence-transformers/all-MiniLM-L6-v2" and m.backbone_layers == [-1]
    assert (m.head, m.core, m.hidden_size, m.num_heads, m.expansion, m.H_cycles, m.L_cycles, m.L_layers) == (
        "recursive", "trm", 128, 4, 4.0, 2, 2, 2
    )
    assert (m.halt_max_steps, m.halt_exploration_prob, m.loss_type, m.lora_r) == (4, 0.1, "softmax_cross_entropy", 0)


def test_trains_exports_and_reloads_with_the_same_results(tmp_path, bert):
    import hybrid.models  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hybrid.data.text_tasks import TextCollator
    from hybrid.eval.loop import evaluate
    from hybrid.data.streams import padded_batches

    out = tmp_path / "run"
    train_hybrid.main(overrides(bert, out) + ["feature_cache_dtype=float32"])
    results = json.loads((out / "results.json").read_text())
    assert results["head"] == "recursive" and results["trainable_parameters"] > 0
    saved = json.loads((out / "model" / "config.json").read_text())
    recursion = ("core", "H_cycles", "L_cycles")
    assert [results[k] for k in recursion] == [saved[k] for k in recursion]
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "data" / "test"))) == 24  # the tokenized held-out set, for research tools

    model = AutoModelForTokenClassification.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    cfg = train_hybrid.load_config(train_hybrid.HybridTrainConfig, out / "config.yaml")
    task = train_hybrid.make_task(cfg.task)
    examples = train_hybrid.tokenize_sets(cfg, task.tests, tokenizer, model.backbone, task.level,
                                          task.single_token_words, model.config)["test"]
    pad_to = max(len(examples[i]["input_ids"]) for i in range(len(examples)))
    batches = padded_batches(examples, TextCollator(tokenizer.pad_token_id, pad_to=pad_to), global_batch_size=16)
    again = evaluate(model.act_loss(), batches, halt_max_steps=2)
    assert again["count"] == results["results"]["test"]["count"] == 24
    assert again["accuracy"] == pytest.approx(results["results"]["test"]["accuracy"], abs=1e-9)


def test_resume_is_exact_and_checkpoints_leave_out_the_frozen_backbone(tmp_path, bert):
    full, split = tmp_path / "full", tmp_path / "split"
    train_hybrid.main(overrides(bert, full))
    train_hybrid.main(overrides(bert, split) + ["run.stop_at_step=4"])
    train_hybrid.main(overrides(bert, split) + ["run.resume=auto"])
    a = load_file(full / "checkpoints" / "step_00000008" / "model.safetensors")
    b = load_file(split / "checkpoints" / "step_00000008" / "model.safetensors")
    assert not any(".backbone." in key for key in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_chain_task_on_a_decoder_only_backbone_reports_every_hop_set(tmp_path):
    gpt2 = make_tiny_backbone("gpt2", tmp_path / "gpt2")
    out = tmp_path / "run"
    train_hybrid.main(overrides(gpt2, out, steps=4, **{"task.name": "chain", "task.test_hops": "[3]"}))
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"hops1", "hops2", "hops3"}


def test_chain_held_out_sets_hold_no_training_text():
    # Regression: one-fact chain texts repeat (40 x 39 x 2 of them), so test sets drawn independently of the training
    # set shared texts with it.
    from hybrid.config import load_config
    from hybrid.train.config import HybridTrainConfig

    cfg = load_config(HybridTrainConfig, REPO / "configs" / "hybrid" / "chain.yaml", [
        "task.hops=[1]", "task.test_hops=[2]", "task.extra_links=0", "task.distractor_length=0",
        "task.num_train=2000", "task.num_test=500",
    ])
    task = train_hybrid.make_task(cfg.task)
    train, tests = task.train, task.tests
    seen = set(train["text"])
    assert 0 < len(tests["hops1"]) < 500 and len(tests["hops2"]) > 0
    assert not any(text in seen for test in tests.values() for text in test["text"])


def test_bad_input_fails_before_anything_is_written(tmp_path, bert):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="backbone 'no/such-model' is not a local folder"):
        train_hybrid.main(overrides("no/such-model", out))
    with pytest.raises(ConfigError, match="feature_cache=none"):
        train_hybrid.main(overrides(bert, out, **{"model.lora_r": 4}))
    with pytest.raises(UserError, match="task.name=user needs task.train_file"):
        train_hybrid.main(overrides(bert, out, **{"task.name": "user"}))
    with pytest.raises(ConfigError, match="unknown key 'model.widht'. Valid keys in model: .*hidden_size"):
        train_hybrid.main(overrides(bert, out, **{"model.widht": 64}))
    with pytest.raises(ConfigError, match="hidden_size .* divisible by num_heads"):
        train_hybrid.main(overrides(bert, out, **{"model.hidden_size": 33}))
    with pytest.raises(ConfigError, match="head dimension .* must be even"):
        train_hybrid.main(overrides(bert, out, **{"model.hidden_size": 30}))
    assert not out.exists()


def test_an_existing_run_folder_is_refused_before_the_backbone_loads(tmp_path, bert, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    monkeypatch.setattr(train_hybrid, "load_backbone", lambda *a, **k: pytest.fail("the backbone was loaded"))
    with pytest.raises(UserError, match="is not empty and holds no previous run"):
        train_hybrid.main(overrides(bert, out))
    assert (out / "notes.txt").read_text() == "a user's file"


def test_lora_run_through_the_recipe_keeps_the_adapter(tmp_path, bert, caplog):
    """LoRA needs the cache off; the value is "none" because YAML reads `off` as false (the bug this guards)."""
    caplog.set_level("INFO", logger="hybrid.train_hybrid")
    out = tmp_path / "run"
    train_hybrid.main(overrides(bert, out, steps=2, **{"model.lora_r": 4, "model.head": "linear",
                                                      "feature_cache": "none", "training.lr_warmup_steps": 1,
                                                      "eval.halt_max_steps": 1}))
    saved = load_file(out / "checkpoints" / "step_00000002" / "model.safetensors")
    adapters = [k for k in saved if "lora_" in k]
    assert adapters and not [k for k in saved if ".backbone." in k and "lora_" not in k]
    # The start-of-run line and results.json named a recursive core for baseline heads too.
    assert "linear head on a LoRA r=4 backbone: " in caplog.text and "(trm, T=" not in caplog.text
    results = json.loads((out / "results.json").read_text())
    assert results["head"] == "linear" and not {"core", "H_cycles", "L_cycles"} & set(results)
    assert (results["halt_max_steps"], results["eval_halt_max_steps"]) == (2, 1)  # trained with 2, evaluated at 1


def test_frozen_backbone_runs_in_bfloat16_when_asked(tmp_path, bert, monkeypatch):
    seen = []
    real = train_hybrid.load_backbone

    def spy(name, *, dtype=None):
        seen.append(dtype)
        return real(name, dtype=dtype)

    monkeypatch.setattr(train_hybrid, "load_backbone", spy)
    out = tmp_path / "run"
    train_hybrid.main(overrides(bert, out, steps=2, **{"backbone_dtype": "bfloat16", "training.lr_warmup_steps": 1}))
    assert seen == [torch.bfloat16] and (out / "results.json").is_file()
    with pytest.raises(ConfigError, match="backbone_dtype applies to a frozen backbone"):
        train_hybrid.main(overrides(bert, tmp_path / "lora", **{"backbone_dtype": "bfloat16", "model.lora_r": 4,
                                                                  "feature_cache": "none"}))


@pytest.mark.parametrize(
    "train_csv, test_csv, message",
    [
        ("", "text,label\na b,x\n", "the file is empty"),
        ("text,label\n", "text,label\na b,x\n", "holds no examples"),
        ("text,label\na b,\nc d,y\n", "text,label\na b,y\n", "column 'label' is empty in 1 rows"),
        ("text,label\na b,-1\nc d,1\n", "text,label\na b,1\n", "negative label -1"),
        ("text,label\na b,x\nc d,y\n", "text,label\na b,z\n", "label 'z' does not occur in the training file"),
    ],
    ids=["empty", "header-only", "empty-cell", "label-minus-1", "unseen-test-label"],
)
def test_bad_user_files_fail_in_one_line_before_anything_is_written(tmp_path, bert, train_csv, test_csv, message):
    (tmp_path / "train.csv").write_text(train_csv)
    (tmp_path / "test.csv").write_text(test_csv)
    out = tmp_path / "run"
    task = {"task.name": "user", "task.train_file": tmp_path / "train.csv", "task.test_file": tmp_path / "test.csv"}
    with pytest.raises(UserError, match=message) as caught:
        train_hybrid.main(overrides(bert, out, **task))
    assert "\n" not in str(caught.value) and not out.exists()
