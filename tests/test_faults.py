"""Fault injection: damaged checkpoints, kill -9 at chosen points, two writers in one run folder, and bad input at
every recipe's user-error boundary (one line on stderr, exit status 2, nothing written).

Every resumed run is compared with one uninterrupted reference run of the tiny 4x4 Sudoku config: the final weights
must be bitwise equal and metrics.jsonl must hold each record once. docs/reliability.md lists the cases.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.checkpoint import MODEL_FILE, TRAIN_STATE_FILE, checkpoint_dir, latest_checkpoint
from hybrid.utils import UserError, run_main
from test_train_pure import config, final_weights, sudoku4, train_losses, train_pure  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")

# Runs a recipe in a child process that SIGKILLs itself right after the nth call of `module.attr` returns.
KILL_DRIVER = r"""
import importlib, importlib.util, os, signal, sys
recipe, module, attr, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
owner = importlib.import_module(module)
for part in attr.split(".")[:-1]:
    owner = getattr(owner, part)
name, calls = attr.split(".")[-1], [0]
real = getattr(owner, name)
def dying(*args, **kwargs):
    result = real(*args, **kwargs)
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, dying)
spec = importlib.util.spec_from_file_location("recipe", recipe)
recipe_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_module)
recipe_module.main(sys.argv[5:])
"""


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def killed_run(tmp_path, cfg: Path, target: str, nth: int, *overrides: str) -> None:
    """train_pure.py in a child process, killed with SIGKILL right after the nth call of `target` returns."""
    module, _, attr = target.partition(":")
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), str(REPO / "recipes" / "train_pure.py"), module, attr, str(nth),
         "--config", str(cfg), *overrides],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def metric_keys(run_dir: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["split"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


EXPECTED_RECORDS = [(step, "train") for step in range(1, 13)] + [(12, "eval")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sudoku4):
    """The uninterrupted 12-step run every faulty run must end equal to."""
    cfg, out = config(tmp_path_factory.mktemp("reference"), sudoku4, steps=12, every=4)
    train_pure.main(["--config", str(cfg)])
    return out


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    a, b = final_weights(reference), final_weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert train_losses(run_dir) == train_losses(reference)
    assert metric_keys(run_dir) == EXPECTED_RECORDS, "each metric record exactly once, in order"


# ---- damaged checkpoints -------------------------------------------------------------------------------------------


def truncate_weights(ckpt: Path):
    data = (ckpt / MODEL_FILE).read_bytes()
    (ckpt / MODEL_FILE).write_bytes(data[: len(data) // 2])


def garbage_train_state(ckpt: Path):
    (ckpt / TRAIN_STATE_FILE).write_bytes(b"garbage")


def flip_a_byte(ckpt: Path):
    data = bytearray((ckpt / TRAIN_STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, still a valid zip for torch.load: only the checksum can tell
    (ckpt / TRAIN_STATE_FILE).write_bytes(bytes(data))


def remove_complete(ckpt: Path):
    (ckpt / "COMPLETE").unlink()


@pytest.mark.parametrize("damage, reason", [
    (truncate_weights, "model.safetensors has .* bytes"),
    (garbage_train_state, "train_state.pt has 7 bytes"),
    (flip_a_byte, "train_state.pt differs from what was written"),
    (remove_complete, "no COMPLETE file"),
])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, sudoku4, reference, caplog, damage,
                                                                   reason):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    train_pure.main(["--config", str(cfg), "run.stop_at_step=8"])
    damage(checkpoint_dir(out, 8))
    stale = out / "checkpoints" / ".tmp_step_00000009_4242"  # what a process killed mid-write leaves
    stale.mkdir()
    caplog.clear()

    train_pure.main(["--config", str(cfg), "run.resume=auto"])
    log = caplog.text
    assert "skipping step_00000008" in log and re.search(reason, log), log
    assert "resumed from" in log and "step_00000004 at step 4" in log
    assert_same_as_reference(out, reference)
    assert not stale.exists()
    (aside,) = (out / "checkpoints").glob("abandoned_*")
    assert (aside / "step_00000008").is_dir(), "the damaged checkpoint is moved aside, never deleted"


def test_resume_from_an_earlier_checkpoint_branches_and_can_be_retried(tmp_path, sudoku4, reference):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    train_pure.main(["--config", str(cfg)])
    first = checkpoint_dir(out, 4)
    for attempt in (1, 2):  # the same command twice: never "already exists"
        train_pure.main(["--config", str(cfg), f"run.resume={first}"])
        assert_same_as_reference(out, reference)
        asides = sorted((out / "checkpoints").glob("abandoned_*"))
        assert len(asides) == attempt
        assert sorted(p.name for p in asides[-1].iterdir()) == ["metrics.jsonl", "step_00000008", "step_00000012"]
        dropped = [json.loads(line)["step"] for line in (asides[-1] / "metrics.jsonl").read_text().splitlines()]
        assert dropped == [5, 6, 7, 8, 9, 10, 11, 12, 12], "the other branch's records are kept with its checkpoints"


def test_resume_from_a_damaged_named_checkpoint_is_a_one_line_error(tmp_path, sudoku4, capfd):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    train_pure.main(["--config", str(cfg), "run.stop_at_step=4"])
    flip_a_byte(checkpoint_dir(out, 4))
    before = metric_keys(out)
    expect_user_error(train_pure.main, ["--config", str(cfg), f"run.resume={checkpoint_dir(out, 4)}"], capfd,
                      "run.resume=.*step_00000004: train_state.pt differs from what was written")
    assert metric_keys(out) == before and latest_checkpoint(out) == checkpoint_dir(out, 4)


def test_final_checkpoint_is_written_before_the_final_evaluation(tmp_path, sudoku4, reference, monkeypatch):
    """A crash in the final evaluation (e.g. a bad test label) keeps the training; the resume only evaluates."""
    from hybrid.train import loop

    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)

    def broken_eval(*args, **kwargs):
        raise IndexError("label 7 is outside the 6 classes")

    monkeypatch.setattr(loop, "evaluate", broken_eval)
    with pytest.raises(IndexError):
        train_pure.main(["--config", str(cfg)])
    assert latest_checkpoint(out) == checkpoint_dir(out, 12)
    monkeypatch.undo()
    train_pure.main(["--config", str(cfg), "run.resume=auto"])
    assert_same_as_reference(out, reference)


# ---- kill -9 and the run-folder lock --------------------------------------------------------------------------------


def test_kill_mid_training_then_kill_during_metrics_truncation_resumes_bitwise(tmp_path, sudoku4, reference):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    killed_run(tmp_path, cfg, "hybrid.train.loop:Trainer.train_step", 10)  # after the step-8 checkpoint
    assert latest_checkpoint(out) == checkpoint_dir(out, 8)
    assert [s for s, _ in metric_keys(out)] == list(range(1, 10)), "steps 9.. were logged after the checkpoint"

    # The resume dies inside the truncation: the shortened copy is written, the rename has not happened.
    killed_run(tmp_path, cfg, "os:fsync", 1, "run.resume=auto")
    assert (out / ".metrics.jsonl.tmp").is_file() and [s for s, _ in metric_keys(out)] == list(range(1, 10))

    train_pure.main(["--config", str(cfg), "run.resume=auto"])  # the dead processes' locks are free
    assert_same_as_reference(out, reference)


def test_kill_right_after_taking_the_lock_leaves_a_folder_a_new_run_accepts(tmp_path, sudoku4, reference):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    killed_run(tmp_path, cfg, "fcntl:flock", 1)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    train_pure.main(["--config", str(cfg)])
    assert_same_as_reference(out, reference)


HOLDER = """
import sys, time
from hybrid.train.tracking import lock_run_dir
lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_before_it_writes(tmp_path, sudoku4, reference):
    cfg, out = config(tmp_path, sudoku4, steps=12, every=4)
    train_pure.main(["--config", str(cfg), "run.stop_at_step=8"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in (["run.resume=auto"], ["run.overwrite=true"]):
            with pytest.raises(UserError, match=rf"run folder .* is in use by process {holder.pid} on "):
                train_pure.main(["--config", str(cfg), *flags])
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before, "nothing changed"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    train_pure.main(["--config", str(cfg), "run.resume=auto"])  # a dead holder's lock is free
    assert_same_as_reference(out, reference)


# ---- bad input: one line, exit status 2, nothing written ------------------------------------------------------------


def expect_user_error(main, argv, capfd, match: str) -> str:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    err = capfd.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(match, last), err
    return last


@pytest.mark.parametrize("override, match", [
    ("checkpoint.keep_last=0", "keep_last must be >= 1, got 0"),
    ("training.lr=-1", "lr must be > 0, got -1.0"),
    ("training.lr_warmup_steps=-5", "lr_warmup_steps must be >= 0, got -5"),
    ("eval.max_examples=0", "max_examples must be >= 1, got 0"),
    ("eval.halt_max_steps=0", "halt_max_steps must be >= 1, got 0"),
    ("training.global_batch_size=4096", "global_batch_size=4096 is larger than one pass over the training data"),
    ("run.trackers=[nope]", "unknown tracker 'nope'"),
])
def test_bad_training_settings_fail_before_the_run_folder_exists(tmp_path, sudoku4, capfd, override, match):
    cfg, out = config(tmp_path, sudoku4, steps=12)
    expect_user_error(train_pure.main, ["--config", str(cfg), override], capfd, match)
    assert not out.exists()


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_datasets_fail_at_load(tmp_path, sudoku4, capfd):
    bad = copy_dataset(sudoku4, tmp_path / "bad_tokens")
    inputs = np.load(bad / "train" / "all__inputs.npy")
    inputs[17, 3] = 9  # vocab_size is 6
    np.save(bad / "train" / "all__inputs.npy", inputs)
    cfg, out = config(tmp_path, bad, steps=12)
    expect_user_error(train_pure.main, ["--config", str(cfg)], capfd,
                      r"train: inputs row 17 holds a token outside 0..vocab_size-1 = 0..5")
    assert not out.exists()

    from hybrid.data.format import read_split, write_split

    empty = copy_dataset(sudoku4, tmp_path / "empty")
    metadata = read_split(empty, "train").metadata
    metadata.total_groups = metadata.total_puzzles = 0
    nothing = np.zeros((0, 16), np.uint8)
    write_split(empty, "train", inputs=nothing, labels=nothing, puzzle_identifiers=np.zeros(0, np.int32),
                puzzle_indices=[0], group_indices=[0], metadata=metadata)
    cfg, out = config(tmp_path, empty, name="on_empty", steps=12)
    expect_user_error(train_pure.main, ["--config", str(cfg)], capfd, "the train split holds no examples")
    assert not out.exists()


def test_every_recipe_answers_help(capfd):
    for name in ("build_data", "depth_sweep", "evaluate", "trace", "train_hybrid", "train_pure"):
        with pytest.raises(SystemExit) as exit_info:
            run_main(load_recipe(name).main, ["--help"])
            raise SystemExit(0)  # config-driven recipes return after printing
        out = capfd.readouterr().out
        assert exit_info.value.code == 0 and "usage" in out.lower(), name


SUDOKU_ROW = "src,{q},{a},3"
SOLVED = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


@pytest.mark.parametrize("content, match", [
    ("", r"header None, expected"),
    ("source,question,answer,rating\n", "no puzzles"),
    ("source,question,answer,rating\n" + SUDOKU_ROW.format(q="", a=SOLVED) + "\n", "question has 0 cells"),
    ("source,question,answer,rating\n" + SUDOKU_ROW.format(q="." * 81, a=SOLVED[1:] + SOLVED[0]) + "\n",
     r"bad.csv:2: answer breaks the Sudoku rules"),
])
def test_build_data_rejects_bad_sudoku_csvs(tmp_path, capfd, content, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    out = tmp_path / "built"
    expect_user_error(load_recipe("build_data").main,
                      ["sudoku", "--train-file", str(csv), "--test-file", str(csv), "--output-dir", str(out)],
                      capfd, match)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.csv"]


def test_build_data_other_user_errors(tmp_path, capfd):
    build_data = load_recipe("build_data").main
    out = tmp_path / "built"
    expect_user_error(build_data, ["sudoku", "--train-file", str(tmp_path / "trian.csv"), "--output-dir", str(out)],
                      capfd, r"trian.csv: no such file")
    expect_user_error(build_data, ["sudoku-gen", "--givens", "8", "--train-size", "0", "--output-dir", str(out)],
                      capfd, "--train-size 0 must be >= 1")
    prefix = tmp_path / "arc"
    for kind in ("challenges", "solutions"):
        (tmp_path / f"arc_training_{kind}.json").write_text("{}")
    expect_user_error(build_data, ["arc", "--input-file-prefix", str(prefix), "--subsets", "training",
                                   "--test-set-name", "training", "--output-dir", str(out)],
                      capfd, r"subset\(s\) \['training'\] hold no tasks")
    assert not out.exists()


def test_evaluate_user_errors_and_a_damaged_checkpoint(tmp_path, sudoku4, capfd, caplog):
    evaluate = load_recipe("evaluate").main
    cfg, out = config(tmp_path, sudoku4, steps=8, every=4)
    train_pure.main(["--config", str(cfg)])
    expect_user_error(evaluate, ["--checkpoint", str(out), "--halt-max-steps", "-3"], capfd,
                      "--halt-max-steps -3 must be >= 1")
    truncate_weights(checkpoint_dir(out, 8))
    expect_user_error(evaluate, ["--checkpoint", str(checkpoint_dir(out, 8))], capfd,
                      "step_00000008: model.safetensors has .* bytes")
    report = tmp_path / "eval.json"
    evaluate(["--checkpoint", str(out), "--out", str(report)])  # the run folder: its newest intact checkpoint
    assert json.loads(report.read_text())["checkpoint"].endswith("step_00000004")
    assert "skipping step_00000008" in caplog.text


def test_trace_takes_the_tokenizer_from_the_model_folder_offline(tmp_path):
    """A hybrid model folder holds its tokenizer (train_hybrid.py saves it there); the backbone name is never fetched."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from test_backbones import make_tiny_backbone

    backbone = make_tiny_backbone("bert", tmp_path / "bert")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "hybrid_recursive"}))
    load_tokenizer = load_recipe("trace").load_tokenizer
    research_model = SimpleNamespace(
        source=model_dir, hf_model=SimpleNamespace(config=SimpleNamespace(backbone_name_or_path="nobody/not-cached"))
    )
    with pytest.raises(UserError, match="no tokenizer in .*model and backbone 'nobody/not-cached'"):
        load_tokenizer(research_model)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(model_dir)
    tokenizer = load_tokenizer(research_model)
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"])[1:-1] == ["the", "cat"]


def test_research_recipes_reject_data_of_another_shape(tmp_path, sudoku4, capfd, monkeypatch):
    """depth_sweep and trace compare the data's dataset.json with the model, and trace also with --kind, before any
    model runs and before --out is written."""
    from hybrid.data.sudoku import generate_sudoku_dataset

    six = tmp_path / "sudoku6"
    generate_sudoku_dataset(six, size=6, givens=20, train_size=32, test_size=8, seed=0)
    cfg, run = config(tmp_path, six, steps=2)
    train_pure.main(["--config", str(cfg), "training.lr_warmup_steps=1"])

    def never(*args, **kwargs):
        raise AssertionError("the model ran before the data was checked")

    sweep, trace = load_recipe("depth_sweep"), load_recipe("trace")
    monkeypatch.setattr(sweep, "depth_sweep", never)
    monkeypatch.setattr(trace, "record_trace", never)
    out = tmp_path / "out"
    four = f"{sudoku4}/test/dataset.json has seq_len=16, vocab_size=6; the model was trained with seq_len=36, " \
        "vocab_size=8"
    expect_user_error(sweep.main, ["--checkpoint", str(run), "--data", str(sudoku4), "--out", str(out)], capfd,
                      re.escape(four))
    expect_user_error(trace.main, ["--checkpoint", str(run), "--data", str(sudoku4), "--kind", "sudoku",
                                   "--out", str(out)], capfd, re.escape(four))
    for kind, expected in (("maze", "a square seq_len, vocab_size=6"), ("arc", "seq_len=900, vocab_size=12")):
        message = f"--kind {kind} draws grids with {expected}; {six}/test/dataset.json has seq_len=36, vocab_size=8"
        expect_user_error(trace.main, ["--checkpoint", str(run), "--data", str(six), "--kind", kind, "--out", str(out)],
                          capfd, re.escape(message))
    assert not out.exists()

    monkeypatch.undo()  # the matching kind passes the check and traces
    load_recipe("trace").main(["--checkpoint", str(run), "--data", str(six), "--kind", "sudoku", "--examples", "0",
                               "--steps", "1", "--out", str(out)])
    assert (out / "example_0.png").is_file()


@pytest.mark.parametrize("recipe", ["depth_sweep", "trace"])
def test_research_recipes_name_a_missing_checkpoint_or_data_folder(tmp_path, recipe):
    main = load_recipe(recipe).main
    with pytest.raises(UserError, match=f"--checkpoint {tmp_path / 'nope'} does not exist"):
        main(["--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path)])
    with pytest.raises(UserError, match="--data .* is not a folder"):
        main(["--checkpoint", str(tmp_path), "--data", str(tmp_path / "nope")])
