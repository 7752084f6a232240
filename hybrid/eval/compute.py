"""Compute per example: network calls of the recursive core (steps x T x (n + 1) for TRM, HRM and single-z) and the
matmul FLOPs of those calls, measured with torch's FLOP counter on the core (attention included)."""

from __future__ import annotations

from typing import Self

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore

RECURSIVE_CORES = (TRMCore, HRMCore, SingleZCore)


def recursive_core(module: nn.Module) -> nn.Module | None:
    """The recursive core (TRM, HRM or single-z) inside `module`; None for a non-recursive baseline core."""
    cores = [m for m in module.modules() if isinstance(m, RECURSIVE_CORES)]
    if len(cores) > 1:
        raise ValueError(f"expected at most one recursive core (TRM/HRM/single-z) in the model, found {len(cores)}")
    return cores[0] if cores else None


def cycle_counts(model: nn.Module, H_cycles: int | None = None, L_cycles: int | None = None) -> tuple[int | None, int | None]:
    """(T, n) a step runs with: the overrides, else the core's own; (None, None) for a model without a recursive
    core."""
    core = recursive_core(model)
    if core is None:
        if H_cycles is not None or L_cycles is not None:
            raise ValueError("the model has no recursive core, so H_cycles / L_cycles cannot be overridden")
        return None, None
    T = core.H_cycles if H_cycles is None else H_cycles
    n = core.L_cycles if L_cycles is None else L_cycles
    if T < 1 or n < 1:
        raise ValueError(f"H_cycles (T) and L_cycles (n) must be >= 1, got T={T}, n={n}")
    return T, n


def per_example_compute(T: int | None, n: int | None, steps: float, flops: float) -> dict[str, float | None]:
    """T * (n + 1) network calls per supervision step for every core; None for a model without a recursive core."""
    if T is None:
        return {"net_calls": None, "flops": None}
    return {"net_calls": steps * T * (n + 1), "flops": flops}


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # torch's counter has no formula for the fused CPU kernel: QK^T and AV, 2 FLOPs per multiply-add each.
    batch, heads, q_len, head_dim = query
    return 4 * batch * heads * q_len * key[-2] * head_dim


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, with the fused CPU attention kernel counted too."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)


class CoreFlops:
    """Context manager counting the matmul FLOPs spent inside the recursive core while it is active (none without
    a core)."""

    def __init__(self, model: nn.Module):
        self.core = recursive_core(model)
        self.counter = flop_counter()
        self.flops = 0

    def __enter__(self) -> Self:
        core = self.core
        self._hooks = (
            []
            if core is None
            else [core.register_forward_pre_hook(self._start), core.register_forward_hook(self._stop)]
        )
        return self

    def _start(self, *_) -> None:  # a pre-hook's return value would replace the core's arguments
        self.counter.__enter__()

    def _stop(self, *_) -> None:
        self.counter.__exit__(None, None, None)
        self.flops += self.counter.get_total_flops()

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()


__all__ = ["CoreFlops", "RECURSIVE_CORES", "cycle_counts", "flop_counter", "per_example_compute", "recursive_core"]
