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


class TRMCore(_RecursiveCore):
    """TRM (official trm.py, `TinyRecursiveReasoningModel_ACTV1_Inner.forward`): one network for both updates; T-1
    cycles without gradient, then one cycle with gradient.

    A cycle is n updates z_L <- f(z_L, z_H + x) followed by one z_H <- f(z_H, z_L).
    """

    init_names = ("H_init", "L_init")
    network_names = ("net",)

    def _cycle(self, z_H, z_L, x, n, rope, attn_mask):
        for _ in range(n):
            z_L = self.net(z_L, z_H + x, rope, attn_mask)
        z_H = self.net(z_H, z_L, rope, attn_mask)
        return z_H, z_L

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
        with torch.no_grad():
            for _ in range(T - 1):
                z_H, z_L = self._cycle(z_H, z_L, x, n, rope, attn_mask)
        return self._cycle(z_H, z_L, x, n, rope, attn_mask)


class HRMCore(_RecursiveCore):
    """HRM (official hrm.py, `HierarchicalReasoningModel_ACTV1_Inner.forward`): separate L and H networks; the
    "1-step gradient" flows only through the last L and H calls.

    Without gradient: T cycles of n L-updates and one H-update, minus the last L-update and the last H-update, which
    then run with gradient. For T = n = 2 the order is L, L, H, L (no grad), L, H (grad).
    """

    init_names = ("H_init", "L_init")
    network_names = ("H_net", "L_net")

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
        with torch.no_grad():
            for h in range(T):
                last = h == T - 1
                for _ in range(n - 1 if last else n):
                    z_L = self.L_net(z_L, z_H + x, rope, attn_mask)
                if not last:
                    z_H = self.H_net(z_H, z_L, rope, attn_mask)
        z_L = self.L_net(z_L, z_H + x, rope, attn_mask)
        z_H = self.H_net(z_H, z_L, rope, attn_mask)
        return z_H, z_L


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
