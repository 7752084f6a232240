"""Research over depth: sweeps of supervision steps and inner recursion counts, and adaptive halting at inference.

Both work on any reasoner driven by `ACTLoss` (pure grid models and hybrid HF models alike) and read the one
rollout of `hybrid.core.rollout`:

- `depth_sweep` runs ONE rollout of max(steps) supervision steps per batch and per (T, n) setting, reading metrics
  after every requested step. Metrics at a step equal those of `hybrid.eval.loop.evaluate` run with that many steps
  (the latents do not depend on the step limit at evaluation), plus the halting head's calibration and the compute.
- `adaptive_evaluate` is `evaluate` with early-exit rules: each example leaves the batch once the halting head says
  so (q_halt > threshold) or once its prediction has not changed for `patience` steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from hybrid.core.act import Batch
from hybrid.core.losses import ACTLoss, correctness
from hybrid.core.rollout import ExitRules, RolloutStep, rollout
from hybrid.eval.compute import CoreFlops, cycle_counts, per_example_compute
from hybrid.eval.loop import add_sums, evaluate, normalise, reduce_sums, take_examples

CALIBRATION_BINS = 10


def step_sums(step: RolloutStep) -> dict[str, Tensor]:
    """Metric sums over every running row of a step (as `evaluate` counts them) plus the halting head's calibration:
    Brier score and the per-bin confidence / correctness sums of sigmoid(q_halt) that make the expected calibration
    error."""
    every_row = torch.ones_like(step.stop)
    sums = step.metric_sums(every_row)
    outputs, labels = step.result.outputs, step.result.carry.current_data["labels"]
    _, seq_correct, counts = correctness(outputs["logits"], labels)
    valid = counts > 0
    confidence = torch.sigmoid(outputs["q_halt_logits"].double())
    target = seq_correct.double()
    sums["brier"] = torch.where(valid, (confidence - target) ** 2, 0).sum()
    bins = (confidence * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
    for b in range(CALIBRATION_BINS):
        in_bin = valid & (bins == b)
        sums[f"calib_{b}_confidence"] = torch.where(in_bin, confidence, 0).sum()
        sums[f"calib_{b}_correct"] = torch.where(in_bin, target, 0).sum()
    return sums


def finish_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Reduced sums -> metrics over `count` (as `evaluate`), with `ece` from the calibration bins."""
    count = max(totals.get("count", 0.0), 1.0)
    bins = {k: v for k, v in totals.items() if k.startswith("calib_")}
    result = normalise({k: v for k, v in totals.items() if k not in bins})
    result["ece"] = (
        sum(abs(bins[f"calib_{b}_confidence"] - bins[f"calib_{b}_correct"]) for b in range(CALIBRATION_BINS)) / count
    )
    return result


@torch.no_grad()
def depth_sweep(
    act_loss: ACTLoss,
    batches: Iterable[tuple[Batch, Tensor]],
    *,
    steps: Sequence[int],
    cycles: Sequence[tuple[int | None, int | None]] = ((None, None),),
    device: torch.device | str = "cpu",
    max_examples: int | None = None,
    world_size: int = 1,
) -> list[dict[str, float]]:
    """One row per ((T, n), step): exact_accuracy, accuracy (token), q_halt_accuracy, brier, ece, losses, count,
    net_calls and flops per example. The batches are held in memory and replayed for every (T, n)."""
    steps = sorted(set(steps))
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive supervision step counts, got {steps}")
    batches = [(batch, mask) for batch, mask in take_examples(batches, max_examples, world_size)]
    was_training = act_loss.training
    act_loss.eval()
    rows = []
    try:
        for H_cycles, L_cycles in cycles:
            T, n = cycle_counts(act_loss, H_cycles, L_cycles)
            kwargs = {k: v for k, v in (("H_cycles", H_cycles), ("L_cycles", L_cycles)) if v is not None}
            per_step: dict[int, dict[str, Tensor]] = {s: {} for s in steps}
            flops, examples = 0, 0
            for batch, mask in batches:
                keep = mask.to(device)
                batch = {k: v.to(device)[keep] for k, v in batch.items()}
                steps_of_batch = rollout(act_loss, batch, max_steps=max(steps), **kwargs)
                with CoreFlops(act_loss) as counter:  # the compute of one step, measured on the first
                    first = next(steps_of_batch)
                flops, examples = flops + counter.flops, examples + first.rows.shape[0]
                for step in (first, *steps_of_batch):
                    if step.step in per_step:
                        add_sums(per_step[step.step], step_sums(step))
            for step in steps:
                metrics = finish_metrics(reduce_sums(per_step[step], device, agree_on_keys=True))
                compute = per_example_compute(T, n, step, step * flops / max(examples, 1))
                rows.append({"H_cycles": T, "L_cycles": n, **metrics, "steps": step, **compute})
    finally:
        act_loss.train(was_training)
    return rows


def adaptive_evaluate(
    act_loss: ACTLoss,
    batches: Iterable[tuple[Batch, Tensor]],
    *,
    max_steps: int,
    threshold: float | None = None,
    patience: int | None = None,
    device: torch.device | str = "cpu",
    max_examples: int | None = None,
    world_size: int = 1,
    **step_kwargs,
) -> dict[str, float]:
    """Evaluate with per-example early exit; every example stops at `max_steps` at the latest.

    threshold: halt when q_halt > threshold (None: the halting head is not used).
    patience: halt when the argmax prediction (over attended positions) has not changed for `patience` consecutive
        steps (None: not used). Both given: whichever comes first.
    Returns the metrics of `evaluate` read at each example's own halting step (`steps` is the mean steps run),
    `halted_early` (fraction stopped before max_steps), and `net_calls` / `flops` per example actually spent."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return evaluate(
        act_loss,
        batches,
        halt_max_steps=max_steps,
        exit=ExitRules(q_halt_threshold=threshold, patience=patience),
        device=device,
        max_examples=max_examples,
        world_size=world_size,
        count_compute=True,
        **step_kwargs,
    )


__all__ = ["adaptive_evaluate", "depth_sweep", "finish_metrics", "step_sums"]
