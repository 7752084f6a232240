"""Two CPU processes must train exactly like one process with the same global batch.

This is the check that ranks really synchronise: an Accelerator created without `cpu=True` on a CPU-only machine
runs each rank alone, which would give each rank half the batch and different weights.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybrid.data.sudoku import generate_sudoku_dataset

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
# python recipes/train_pure.py --config dist.yaml (written by the test)
run: {{output_dir: {out}, seed: 3, log_every: 1, trackers: [], progress_bar: false}}
data: {{path: {data}}}
arch: {{family: trm, H_cycles: 2, L_cycles: 1, L_layers: 1, hidden_size: 32, num_heads: 2, expansion: 2,
        puzzle_emb_ndim: 32, puzzle_emb_len: 1, forward_dtype: float32, halt_max_steps: 3, halt_exploration_prob: 0.0}}
training: {{global_batch_size: 16, total_steps: 10, lr: 3.0e-3, lr_warmup_steps: 2, ema: true, ema_rate: 0.9,
           puzzle_emb_lr: 1.0e-2}}
eval: {{interval: 0, max_examples: 16}}
"""


def launch(args: list[str], config: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*args, str(REPO / "recipes" / "train_pure.py"), "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.multiprocess
def test_two_processes_equal_one(tmp_path):
    data = tmp_path / "data"
    generate_sudoku_dataset(data, size=4, givens=6, train_size=80, test_size=16, seed=1)

    runs = {}
    for name, launcher in {
        "one": [sys.executable],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }.items():
        config = tmp_path / f"{name}.yaml"
        config.write_text(CONFIG.format(out=tmp_path / name, data=data))
        log = launch(launcher, config)
        assert f"on {1 if name == 'one' else 2} process(es)" in log
        runs[name] = load_file(tmp_path / name / "checkpoints" / "step_00000010" / "model.safetensors")

    one, two = runs["one"], runs["two"]
    assert one.keys() == two.keys()
    moved = 0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    # The runs must have trained (otherwise equality proves nothing): compare with a fresh model's weights.
    from hybrid.models.pure import PureConfig, build_pure_model

    torch.manual_seed(3)
    fresh, _ = build_pure_model(PureConfig(
        seq_len=16, vocab_size=6, num_puzzle_identifiers=1, H_cycles=2, L_cycles=1, L_layers=1, hidden_size=32,
        num_heads=2, expansion=2, puzzle_emb_ndim=32, puzzle_emb_len=1, forward_dtype="float32", halt_max_steps=3,
    ))
    for key, value in fresh.state_dict().items():
        moved += not torch.equal(value, one[key])
    assert moved > 5


def _people_task(folder: Path) -> list[str]:
    """A CLUTRR folder of 32 two-fact training stories for the person-graph head, as its task overrides."""
    from test_clutrr import _row, _write

    stories = [_row(f"[A{i}] met her son [B{i}]. [B{i}] has a son [C{i}].", (f"A{i}", f"C{i}"),
                    "grandson", "task_1.2") for i in range(32)]
    rows = {"train.csv": stories, "test.csv": stories[:4]}
    return [f"task.data_dir={_write(folder, rows)}", "model.halt_max_steps=1", "model.readout_tokens=['<', '{']"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("config", ["default", "clutrr_people"])
def test_hybrid_two_processes_equal_one(tmp_path, config):
    """The hybrid recipe on the same loop: 2 ranks with half the batch each end with one rank's weights (the
    person-graph head too). The person-graph run's held-out set has 4 stories, so rank 1's share is padding only: its
    evaluation must still join the sum across ranks (it once returned early and left rank 0 waiting)."""
    from test_backbones import make_tiny_backbone

    bert = make_tiny_backbone("bert", tmp_path / "bert")
    common = [
        "--config", str(REPO / "configs" / "hybrid" / f"{config}.yaml"), f"model.backbone_name_or_path={bert}",
        "run.trackers=[]", "run.progress_bar=false", "model.hidden_size=32", "model.num_heads=2", "model.L_layers=1",
        "model.halt_max_steps=2", "model.halt_exploration_prob=0.0", "task.num_train=64", "task.num_test=16",
        "training.global_batch_size=16", "training.total_steps=6", "training.lr_warmup_steps=2", "eval.interval=0",
        *(_people_task(tmp_path / "clutrr") if config == "clutrr_people" else []),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    weights = {}
    for name, launcher in {
        "one": [sys.executable],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }.items():
        out = tmp_path / name
        proc = subprocess.run(
            [*launcher, str(REPO / "recipes" / "train_hybrid.py"), *common, f"run.output_dir={out}"],
            env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"on {1 if name == 'one' else 2} process(es)" in proc.stderr
        weights[name] = load_file(out / "checkpoints" / "step_00000006" / "model.safetensors")
    assert weights["one"].keys() == weights["two"].keys()
    for key in weights["one"]:
        torch.testing.assert_close(weights["two"][key], weights["one"][key], rtol=1e-5, atol=1e-6, msg=key)
