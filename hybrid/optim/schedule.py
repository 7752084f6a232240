"""Learning-rate schedule shared by both optimisers (official pretrain.py, `cosine_schedule_with_warmup_lr_lambda`):
linear warm-up, then cosine decay to a floor."""

import math


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The lr for optimiser step `step`, counted from 1 for the first update.

    Warm-up (step < warmup_steps): base_lr * step / warmup_steps.
    After: base_lr * (r + (1 - r) * 0.5 * (1 + cos(pi * progress))), progress = (step - warmup) / (total - warmup),
    with r = min_ratio; r = 1 (the official default) keeps the lr constant after warm-up.
    Steps past `total_steps` take no optimiser step in the official loop, so they are rejected here.
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"lr_at: need 0 <= warmup_steps <= total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    if not 1 <= step <= total_steps:
        raise ValueError(f"lr_at: step must be in [1, total_steps={total_steps}] (steps count from 1), got {step}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"lr_at: min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
