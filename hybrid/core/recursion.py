"""Recursive cores: one supervision step of latent refinement, independent of where the input embedding x came from.

Paper names: `H_cycles` is T (outer cycles per supervision step) and `L_cycles` is n (z_L updates per cycle).
Each core maps (carry, x) to new, non-detached latents; the caller detaches what it carries to the next step.
The first latent of every carry is the one the output heads read (z_H, or z for the single-latent variant).
"""

import torch
from torch import Tensor, nn

from hybrid.core.layers import ReasoningModule, RotaryEmbedding, trunc_normal_init_

Carry = tuple[Tensor, ...]


class _RecursiveCore(nn.Module):
    """Shared state handling: fixed initial latents (buffers, never trained), reset, and cycle-count overrides."""

    # Name of each carried latent's init vector, in carry order.
    init_names: tuple[str, ...] = ()
    # The reasoning networks a core is built from, passed in as keyword arguments (components in, not looked up).
    network_names: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        hidden_size: int,
        H_cycles: int,
        L_cycles: int,
        forward_dtype: torch.dtype = torch.float32,
        rotary: RotaryEmbedding | None = None,
        **networks: ReasoningModule,
    ):
        super().__init__()
        if set(networks) != set(self.network_names):
            raise TypeError(f"{type(self).__name__} takes the networks {self.network_names}, got {tuple(networks)}")
        for name in self.network_names:
            setattr(self, name, networks[name])
        self.H_cycles, self.L_cycles = self._checked_cycles(H_cycles, L_cycles)
        self.hidden_size = hidden_size
        self.rotary = rotary
        for name in self.init_names:
            # Sampled directly in the forward dtype, as official trm.py does for `H_init` / `L_init`.
            init = trunc_normal_init_(torch.empty(hidden_size, dtype=forward_dtype), std=1.0)
            self.register_buffer(name, init, persistent=True)

    @staticmethod
    def _checked_cycles(H_cycles: int, L_cycles: int) -> tuple[int, int]:
        if H_cycles < 1 or L_cycles < 1:
            raise ValueError(f"H_cycles (T) and L_cycles (n) must be >= 1, got H_cycles={H_cycles}, L_cycles={L_cycles}")
        return H_cycles, L_cycles

    def _inits(self) -> list[Tensor]:
        return [getattr(self, name) for name in self.init_names]

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None) -> Carry:
        """The initial latents of every slot: each init vector broadcast to [batch_size, seq_len, D]."""
        return tuple(
            init.to(device).expand(batch_size, seq_len, self.hidden_size).clone() for init in self._inits()
        )

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        """Slots with reset[b] = True go back to the initial latents; the others keep theirs."""
        flag = reset.view(-1, 1, 1)
        return tuple(torch.where(flag, init, z) for init, z in zip(self._inits(), carry))

    def _prepare(
        self, carry: Carry, x: Tensor, H_cycles: int | None, L_cycles: int | None
    ) -> tuple[int, int, tuple[Tensor, Tensor] | None]:
        if len(carry) != len(self.init_names):
            raise ValueError(f"{type(self).__name__} carries {len(self.init_names)} latents, got a carry of {len(carry)}")
        if carry[0].shape != x.shape:
            raise ValueError(f"carry latents have shape {tuple(carry[0].shape)} but x has shape {tuple(x.shape)}")
        T, n = self._checked_cycles(
            self.H_cycles if H_cycles is None else H_cycles, self.L_cycles if L_cycles is None else L_cycles
        )
        rope = None if self.rotary is None else self.rotary(x.shape[1])
        return T, n, rope


class _TwoLatentCore(_RecursiveCore):
    """z_H and z_L, updated by f_L and f_H: a cycle is n updates z_L <- f_L(z_L, z_H + x) followed by one
    z_H <- f_H(z_H, z_L); a supervision step runs T cycles.

    The gradient flows through the whole last cycle (TRM, arXiv 2510.04871 section 4.1), or with `one_step_gradient`
    only through the last f_L call and the last f_H call (HRM's "1-step gradient", arXiv 2506.21734 section 3); every
    earlier call runs without gradient. TRM's Table 1 crosses the two with one or two networks.
    """

    init_names = ("H_init", "L_init")

    def __init__(self, *, one_step_gradient: bool, **kwargs):
        super().__init__(**kwargs)
        self.one_step_gradient = one_step_gradient

    def _L_updates(self, z_L, z_H, x, n, rope, attn_mask):
        for _ in range(n):
            z_L = self.f_L(z_L, z_H + x, rope, attn_mask)
        return z_L

    def forward(
        self,
        carry: Carry,
        x: Tensor,
        attn_mask: Tensor | None = None,
        *,
        H_cycles: int | None = None,
        L_cycles: int | None = None,
    ) -> Carry:
        T, n, rope = self._prepare(carry, x, H_cycles, L_cycles)
        z_H, z_L = carry
        n_grad = 1 if self.one_step_gradient else n  # z_L updates of the last cycle that run with gradient
        with torch.no_grad():
            for _ in range(T - 1):
                z_L = self._L_updates(z_L, z_H, x, n, rope, attn_mask)
                z_H = self.f_H(z_H, z_L, rope, attn_mask)
            z_L = self._L_updates(z_L, z_H, x, n - n_grad, rope, attn_mask)
        z_L = self._L_updates(z_L, z_H, x, n_grad, rope, attn_mask)
        return self.f_H(z_H, z_L, rope, attn_mask), z_L


class TRMCore(_TwoLatentCore):
    """TRM (official trm.py, `TinyRecursiveReasoningModel_ACTV1_Inner.forward`): one network f is both f_L and f_H;
    T-1 cycles without gradient, then one cycle with gradient. `one_step_gradient`: TRM's Table 1 row "w/ 1-step
    gradient" (the same network under HRM's gradient)."""

    network_names = ("net",)

    def __init__(self, *, one_step_gradient: bool = False, **kwargs):
        super().__init__(one_step_gradient=one_step_gradient, **kwargs)

    @property
    def f_L(self) -> ReasoningModule:
        return self.net

    f_H = f_L


class HRMCore(_TwoLatentCore):
    """HRM (official hrm.py, `HierarchicalReasoningModel_ACTV1_Inner.forward`): separate networks f_H (`H_net`) and
    f_L (`L_net`) and the 1-step gradient. For T = n = 2 the order is L, L, H, L (no grad), L, H (grad).

    `one_step_gradient=False` is TRM's Table 1 row "w/ separate f_H, f_L": two networks under TRM's gradient."""

    network_names = ("H_net", "L_net")

    def __init__(self, *, one_step_gradient: bool = True, **kwargs):
        super().__init__(one_step_gradient=one_step_gradient, **kwargs)

    @property
    def f_L(self) -> ReasoningModule:
        return self.L_net

    @property
    def f_H(self) -> ReasoningModule:
        return self.H_net


class SingleZCore(_RecursiveCore):
    """TRM's single-latent ablation (official trm_singlez.py): only z is carried.

    A cycle is n updates z <- f(z + x) followed by one z <- f(z); T-1 cycles without gradient, the last with it.
    """

    init_names = ("L_init",)
    network_names = ("net",)

    def _cycle(self, z, x, n, rope, attn_mask):
        for _ in range(n):
            z = self.net(z, x, rope, attn_mask)
        return self.net(z, None, rope, attn_mask)

    def forward(
        self,
        carry: Carry,
        x: Tensor,
        attn_mask: Tensor | None = None,
        *,
        H_cycles: int | None = None,
        L_cycles: int | None = None,
    ) -> Carry:
        T, n, rope = self._prepare(carry, x, H_cycles, L_cycles)
        (z,) = carry
        with torch.no_grad():
            for _ in range(T - 1):
                z = self._cycle(z, x, n, rope, attn_mask)
        return (self._cycle(z, x, n, rope, attn_mask),)
