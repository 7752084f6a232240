"""Checkpoints: round trip, crash safety, retention, and RNG state that reproduces the same draws."""

import random

import numpy as np
import pytest
import torch

from hybrid import checkpoint as ckpt
from hybrid.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                     set_rng_state)


def model_state():
    embed = torch.randn(5, 3)
    return {"embed.weight": embed, "lm_head.weight": embed, "block.qkv": torch.randn(3, 6).t(), "H_init": torch.randn(3)}


def train_state():
    return {"optimizer": {"state": {0: {"step": 3, "exp_avg": torch.ones(2)}}, "param_groups": [{"betas": (0.9, 0.95)}]},
            "sampler": {"epoch": 2, "position": 17}, "carry": [torch.zeros(2, 3), None], "name": "trm", "rng": rng_state()}


def test_round_trip_keeps_tensors_and_train_state(tmp_path):
    state, extra = model_state(), train_state()
    path = save_checkpoint(tmp_path, 12, model_state=state, train_state=extra, keep_last=2)
    assert path == tmp_path / "checkpoints" / "step_00000012"
    assert latest_checkpoint(tmp_path) == path
    loaded_model, loaded_train = load_checkpoint(path)
    assert loaded_model.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded_model[name], tensor)
    # tied weights come back as independent tensors
    assert loaded_model["embed.weight"].data_ptr() != loaded_model["lm_head.weight"].data_ptr()
    assert loaded_train["sampler"] == {"epoch": 2, "position": 17}
    assert loaded_train["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(loaded_train["optimizer"]["state"][0]["exp_avg"], torch.ones(2))
    assert loaded_train["carry"][1] is None and loaded_train["name"] == "trm"


def test_crash_mid_write_leaves_previous_checkpoint_latest(tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, 1, model_state=model_state(), train_state={}, keep_last=3)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing train_state.pt")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model_state=model_state(), train_state={}, keep_last=3)
    assert latest_checkpoint(tmp_path) == first
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_leftover_temporary_and_unfinished_folders_are_ignored(tmp_path):
    first = save_checkpoint(tmp_path, 1, model_state=model_state(), train_state={}, keep_last=3)
    (tmp_path / "checkpoints" / ".tmp_step_00000005_999").mkdir()  # what a killed process leaves
    unfinished = tmp_path / "checkpoints" / "step_00000004"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == first
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(unfinished)


def test_keep_last_deletes_only_older_complete_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model_state=model_state(), train_state={"step": step}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000030", "step_00000040"]
    assert load_checkpoint(latest_checkpoint(tmp_path))[1] == {"step": 40}


def test_latest_of_empty_run_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_rejects_state_that_weights_only_cannot_load(tmp_path):
    with pytest.raises(CheckpointError, match=r"train_state\['sampler'\]\['order'\] is a ndarray"):
        save_checkpoint(tmp_path, 1, model_state={}, train_state={"sampler": {"order": np.arange(3)}}, keep_last=1)
    with pytest.raises(CheckpointError, match="model_state\\['step'\\] is a int"):
        save_checkpoint(tmp_path, 1, model_state={"step": 3}, train_state={}, keep_last=1)
    assert not (tmp_path / "checkpoints" / "step_00000001").exists()


def test_refuses_to_overwrite_an_existing_step(tmp_path):
    save_checkpoint(tmp_path, 3, model_state=model_state(), train_state={}, keep_last=1)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tmp_path, 3, model_state=model_state(), train_state={}, keep_last=1)


def draws():
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist()


def test_rng_state_round_trip_through_checkpoint_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(1)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path, 1, model_state={}, train_state={"rng": rng_state()}, keep_last=1)
    expected = draws()
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    assert draws() != expected
    set_rng_state(load_checkpoint(latest_checkpoint(tmp_path))[1]["rng"])
    assert draws() == expected


def test_set_rng_state_rejects_foreign_dict():
    with pytest.raises(ValueError, match="lacks keys"):
        set_rng_state({"torch": torch.get_rng_state()})
