"""Two properties of the training step that the performance work must keep: a bfloat16 forward stays close to the
float32 forward of the same weights, and the memory a training step keeps for backward does not grow with T."""

from dataclasses import replace

import pytest
import torch

from hybrid.core.losses import ACTLoss
from hybrid.models.pure import PureConfig, build_pure_model
from test_pure_model import grid_batch

SMALL = PureConfig(
    seq_len=16, vocab_size=6, num_puzzle_identifiers=4, H_cycles=2, L_cycles=2, L_layers=2, hidden_size=64,
    num_heads=4, puzzle_emb_ndim=64, puzzle_emb_len=2, pos_encodings="rope", forward_dtype="float32",
)
MLP_T = replace(SMALL, pos_encodings="none", mlp_t=True)

# Stated tolerance for one supervision step (6 network calls of 2 blocks) of a randomly initialised model: logits
# within 10% of the largest |logit| (measured over 5 seeds: at most 4% with attention, 6% with the token mixer; bf16
# keeps 8 mantissa bits, 0.4% per rounding), the summed loss within 1% (measured: at most 0.2%), and the argmax of at
# least 90% of tokens unchanged (measured: at least 93.75%).
LOGIT_TOL, LOSS_TOL, ARGMAX_AGREEMENT = 0.10, 0.01, 0.90


def one_eval_step(reasoner_act, batch):
    _, act = reasoner_act
    head = ACTLoss(act)
    head.eval()
    with torch.no_grad():
        _, loss, _, preds, _ = head(head.initial_carry(batch), batch)
    return loss, preds["logits"]


@pytest.mark.parametrize("cfg", [SMALL, MLP_T], ids=["attention", "mlp_t"])
def test_bf16_forward_is_close_to_fp32_with_the_same_weights(cfg):
    fp32 = build_pure_model(cfg)
    bf16 = build_pure_model(replace(cfg, forward_dtype="bfloat16"))
    with torch.no_grad():
        fp32[0].encoder.puzzle_emb.weights.normal_()  # zero at init: make the puzzle prefix take part
    bf16[0].load_state_dict(fp32[0].state_dict())
    batch = grid_batch(cfg, 8)

    loss32, logits32 = one_eval_step(fp32, batch)
    loss16, logits16 = one_eval_step(bf16, batch)
    assert logits16.dtype == torch.bfloat16, "the bf16 model must run its layers in bf16"
    err = (logits16.float() - logits32).abs().max()
    assert err <= LOGIT_TOL * logits32.abs().max(), f"max logit error {err:.3g}"
    assert abs(loss16.item() - loss32.item()) <= LOSS_TOL * abs(loss32.item())
    agreement = (logits16.float().argmax(-1) == logits32.argmax(-1)).float().mean()
    assert agreement >= ARGMAX_AGREEMENT


def saved_for_backward_bytes(cfg: PureConfig) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one training supervision step."""
    _, act = build_pure_model(cfg)
    head = ACTLoss(act)
    head.train()
    batch = grid_batch(cfg, 8)
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss, *_ = head(head.initial_carry(batch), batch)
    loss.backward()
    return sum(saved.values())


@pytest.mark.parametrize("family", ["trm", "hrm"])
def test_training_step_memory_does_not_grow_with_T(family):
    cfg = replace(SMALL, family=family, H_layers=1 if family == "hrm" else 0, no_ACT_continue=None)
    small_T, large_T = (saved_for_backward_bytes(replace(cfg, H_cycles=T)) for T in (2, 6))
    assert small_T > 0
    assert large_T == small_T
