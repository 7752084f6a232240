"""Evaluation of any reasoner: each batch rolled out from a fresh carry (`hybrid.core.rollout`), every example's
metrics read at the step where it stops, summed over real rows, reduced across ranks and divided by `count` (the
official evaluation in pretrain.py: metrics over halted examples with labels). Used by the training loop,
`recipes/evaluate.py` and the research tools, so they all report the same numbers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from hybrid.core.act import Batch
from hybrid.core.losses import ACTLoss
from hybrid.core.rollout import FIXED_DEPTH, ExitRules, RolloutStep, rollout
from hybrid.eval.compute import CoreFlops, cycle_counts, per_example_compute


def reduce_sums(sums: dict[str, Tensor], device: torch.device | str = "cpu", *, agree_on_keys: bool = False
                ) -> dict[str, float]:
    """Sum metric tensors across ranks (one collective, whatever the keys) and return plain floats.

    agree_on_keys: the ranks first exchange their keys (one more collective), so that a rank whose share of a small
    held-out set is empty, and so has no keys, still joins the sum instead of leaving the others waiting
    (evaluation; every training rank always holds rows)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    keys = sorted(sums)
    if distributed and agree_on_keys:
        every_rank: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every_rank, keys)
        keys = sorted(set().union(*every_rank))
    if not keys:
        return {}
    zero = torch.zeros((), dtype=torch.float64)
    vec = torch.stack([sums.get(k, zero).detach().double().to(device) for k in keys])
    if distributed:
        torch.distributed.all_reduce(vec)
    return dict(zip(keys, vec.tolist()))


def normalise(totals: dict[str, float], *, loss_divisor: float | None = None) -> dict[str, float]:
    """Metrics over `count`; losses over `loss_divisor` when given (training: the global batch)."""
    count = max(totals.get("count", 0.0), 1.0)
    out = {"count": totals.get("count", 0.0)}
    for key, value in totals.items():
        if key != "count":
            out[key] = value / (loss_divisor if (loss_divisor and key.endswith("loss")) else count)
    return out


def add_sums(total: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
    """Accumulate metric sums in float64 on the CPU."""
    for key, value in sums.items():
        total[key] = total.get(key, torch.zeros((), dtype=torch.float64)) + value.detach().double().cpu()


def take_examples(
    batches: Iterable[tuple[Batch, Tensor]], max_examples: int | None, world_size: int
) -> Iterator[tuple[Batch, Tensor]]:
    """Batches until `max_examples` (counted over all ranks) have been seen."""
    seen = 0
    for batch, mask in batches:
        if max_examples is not None and seen >= max_examples:
            return
        seen += int(mask.sum()) * world_size
        yield batch, mask


@torch.no_grad()
def evaluate(
    act_loss: ACTLoss,
    batches: Iterable[tuple[Batch, Tensor]],
    *,
    halt_max_steps: int,
    exit: ExitRules = FIXED_DEPTH,
    device: torch.device | str = "cpu",
    evaluators: list = (),
    max_examples: int | None = None,
    world_size: int = 1,
    count_compute: bool = False,
    **step_kwargs,
) -> dict[str, float]:
    """Roll every batch out for at most `halt_max_steps` supervision steps and return the normalised metrics.

    exit: early-exit rules; examples that stop leave the batch. `steps` is then the mean steps taken and
        `halted_early` the fraction stopped before `halt_max_steps`.
    count_compute: add `net_calls` and `flops` per example spent in the recursive core (None without a core).
    `step_kwargs` (H_cycles, L_cycles) go to the reasoner. Padding rows (mask False) are dropped before the first step.
    Evaluators see each example's outputs at the step where it stopped."""
    T, n = cycle_counts(act_loss, step_kwargs.get("H_cycles"), step_kwargs.get("L_cycles"))
    was_training = act_loss.training
    act_loss.eval()
    sums: dict[str, Tensor] = {}
    flops = CoreFlops(act_loss) if count_compute else None
    try:
        with flops if flops is not None else contextlib.nullcontext():
            for batch, mask in take_examples(batches, max_examples, world_size):
                keep = mask.to(device)
                batch = {k: v.to(device)[keep] for k, v in batch.items()}
                if not bool(keep.any()):
                    continue
                final: dict[str, Tensor] = {}
                for step in rollout(act_loss, batch, max_steps=halt_max_steps, exit=exit, **step_kwargs):
                    early = step.stop & (step.result.carry.steps < halt_max_steps)
                    add_sums(sums, {**step.metric_sums(), "halted_early": early.sum()})
                    if evaluators:
                        _collect(final, step)
                for evaluator in evaluators:
                    evaluator.update(batch, final, torch.ones(keep.sum(), dtype=torch.bool, device=device))
    finally:
        act_loss.train(was_training)
    if flops is not None:
        sums["flops"] = torch.tensor(float(flops.flops), dtype=torch.float64)
    result = normalise(reduce_sums(sums, device, agree_on_keys=True))
    if count_compute:
        result.update(per_example_compute(T, n, result["steps"], result["flops"]))
    for evaluator in evaluators:
        result.update(evaluator.result())
    return result


def _collect(final: dict[str, Tensor], step: RolloutStep) -> None:
    """Write the stopping rows' outputs into full-batch tensors (allocated at the first step)."""
    outputs = step.result.outputs
    if not final:
        size = step.rows.shape[0]
        final.update({k: v.new_zeros((size, *v.shape[1:])) for k, v in outputs.items() if v.ndim >= 1})
    where = step.rows[step.stop]
    for key in final:
        final[key][where] = outputs[key][step.stop]


__all__ = ["add_sums", "evaluate", "normalise", "reduce_sums", "take_examples"]
