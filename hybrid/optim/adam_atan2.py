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

from dataclasses import dataclass

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class _FlatBuffers:
    """One bucket's moments in two flat tensors (the per-parameter state entries are views into them), and two
    persistent work buffers of the compute dtype. Reusing the work buffers matters on CPU: a fresh 28 MB temporary
    per op costs more in page faults than the arithmetic (bench/bench_optim.py)."""

    sizes: list[int]
    exp_avg: Tensor
    exp_avg_sq: Tensor
    grad: Tensor
    update: Tensor

    def views(self, flat: Tensor, like: list[Tensor]) -> list[Tensor]:
        return [piece.view_as(p) for piece, p in zip(flat.split(self.sizes), like)]


class AdamATan2(torch.optim.Optimizer):
    """The official AdamATan2 update on flat buffers: each element-wise op of the step runs once over all parameters
    of a (device, dtype, step count) bucket, rather than once per tensor.

    Built with lr = 0: the training loop writes each step's lr into `param_groups[i]["lr"]` before `step()`.
    Per-parameter state: `step` (int, optimiser steps this parameter has taken), `exp_avg` (m), `exp_avg_sq` (v); the
    moments are views into the bucket's flat buffers, so `state_dict()` keeps the per-parameter layout of
    `torch.optim` and loads into either implementation. Memory: two work buffers the size of the bucket are kept
    between steps (the per-tensor update allocated three such temporaries on every step).
    """

    def __init__(self, params, lr: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1):
        if lr < 0.0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamATan2: betas must be two numbers in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        self._flat: dict[tuple[int, ...], _FlatBuffers] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            # A bucket shares device, dtype and step count (so one pair of bias corrections); normally there is one.
            buckets: dict[tuple, list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("AdamATan2 does not support sparse gradients; use SparseSignSGD for the puzzle table")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                state["step"] += 1
                buckets.setdefault((p.device, p.dtype, state["step"]), []).append(p)

            for (_, _, t), params in buckets.items():
                _atan2_update(params, self._buffers_for(params), t,
                              lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"])
        return loss

    def _buffers_for(self, params: list[Tensor]) -> _FlatBuffers:
        """The bucket's flat buffers, rebuilt from the per-parameter state when the state entries are not views into
        them: the first step, after `load_state_dict`, or when the bucket's members changed."""
        key = tuple(id(p) for p in params)
        flat = self._flat.get(key)
        if flat is not None and self._state_is_flat(params, flat):
            return flat
        states = [self.state[p] for p in params]
        # The moments are kept in the parameters' dtype, so half-precision runs store half-precision moments.
        exp_avg = torch.cat([s["exp_avg"].reshape(-1) if "exp_avg" in s else p.new_zeros(p.numel())
                             for s, p in zip(states, params)])
        exp_avg_sq = torch.cat([s["exp_avg_sq"].reshape(-1) if "exp_avg_sq" in s else p.new_zeros(p.numel())
                                for s, p in zip(states, params)])
        compute = torch.float32 if exp_avg.dtype in _LOW_PRECISION else exp_avg.dtype
        flat = _FlatBuffers(
            sizes=[p.numel() for p in params],
            exp_avg=exp_avg,
            exp_avg_sq=exp_avg_sq,
            grad=torch.empty_like(exp_avg, dtype=compute),
            update=torch.empty_like(exp_avg, dtype=compute),
        )
        for s, m, v in zip(states, flat.views(exp_avg, params), flat.views(exp_avg_sq, params)):
            s["exp_avg"], s["exp_avg_sq"] = m, v
        # Buffers of an earlier bucket holding any of these parameters no longer back their state.
        self._flat = {k: f for k, f in self._flat.items() if not set(k) & set(key)}
        self._flat[key] = flat
        return flat

    def _state_is_flat(self, params: list[Tensor], flat: _FlatBuffers) -> bool:
        offset = 0
        for p, n in zip(params, flat.sizes):
            s = self.state[p]
            for name, buffer in (("exp_avg", flat.exp_avg), ("exp_avg_sq", flat.exp_avg_sq)):
                t = s.get(name)
                if t is None or t.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr():
                    return False
                if t.storage_offset() != buffer.storage_offset() + offset:
                    return False
            offset += n
        return True


def _atan2_update(params: list[Tensor], flat: _FlatBuffers, t: int, *, lr: float, betas: tuple[float, float],
                  weight_decay: float) -> None:
    """One in-place AdamATan2 step of a bucket at step t (already incremented). The element-wise ops and their order
    are those of the official per-tensor update, so results agree to float32 rounding (vectorised and scalar atan2
    may differ in the last bit)."""
    b1, b2 = betas
    g, u = flat.grad, flat.update
    torch._foreach_copy_(flat.views(g, params), [p.grad for p in params])
    m, v = flat.exp_avg, flat.exp_avg_sq
    low = m.dtype in _LOW_PRECISION
    if low:
        m, v = m.float(), v.float()
    m.lerp_(g, 1.0 - b1)
    v.lerp_(g.mul_(g), 1.0 - b2)
    torch.div(m, 1.0 - b1**t, out=u)
    torch.sqrt(v, out=g).div_((1.0 - b2**t) ** 0.5)
    torch.atan2(u, g, out=u)
    if low:
        flat.exp_avg.copy_(m)
        flat.exp_avg_sq.copy_(v)

    work = [p.float() for p in params] if low else params
    torch._foreach_mul_(work, 1.0 - lr * weight_decay)
    torch._foreach_add_(work, flat.views(u, params), alpha=-lr)
    if low:
        torch._foreach_copy_(params, work)
