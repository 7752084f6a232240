"""The rollout: one batch driven through supervision steps from a fresh carry, with optional early exit.

This is the only loop over supervision steps outside training. Evaluation, depth sweeps, adaptive halting, traces and
the Hugging Face `forward` all consume it, so a number read at step k means the same thing everywhere.

The rollout, not the ACT wrapper, decides when an example stops: a row stops at `max_steps`, or earlier when one of
the exit rules fires, and then leaves the batch (the next step runs on the remaining rows only, so halted examples
cost nothing). The wrapper's own training-time halting (Q head plus exploration) never resets a running row here.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from hybrid.core.act import ACTCarry, Batch
from hybrid.core.losses import IGNORE_LABEL_ID, ACTLoss, StepResult, act_metrics


@dataclass(frozen=True)
class ExitRules:
    """When an example may stop before `max_steps`; with several rules, the first to fire. None disables a rule.

    q_halt_threshold: q_halt > threshold (TRM's rule at threshold 0).
    q_halt_vs_continue: HRM's rule, q_halt > q_continue.
    patience: the argmax prediction over attended positions unchanged for `patience` consecutive steps.
    """

    q_halt_threshold: float | None = None
    q_halt_vs_continue: bool = False
    patience: int | None = None

    def __post_init__(self):
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or None), got {self.patience}")

    @property
    def name(self) -> str:
        """A short label, e.g. 'q_halt>0.0 | patience=2'; 'fixed' without rules."""
        parts = []
        if self.q_halt_threshold is not None:
            parts.append(f"q_halt>{self.q_halt_threshold}")
        if self.q_halt_vs_continue:
            parts.append("q_halt>q_continue")
        if self.patience is not None:
            parts.append(f"patience={self.patience}")
        return " | ".join(parts) or "fixed"


FIXED_DEPTH = ExitRules()


@dataclass
class RolloutStep:
    """One supervision step of the rows still running."""

    step: int  # 1-based
    result: StepResult  # of the running rows (their carry, loss, metrics and outputs)
    rows: Tensor  # [b] the running rows' indices in the batch the rollout started with
    stop: Tensor  # [b] bool: the row stops after this step (an exit rule fired, or max_steps)

    def metric_sums(self, rows: Tensor | None = None) -> dict[str, Tensor]:
        """Metric and loss sums over `rows` (bool [b]; default: the rows that stop now), as `act_metrics` counts them:
        `count` rows with at least one label, exact / token / q_halt accuracy, steps, and every loss term."""
        rows = self.stop if rows is None else rows
        outputs, carry = self.result.outputs, self.result.carry
        sums, _ = act_metrics(outputs["logits"], carry.current_data["labels"], outputs["q_halt_logits"], rows, carry.steps)
        for key in ("lm_loss", "q_halt_loss", "q_continue_loss"):
            if key in outputs:
                sums[key] = torch.where(rows, outputs[key], 0).sum()
        return sums


def rollout(
    act_loss: ACTLoss, batch: Batch, *, max_steps: int, exit: ExitRules = FIXED_DEPTH, **step_kwargs
) -> Iterator[RolloutStep]:
    """Yield every supervision step of `batch` until each row has stopped. `step_kwargs` (H_cycles, L_cycles) go to
    the reasoner. Runs in the module's current mode: the caller chooses eval (research tools) or training (the HF
    forward, whose loss needs gradients)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    carry = act_loss.initial_carry(batch)
    rows = torch.arange(carry.steps.shape[0], device=carry.steps.device)
    last_preds, unchanged = None, None
    for step in range(1, max_steps + 1):
        result = act_loss(carry, batch, halt_max_steps=max_steps, **step_kwargs)
        carry, outputs = result.carry, result.outputs
        stop = carry.steps >= max_steps
        if exit.q_halt_threshold is not None:
            stop = stop | (outputs["q_halt_logits"] > exit.q_halt_threshold)
        if exit.q_halt_vs_continue:
            stop = stop | (outputs["q_halt_logits"] > outputs["q_continue_logits"])
        if exit.patience is not None:
            preds = _attended(outputs["preds"], carry.current_data)
            same = torch.zeros_like(stop) if last_preds is None else (preds == last_preds).flatten(1).all(-1)
            unchanged = torch.where(same, (0 if unchanged is None else unchanged) + 1, 0)
            stop = stop | (unchanged >= exit.patience)
            last_preds = preds
        yield RolloutStep(step, result, rows, stop)
        if step == max_steps or (exit != FIXED_DEPTH and bool(stop.all())):
            return
        # The rollout decides who stops: no row is reset and refilled by the wrapper inside one rollout.
        carry = replace(carry, halted=torch.zeros_like(carry.halted))
        if exit != FIXED_DEPTH:
            keep = ~stop
            carry, rows = _subset(carry, keep), rows[keep]
            last_preds = None if last_preds is None else last_preds[keep]
            unchanged = None if unchanged is None else unchanged[keep]
        batch = carry.current_data


def _subset(carry: ACTCarry, keep: Tensor) -> ACTCarry:
    return ACTCarry(
        inner=tuple(z[keep] for z in carry.inner),
        steps=carry.steps[keep],
        halted=carry.halted[keep],
        current_data={k: v[keep] for k, v in carry.current_data.items()},
    )


def _attended(preds: Tensor, data: Batch) -> Tensor:
    """Predictions with unattended (padding) positions blanked, so only real tokens decide "unchanged"."""
    mask = data.get("attention_mask")
    if mask is None or mask.shape != preds.shape:
        return preds
    return torch.where(mask.bool(), preds, IGNORE_LABEL_ID)


__all__ = ["FIXED_DEPTH", "ExitRules", "RolloutStep", "rollout"]
