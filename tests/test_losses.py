import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybrid.core.act import ACT, ReasonerOutput
from hybrid.core.losses import (
    ACTLoss,
    act_metrics,
    per_sequence_lm_loss,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)


def test_stablemax_on_known_numbers_in_float64():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, -3.0, 0.0]], dtype=torch.float32)
    labels = torch.tensor([1, -100])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    # s = [1, 2, 1/2] -> p(1) = 2 / 3.5; the ignored row contributes 0.
    assert math.isclose(loss[0].item(), -math.log(2 / 3.5), rel_tol=1e-12)
    assert loss[1].item() == 0.0
    # s = [3, 1/4, 1] -> p(0) = 3 / 4.25
    assert math.isclose(stablemax_cross_entropy(logits[1:], torch.tensor([0]))[0].item(), -math.log(3 / 4.25))


def test_softmax_cross_entropy_matches_torch_and_ignores():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 4], [0, 2, -100]])
    loss = softmax_cross_entropy(logits, labels)
    assert loss.shape == (2, 3) and loss[0, 1] == 0 and loss[1, 2] == 0
    torch.testing.assert_close(loss[0, 0], F.cross_entropy(logits[0, 0:1], labels[0, 0:1]))


def test_per_sequence_loss_is_a_mean_over_each_sequences_labelled_tokens():
    logits = torch.randn(3, 4, 6)
    labels = torch.tensor([[1, 2, -100, -100], [3, 3, 3, 3], [-100] * 4])
    per_token = softmax_cross_entropy(logits, labels)
    loss = per_sequence_lm_loss(logits, labels, "softmax_cross_entropy")
    torch.testing.assert_close(loss[0], per_token[0, :2].mean())
    torch.testing.assert_close(loss[1], per_token[1].mean())
    assert loss[2] == 0  # no labels: divided by 1, not 0


def test_sequence_labels_are_a_length_one_sequence():
    logits = torch.randn(4, 1, 3)
    labels = torch.tensor([0, 2, 1, -100])
    loss = per_sequence_lm_loss(logits, labels, "softmax_cross_entropy")
    torch.testing.assert_close(loss[:3], F.cross_entropy(logits[:3, 0], labels[:3], reduction="none"))
    with pytest.raises(ValueError, match="do not match logits"):
        per_sequence_lm_loss(torch.randn(4, 2, 3), labels, "softmax_cross_entropy")


def test_metrics_count_only_halted_labelled_slots():
    # argmax predictions: slot 0 = [1, 1], slot 1 = [0, 1], slot 2 = [1, 0], slot 3 = anything (no labels)
    logits = torch.tensor(
        [[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]
    )
    labels = torch.tensor([[1, 1], [1, 1], [1, -100], [-100, -100]])
    q_halt = torch.tensor([1.0, 1.0, -1.0, 1.0])
    halted = torch.tensor([True, True, False, True])
    steps = torch.tensor([3, 5, 7, 2], dtype=torch.int32)
    metrics, seq_correct = act_metrics(logits, labels, q_halt, halted, steps)
    assert seq_correct.tolist() == [True, False, True, True]  # an unlabelled row counts as correct
    assert metrics["count"] == 2
    assert math.isclose(metrics["accuracy"].item(), 1.0 + 0.5)
    assert metrics["exact_accuracy"] == 1
    assert metrics["q_halt_accuracy"] == 1  # slot 0: says halt and is right; slot 1: says halt but wrong
    assert metrics["steps"] == 3 + 5


class FixedReasoner(nn.Module):
    def __init__(self, logits, q_halt, q_continue):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.q_halt, self.q_continue = q_halt, q_continue

    def empty_carry(self, batch):
        return (torch.zeros(self.logits.shape[0], 1, 1),)

    def reset_carry(self, reset, carry):
        return carry

    def forward(self, carry, batch):
        return ReasonerOutput(carry, self.logits, self.q_halt, self.q_continue, carry)


def test_act_loss_sums_lm_and_halves_the_q_losses():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([[1, 2, 3], [0, -100, 1]])
    q_halt, q_cont = torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.5])
    batch = {"labels": labels}
    head = ACTLoss(
        ACT(FixedReasoner(logits, q_halt, q_cont), halt_max_steps=4, halt_exploration_prob=0.0), loss_type="softmax_cross_entropy"
    ).eval()
    carry, loss, metrics, preds, all_halted = head(head.initial_carry(batch), batch)
    lm = per_sequence_lm_loss(logits, labels, "softmax_cross_entropy").sum()
    correct = (logits.argmax(-1) == labels) | (labels == -100)
    halt = F.binary_cross_entropy_with_logits(q_halt, correct.all(-1).float(), reduction="sum")
    torch.testing.assert_close(loss, lm + 0.5 * halt)
    torch.testing.assert_close(metrics["lm_loss"], lm)
    assert "q_continue_loss" not in metrics and not all_halted
    assert torch.equal(preds["preds"], logits.argmax(-1))
    loss.backward()
    assert head.act.reasoner.logits.grad is not None


def test_act_loss_adds_the_continue_loss_when_the_act_gives_a_target():
    logits = torch.randn(2, 3, 4)
    batch = {"labels": torch.tensor([[1, 2, 3], [0, 1, 1]])}
    q_halt, q_cont = torch.tensor([-1.0, -2.0]), torch.tensor([0.5, 0.4])
    act = ACT(FixedReasoner(logits, q_halt, q_cont), halt_max_steps=4, halt_exploration_prob=0.0,
              halt_rule="q_halt_vs_continue", compute_target_q=True)
    head = ACTLoss(act).train()
    _, loss, metrics, _, _ = head(head.initial_carry(batch), batch)
    target = torch.sigmoid(torch.maximum(q_halt, q_cont))
    expected_continue = F.binary_cross_entropy_with_logits(q_cont, target, reduction="sum")
    torch.testing.assert_close(metrics["q_continue_loss"], expected_continue)
    torch.testing.assert_close(loss, metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + expected_continue))


def test_act_loss_bad_input():
    act = ACT(FixedReasoner(torch.randn(1, 2, 3), torch.zeros(1), torch.zeros(1)), halt_max_steps=2,
              halt_exploration_prob=0.0)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        ACTLoss(act, loss_type="mse")


def test_act_loss_without_labels_is_inference():
    logits = torch.randn(1, 2, 3)
    act = ACT(FixedReasoner(logits, torch.zeros(1), torch.zeros(1)), halt_max_steps=2, halt_exploration_prob=0.0)
    head = ACTLoss(act)
    batch = {"inputs": torch.zeros(1, 2)}
    result = head(head.initial_carry(batch), batch)
    assert result.loss is None and result.metrics == {}
    assert torch.equal(result.outputs["preds"], logits.argmax(-1))
