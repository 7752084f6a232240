"""AdamATan2: Adam with the ratio m/sqrt(v) replaced by atan2(m, sqrt(v)), as used by the official TRM/HRM code.

Per element, at step t (counted from 1), for decay wd, betas (b1, b2) and learning rate lr:

    p <- p * (1 - lr*wd)                                        decoupled decay, applied first
    m <- lerp(m, g, 1 - b1)
    v <- lerp(v, g*g, 1 - b2)
    p <- p - lr * atan2(m / (1 - b1^t), sqrt(v) / sqrt(1 - b2^t))

atan2 is bounded by pi/2 and defined at (0, 0), so there is no epsilon. The first bias correction scales m *inside*
atan2; lr outside is the plain scheduled lr. Half-precision parameters keep half-precision moments (like the official
kernel) but every step is computed in float32.
"""

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class AdamATan2(torch.optim.Optimizer):
    """The official AdamATan2 update, vectorised with `torch._foreach_*` ops.

    Built with lr = 0: the training loop writes each step's lr into `param_groups[i]["lr"]` before `step()`.
    Per-parameter state: `step` (int, optimiser steps this parameter has taken), `exp_avg` (m), `exp_avg_sq` (v).
    """

    def __init__(self, params, lr: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1):
        if lr < 0.0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamATan2: betas must be two numbers in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            # foreach ops need one device and dtype per call, so the group is split by (device, dtype).
            buckets: dict[tuple, tuple[list[Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("AdamATan2 does not support sparse gradients; use SparseSignSGD for the puzzle table")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                bucket = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for lst, item in zip(bucket, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    lst.append(item)

            for (_, dtype), (params, grads, exp_avgs, exp_avg_sqs, steps) in buckets.items():
                if dtype in _LOW_PRECISION:
                    work = [[t.float() for t in lst] for lst in (params, grads, exp_avgs, exp_avg_sqs)]
                    _atan2_update(*work, steps, lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"])
                    for stored, computed in zip((params, exp_avgs, exp_avg_sqs), (work[0], work[2], work[3])):
                        torch._foreach_copy_(stored, computed)
                else:
                    _atan2_update(params, grads, exp_avgs, exp_avg_sqs, steps,
                                  lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"])
        return loss


def _atan2_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[int], *, lr: float, betas: tuple[float, float], weight_decay: float) -> None:
    """One in-place AdamATan2 step on same-device, same-dtype tensor lists (`steps` already incremented)."""
    b1, b2 = betas
    torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1.0 - b2)

    m_hat = torch._foreach_div(exp_avgs, [1.0 - b1**t for t in steps])
    v_hat_sqrt = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(v_hat_sqrt, [(1.0 - b2**t) ** 0.5 for t in steps])
    # PyTorch has no _foreach_atan2, and atan(m/sqrt(v)) is neither bit-equal nor defined at 0/0 (never-used embedding
    # rows), so this one op runs per tensor: one kernel each, as the CPU foreach ops do internally.
    for num, den in zip(m_hat, v_hat_sqrt):
        torch.atan2(num, den, out=num)
    torch._foreach_add_(params, m_hat, alpha=-lr)
