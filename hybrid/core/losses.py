"""Losses and metrics of deep supervision (official losses.py, `ACTLossHead`; its softmax path, which
crashes in the TRM repo, works here).

Everything here is a *sum* over slots: the training loop divides the loss by the global batch, and divides metrics by
`count` (the slots that halted this step and have at least one label).
"""

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.core.act import ACT, ACTCarry, Batch

IGNORE_LABEL_ID = -100
LossType = Literal["stablemax_cross_entropy", "softmax_cross_entropy"]


def _stablemax_s(x: Tensor) -> Tensor:
    # s(x) = x + 1 for x >= 0 and 1 / (1 - x) below: positive, monotone, and only linear growth for large logits.
    return torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)


def log_stablemax(x: Tensor, dim: int = -1) -> Tensor:
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Per-token -log stablemax(logits)[label] in float64; 0 where the label is ignored. logits [..., V], labels [...]."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    picked = logprobs.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Per-token softmax cross-entropy in float32; 0 where the label is ignored. logits [..., V], labels [...]."""
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return flat.view(labels.shape)


LOSS_FUNCTIONS = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


def as_token_labels(logits: Tensor, labels: Tensor) -> Tensor:
    """Token labels [B, S] pass through; sequence labels [B] become [B, 1] against logits [B, 1, C]."""
    if labels.ndim == 1 and logits.ndim == 3 and logits.shape[1] == 1:
        labels = labels[:, None]
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}: "
            "expected token labels [B, S] for logits [B, S, V], or sequence labels [B] for logits [B, 1, C]"
        )
    return labels


def per_sequence_lm_loss(logits: Tensor, labels: Tensor, loss_type: LossType) -> Tensor:
    """[B]: each sequence's token loss summed over labelled tokens and divided by their count (at least 1)."""
    labels = as_token_labels(logits, labels)
    counts = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1)
    return LOSS_FUNCTIONS[loss_type](logits, labels).sum(-1) / counts


def q_halt_loss(q_halt_logits: Tensor, seq_correct: Tensor) -> Tensor:
    """Sum over slots of BCE(q_halt, the whole sequence is correct)."""
    return F.binary_cross_entropy_with_logits(q_halt_logits, seq_correct.to(q_halt_logits.dtype), reduction="sum")


def q_continue_loss(q_continue_logits: Tensor, target_q_continue: Tensor) -> Tensor:
    """Sum over slots of BCE(q_continue, HRM's bootstrapped target)."""
    return F.binary_cross_entropy_with_logits(q_continue_logits, target_q_continue, reduction="sum")


@torch.no_grad()
def correctness(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(is_correct [B, S] over labelled tokens, seq_correct [B], label counts [B]); argmax predictions."""
    labels = as_token_labels(logits, labels)
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    is_correct = mask & (logits.argmax(-1) == labels)
    # A row with no labels counts as correct for the halting target, as in official `ACTLossHead`.
    return is_correct, is_correct.sum(-1) == counts, counts


@torch.no_grad()
def act_metrics(
    logits: Tensor, labels: Tensor, q_halt_logits: Tensor, halted: Tensor, steps: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """(metric sums, seq_correct [B]). The sums run over the slots that halted this step and have at least one label;
    `count` is their number."""
    is_correct, seq_correct, counts = correctness(logits, labels)
    valid = halted & (counts > 0)
    token_accuracy = is_correct.float().sum(-1) / counts.clamp_min(1)
    metrics = {
        "count": valid.sum(),
        "accuracy": torch.where(valid, token_accuracy, 0).sum(),
        "exact_accuracy": (valid & seq_correct).sum(),
        "q_halt_accuracy": (valid & ((q_halt_logits >= 0) == seq_correct)).sum(),
        "steps": torch.where(valid, steps, 0).sum(),
    }
    return metrics, seq_correct


class StepResult(NamedTuple):
    """One supervision step with its loss. `outputs` holds the model outputs (logits with their graph), the argmax
    `preds` and, with labels in eval mode, each row's detached loss terms `lm_loss`, `q_halt_loss` (and
    `q_continue_loss`) [B], so rollouts can account for rows that stop at different steps."""

    carry: ACTCarry
    loss: Tensor | None  # sum over slots; None without labels
    metrics: dict[str, Tensor]  # sums over the slots that halted this step (see act_metrics); empty without labels
    outputs: dict[str, Tensor]
    all_halted: Tensor


class ACTLoss(nn.Module):
    """One supervision step with its loss: lm_loss + 0.5 * (q_halt_loss + q_continue_loss), all sums over slots."""

    def __init__(self, act: ACT, *, loss_type: LossType = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_FUNCTIONS)}, got {loss_type!r}")
        self.act = act
        self.loss_type = loss_type

    def initial_carry(self, batch: Batch) -> ACTCarry:
        return self.act.initial_carry(batch)

    def forward(self, carry: ACTCarry, batch: Batch, **act_kwargs) -> StepResult:
        """A batch without 'labels' (inference) gives no loss and no metrics."""
        carry, outputs = self.act(carry, batch, **act_kwargs)
        logits = outputs["logits"]
        outputs = dict(outputs, preds=logits.detach().argmax(-1))
        labels = carry.current_data.get("labels")
        if labels is None:
            return StepResult(carry, None, {}, outputs, carry.halted.all())

        metrics, seq_correct = act_metrics(logits, labels, outputs["q_halt_logits"], carry.halted, carry.steps)
        row_lm_loss = per_sequence_lm_loss(logits, labels, self.loss_type)
        lm_loss = row_lm_loss.sum()
        halt_loss = q_halt_loss(outputs["q_halt_logits"], seq_correct)
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = halt_loss.detach()
        loss = lm_loss + 0.5 * halt_loss
        if "target_q_continue" in outputs:
            continue_loss = q_continue_loss(outputs["q_continue_logits"], outputs["target_q_continue"])
            metrics["q_continue_loss"] = continue_loss.detach()
            loss = loss + 0.5 * continue_loss
        if not self.training:
            # Per-row terms for rollouts, whose rows stop at different steps; training reads only the sums above.
            with torch.no_grad():
                outputs["lm_loss"] = row_lm_loss.detach()
                outputs["q_halt_loss"] = F.binary_cross_entropy_with_logits(
                    outputs["q_halt_logits"], seq_correct.to(outputs["q_halt_logits"].dtype), reduction="none"
                )
                if "target_q_continue" in outputs:
                    outputs["q_continue_loss"] = F.binary_cross_entropy_with_logits(
                        outputs["q_continue_logits"], outputs["target_q_continue"], reduction="none"
                    )
        return StepResult(carry, loss, metrics, outputs, carry.halted.all())
