import json
import math

import pytest
import torch

from hybrid.core.losses import ACTLoss
from hybrid.models.pure import PureConfig, PureReasoner, build_pure_model
from hybrid.models.reference import (
    CheckpointMismatchError,
    config_from_official,
    from_official,
    load_official_state_dict,
)


def tiny(**overrides) -> PureConfig:
    base = dict(
        seq_len=6, vocab_size=5, num_puzzle_identifiers=3, H_cycles=2, L_cycles=2, L_layers=1, hidden_size=16,
        num_heads=2, puzzle_emb_ndim=16, puzzle_emb_len=2, forward_dtype="float32", halt_max_steps=4,
    )
    return PureConfig(**{**base, **overrides})


def grid_batch(cfg: PureConfig, B: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "inputs": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "labels": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (B,), generator=g),
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=3), "does not divide hidden_size"),
        (dict(family="hrm", H_layers=1, pos_encodings="none"), "HRM supports pos_encodings"),
        (dict(family="hrm", H_layers=0), "HRM needs H_layers"),
        (dict(family="gpt"), "family must be one of"),
        (dict(pos_encodings="alibi"), "pos_encodings must be one of"),
        (dict(forward_dtype="float8"), "forward_dtype must be one of"),
        (dict(mlp_t=True, seq_len=0), "seq_len must be >= 1"),
        (dict(puzzle_emb_ndim=40, puzzle_emb_len=2), "does not fit"),
        (dict(H_cycles=0), "H_cycles and L_cycles"),
        (dict(loss_type="mse"), "loss_type must be one of"),
        (dict(halt_exploration_prob=2.0), "halt_exploration_prob"),
        (dict(family="hrm", H_layers=1, separate_networks=True), "ablations of family 'trm', not 'hrm'"),
        (dict(family="hrm", H_layers=1, one_step_gradient=True), "ablations of family 'trm', not 'hrm'"),
        (dict(family="trm_singlez", one_step_gradient=True), "ablations of family 'trm', not 'trm_singlez'"),
        (dict(separate_networks=True, H_layers=3), "gives f_H the L_layers=1 layers of f_L; H_layers=3"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_config_derived_sizes_and_defaults():
    assert tiny(puzzle_emb_len=0, puzzle_emb_ndim=20).prefix_len == 2  # ceil(20 / 16)
    assert tiny(puzzle_emb_len=0, puzzle_emb_ndim=0).total_len == 6
    assert tiny().no_ACT_continue is True and tiny(family="hrm", H_layers=1).no_ACT_continue is False


def test_input_embedding_is_scaled_prefix_then_tokens():
    cfg = tiny(puzzle_emb_ndim=8)  # the vector fills half of the first prefix position
    model = PureReasoner(cfg).eval()
    with torch.no_grad():
        model.encoder.puzzle_emb.weights.normal_()
    b = grid_batch(cfg)
    x, _ = model.encoder(b)
    scale = math.sqrt(cfg.hidden_size)
    assert x.shape == (3, cfg.total_len, cfg.hidden_size)
    torch.testing.assert_close(x[:, 0, :8], scale * model.encoder.puzzle_emb.weights[b["puzzle_identifiers"]])
    assert torch.count_nonzero(x[:, 0, 8:]) == 0 and torch.count_nonzero(x[:, 1]) == 0
    torch.testing.assert_close(x[:, 2:], scale * model.encoder.embed_tokens.weight[b["inputs"]])


def test_learned_positions_are_mixed_by_one_over_sqrt2():
    cfg = tiny(pos_encodings="learned", puzzle_emb_ndim=0, puzzle_emb_len=0)
    model = PureReasoner(cfg)
    b = grid_batch(cfg)
    x, _ = model.encoder(b)
    expected = math.sqrt(16) * 0.707106781 * (model.encoder.embed_tokens.weight[b["inputs"]] + model.encoder.embed_pos.weight)
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("family", ["trm", "hrm", "trm_singlez"])
def test_forward_shapes_heads_and_initial_halting_bias(family):
    cfg = tiny(family=family, H_layers=1)
    reasoner, act = build_pure_model(cfg)
    b = grid_batch(cfg)
    out = reasoner(reasoner.empty_carry(b), b)
    assert out.logits.shape == (3, cfg.seq_len, cfg.vocab_size)  # prefix dropped
    assert all(z.shape == (3, cfg.total_len, cfg.hidden_size) for z in out.carry)
    assert len(out.carry) == (1 if family == "trm_singlez" else 2)
    torch.testing.assert_close(out.q_halt_logits, torch.full((3,), -5.0))  # zero weight, bias -5
    assert act.compute_target_q == (family == "hrm")
    assert act.halt_rule == ("q_halt_vs_continue" if family == "hrm" else "q_halt")


def test_bfloat16_forward_keeps_fp32_masters_and_q_in_fp32():
    cfg = tiny(forward_dtype="bfloat16")
    reasoner, _ = build_pure_model(cfg)
    b = grid_batch(cfg)
    carry = reasoner.empty_carry(b)
    assert carry[0].dtype == torch.bfloat16 and reasoner.core.H_init.dtype == torch.bfloat16
    out = reasoner(carry, b)
    assert out.logits.dtype == torch.bfloat16 and out.carry[0].dtype == torch.bfloat16
    assert out.q_halt_logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in reasoner.parameters())


def test_cycle_override_through_act_matches_a_model_built_with_those_cycles():
    cfg = tiny()
    reasoner, act = build_pure_model(cfg)
    other, other_act = build_pure_model(tiny(H_cycles=1, L_cycles=3))
    other.load_state_dict(reasoner.state_dict())
    b = grid_batch(cfg)
    act.eval(), other_act.eval()
    _, out = act(act.initial_carry(b), b, H_cycles=1, L_cycles=3)
    _, ref = other_act(other_act.initial_carry(b), b)
    torch.testing.assert_close(out["logits"], ref["logits"])


def test_train_step_gives_gradients_to_dense_params_and_puzzle_rows():
    cfg = tiny()
    reasoner, act = build_pure_model(cfg)
    head = ACTLoss(act).train()
    b = grid_batch(cfg)
    _, loss, *_ = head(head.initial_carry(b), b)
    loss.backward()
    assert all(p.grad is not None for p in reasoner.parameters())
    assert reasoner.encoder.puzzle_emb.local_weights.grad.shape == (3, cfg.puzzle_emb_ndim)
    assert torch.equal(reasoner.encoder.puzzle_emb.local_ids, b["puzzle_identifiers"])


@pytest.mark.parametrize(
    "key, bad, message",
    [
        ("inputs", lambda b: b["inputs"].fill_(5), r"token ids in \[5, 5\], expected \[0, 4\]"),
        ("puzzle_identifiers", lambda b: b["puzzle_identifiers"].fill_(-1), "puzzle_identifiers'\\] holds ids"),
        ("inputs", lambda b: b["inputs"][:, :4], r"must be \[B, 6\]"),
    ],
)
def test_bad_batches_raise_clear_errors(key, bad, message):
    cfg = tiny()
    reasoner, _ = build_pure_model(cfg)
    b = grid_batch(cfg)
    b[key] = bad(b)
    with pytest.raises(ValueError, match=message):
        reasoner(reasoner.core.empty_carry(3, cfg.total_len), b)


@pytest.fixture
def trm_tiny(oracle_root):
    folder = oracle_root / "trm_tiny"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return json.loads((folder / "config.json").read_text()), torch.load(folder / "state_dict.pt", weights_only=True)


def test_loader_accepts_any_official_prefix(trm_tiny):
    cfg, sd = trm_tiny
    for prefix in ("_orig_mod.model.inner.", "model.inner.", "inner.", ""):
        stripped = {prefix + k.removeprefix("_orig_mod.model.inner."): v for k, v in sd.items()}
        reasoner, _ = from_official(cfg["model_cfg"], stripped, family="trm")
        torch.testing.assert_close(reasoner.heads.output.weight, sd["_orig_mod.model.inner.lm_head.weight"])
        torch.testing.assert_close(
            reasoner.core.net.layers[1].attn.qkv.weight,
            sd["_orig_mod.model.inner.L_level.layers.1.self_attn.qkv_proj.weight"],
        )


def test_loader_lists_missing_unexpected_and_mis_shaped_keys(trm_tiny):
    cfg, sd = trm_tiny
    bad = dict(sd)
    del bad["_orig_mod.model.inner.lm_head.weight"]
    bad["_orig_mod.model.inner.extra.weight"] = torch.zeros(1)
    bad["_orig_mod.model.inner.q_head.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as info:
        from_official(cfg["model_cfg"], bad, family="trm")
    text = str(info.value)
    assert "missing keys: ['heads.output.weight']" in text
    assert "unexpected keys: ['extra.weight']" in text
    assert "heads.q_head.bias: checkpoint (3,) vs model (2,)" in text


def test_loader_rejects_a_model_of_another_size(trm_tiny):
    cfg, sd = trm_tiny
    reasoner = PureReasoner(config_from_official({**cfg["model_cfg"], "hidden_size": 32, "puzzle_emb_ndim": 32}))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_official_state_dict(reasoner, sd)


def test_official_config_with_unknown_keys_is_rejected():
    with pytest.raises(ValueError, match=r"does not know: \['flash_attn'\]"):
        config_from_official(dict(seq_len=4, vocab_size=3, num_puzzle_identifiers=1, flash_attn=True))
    hrm = config_from_official(
        dict(seq_len=4, vocab_size=3, num_puzzle_identifiers=1, H_layers=1, batch_size=8, hidden_size=16, num_heads=2,
             puzzle_emb_ndim=16, name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1")
    )
    assert hrm.family == "hrm" and hrm.prefix_len == 1 and hrm.no_ACT_continue is False
