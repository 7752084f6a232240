"""Evaluation of any reasoner: fresh carry per batch, a fixed number of supervision steps, metrics summed over real
rows and reduced across ranks, then divided by `count` (spec 2.2 and Errata 5). Used by the training loop, by
`recipes/evaluate.py` and by the research tools, so they all report the same numbers."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch import Tensor

from hybrid.core.losses import ACTLossHead


def reduce_sums(sums: dict[str, Tensor], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum metric tensors across ranks (one collective, whatever the keys) and return plain floats."""
    keys = sorted(sums)
    if not keys:
        return {}
    vec = torch.stack([sums[k].detach().double().to(device) for k in keys])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
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


@torch.no_grad()
def evaluate(
    loss_head: ACTLossHead,
    batches: Iterable[tuple[dict[str, Tensor], Tensor]],
    *,
    halt_max_steps: int,
    device: torch.device | str = "cpu",
    evaluators: list = (),
    max_examples: int | None = None,
    world_size: int = 1,
    on_step: Callable[[int, dict[str, Tensor], dict[str, Tensor], Tensor], None] | None = None,
    **step_kwargs,
) -> dict[str, float]:
    """Run every batch for exactly `halt_max_steps` supervision steps and return the normalised metrics.

    `step_kwargs` (e.g. H_cycles, L_cycles) go to the reasoner; `on_step(step, batch, outputs, mask)` sees every
    intermediate step (traces, depth sweeps)."""
    was_training = loss_head.training
    loss_head.eval()
    sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
    seen = 0
    try:
        for batch, mask in batches:
            if max_examples is not None and seen >= max_examples:
                break
            seen += int(mask.sum()) * world_size
            batch = {k: v.to(device) for k, v in batch.items()}
            carry = loss_head.initial_carry(batch)
            for step in range(1, halt_max_steps + 1):
                carry, _, metric_sums, outputs, _ = loss_head(
                    carry, batch, halt_max_steps=halt_max_steps, **step_kwargs
                )
                if on_step is not None:
                    on_step(step, carry.current_data, outputs, mask)
            for key, value in metric_sums.items():
                sums[key] = sums[key] + value.double().cpu()
            for evaluator in evaluators:
                evaluator.update(batch, outputs, mask)
    finally:
        loss_head.train(was_training)
    result = normalise(reduce_sums(dict(sums), device))
    for evaluator in evaluators:
        result.update(evaluator.result())
    return result
