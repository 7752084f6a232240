"""Deep supervision with adaptive halting: the persistent slot batch of the official code
(trm.py / hrm.py, `*_ACTV1.forward`; pretrain.py, `train_batch`), not the per-minibatch loop the papers describe.

A training carry is created once and lives across loader passes: every call advances each slot by one supervision
step, and only slots that halted on the previous call are reset and refilled with the new batch's rows (the new rows
of running slots are discarded). Evaluation uses a fresh carry per batch and always runs `halt_max_steps` steps.
"""

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from hybrid.core.recursion import Carry

Batch = dict[str, Tensor]


@dataclass
class ReasonerOutput:
    """One supervision step of a reasoner."""

    carry: Carry  # detached latents for the next step
    logits: Tensor  # [B, S, V]
    q_halt_logits: Tensor  # [B], float32
    q_continue_logits: Tensor  # [B], float32
    z: Carry  # the same latents before detaching, for traces


class Reasoner(Protocol):
    def empty_carry(self, batch: Batch) -> Carry: ...

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry: ...

    def forward(self, carry: Carry, batch: Batch) -> ReasonerOutput: ...


@dataclass
class ACTCarry:
    inner: Carry  # the reasoner's latents per slot
    steps: Tensor  # [B] int32, supervision steps taken by each slot's current example
    halted: Tensor  # [B] bool, True where the slot is reset and refilled at the next call
    current_data: Batch  # the example each slot is working on


HaltRule = Literal["q_halt", "q_halt_vs_continue"]
HALT_RULES = ("q_halt", "q_halt_vs_continue")


def halting_rule(core: str, rule: HaltRule | None = None, *, learns_halting: bool = True) -> tuple[HaltRule, bool]:
    """(halt rule, whether the Q-continue target is computed) for both modes, from the core kind.

    HRM halts when q_halt > q_continue and learns q_continue from a bootstrapped target (HRM paper, section 2.3);
    TRM and single-z halt when q_halt > 0 and have no continue target (TRM paper, section 4.6). An explicit `rule`
    overrides the core's own, and "q_halt_vs_continue" always trains q_continue: a rule reading a logit that is never
    trained would halt at random. A core that does not learn halting (the non-recursive baselines) never halts early.
    """
    if rule is not None and rule not in HALT_RULES:
        raise ValueError(f"halt rule must be one of {HALT_RULES} or None, got {rule!r}")
    if not learns_halting:
        return "q_halt", False
    if rule is None:
        rule = "q_halt_vs_continue" if core == "hrm" else "q_halt"
    return rule, rule == "q_halt_vs_continue"


class ACT(nn.Module):
    """Drives any reasoner through supervision steps; owns no parameters (the reasoner is its only submodule).

    halt_rule: "q_halt" halts when q_halt > 0 (TRM); "q_halt_vs_continue" when q_halt > q_continue (HRM).
    compute_target_q: run HRM's extra no-grad step to build the Q-continue target.
    carry_latents: False starts every supervision step from the initial latents instead of the previous step's
        (deep supervision without its carried state, an ablation; halting and refilling are unchanged).
    generator: the torch generator (CPU) the exploration draws come from; seed it for reproducible halting.
    """

    def __init__(
        self,
        reasoner: nn.Module,
        *,
        halt_max_steps: int,
        halt_exploration_prob: float,
        halt_rule: HaltRule = "q_halt",
        compute_target_q: bool = False,
        carry_latents: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if halt_max_steps < 1:
            raise ValueError(f"halt_max_steps must be >= 1, got {halt_max_steps}")
        if not 0.0 <= halt_exploration_prob <= 1.0:
            raise ValueError(f"halt_exploration_prob must be in [0, 1], got {halt_exploration_prob}")
        if halt_rule not in HALT_RULES:
            raise ValueError(f"halt_rule must be one of {HALT_RULES}, got {halt_rule!r}")
        self.reasoner = reasoner
        self.halt_max_steps = halt_max_steps
        self.halt_exploration_prob = halt_exploration_prob
        self.halt_rule = halt_rule
        self.compute_target_q = compute_target_q
        self.carry_latents = carry_latents
        self.generator = generator if generator is not None else torch.Generator().manual_seed(torch.initial_seed())

    def initial_carry(self, batch: Batch) -> ACTCarry:
        """A carry whose every slot is halted, so the first call resets all of them and takes the whole batch."""
        batch_size = next(iter(batch.values())).shape[0]
        device = next(iter(batch.values())).device
        return ACTCarry(
            inner=self.reasoner.empty_carry(batch),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def _refill(self, carry: ACTCarry, batch: Batch) -> Batch:
        if batch.keys() != carry.current_data.keys():
            raise ValueError(
                f"batch keys {sorted(batch)} differ from the carry's keys {sorted(carry.current_data)}; "
                "start a new carry with initial_carry(batch) when the batch layout changes"
            )
        refilled = {}
        for key, new in batch.items():
            old = carry.current_data[key]
            if new.shape != old.shape:
                raise ValueError(f"batch[{key!r}] has shape {tuple(new.shape)}, the carry holds {tuple(old.shape)}")
            flag = carry.halted.view((-1,) + (1,) * (new.ndim - 1))
            refilled[key] = torch.where(flag, new, old)
        return refilled

    def _step_start(self, reset: Tensor | None, inner: Carry) -> Carry:
        """The latents a step starts from: the initial ones in every slot without the carry, else in the reset slots
        (None: no slot, as for HRM's target step, which continues the same examples)."""
        if not self.carry_latents:
            return self.reasoner.reset_carry(torch.ones_like(inner[0][:, 0, 0], dtype=torch.bool), inner)
        return inner if reset is None else self.reasoner.reset_carry(reset, inner)

    def _draw_min_steps(self, batch_size: int, halt_max_steps: int, device: torch.device) -> Tensor:
        """Exploration, as the official `*_ACTV1.forward`: redrawn every call, not once per episode; 0 w.p. 1 - p,
        else UniformInt{2..halt_max_steps}."""
        explore = torch.rand(batch_size, generator=self.generator) < self.halt_exploration_prob
        min_steps = torch.randint(2, halt_max_steps + 1, (batch_size,), generator=self.generator, dtype=torch.int32)
        return (explore * min_steps).to(device, non_blocking=True)

    def forward(
        self, carry: ACTCarry, batch: Batch, *, halt_max_steps: int | None = None, **step_kwargs
    ) -> tuple[ACTCarry, dict[str, Tensor]]:
        """One supervision step for every slot. `halt_max_steps` overrides the trained limit for this call (research
        tools run more steps at evaluation); `step_kwargs` go to the reasoner (e.g. H_cycles, L_cycles)."""
        max_steps = self.halt_max_steps if halt_max_steps is None else halt_max_steps
        if max_steps < 1:
            raise ValueError(f"halt_max_steps must be >= 1, got {max_steps}")
        data = self._refill(carry, batch)
        inner = self._step_start(carry.halted, carry.inner)
        steps = torch.where(carry.halted, 0, carry.steps)

        out = self.reasoner(inner, data, **step_kwargs)
        outputs = {
            "logits": out.logits,
            "q_halt_logits": out.q_halt_logits,
            "q_continue_logits": out.q_continue_logits,
        }

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= max_steps
            halted = is_last
            if self.training and max_steps > 1:
                if self.halt_rule == "q_halt":
                    signal = out.q_halt_logits > 0
                else:
                    signal = out.q_halt_logits > out.q_continue_logits
                halted = halted | signal
                halted = halted & (steps >= self._draw_min_steps(steps.shape[0], max_steps, steps.device))
                if self.compute_target_q:
                    # HRM: bootstrap the continue value from the next step of the same slots (official hrm.py,
                    # `HierarchicalReasoningModel_ACTV1.forward`).
                    nxt = self.reasoner(self._step_start(None, out.carry), data, **step_kwargs)
                    next_value = torch.where(
                        is_last, nxt.q_halt_logits, torch.maximum(nxt.q_halt_logits, nxt.q_continue_logits)
                    )
                    outputs["target_q_continue"] = torch.sigmoid(next_value)

        return ACTCarry(inner=out.carry, steps=steps, halted=halted, current_data=data), outputs
