import pytest
import torch
from torch import nn

from hybrid.core.act import ACT, ReasonerOutput
from hybrid.core.layers import ReasoningModule, RotaryEmbedding
from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore

D, S = 16, 5


def net():
    return ReasoningModule(num_layers=1, hidden_size=D, num_heads=2, expansion=2, rms_norm_eps=1e-5)


def record_calls(module: nn.Module, log: list, name: str):
    """Log (name, grad enabled, injection given) at every call of `module`."""
    module.register_forward_pre_hook(lambda m, args: log.append((name, torch.is_grad_enabled(), args[1] is not None)))


def test_trm_runs_T_minus_1_cycles_without_grad_then_one_with_grad():
    core = TRMCore(net=net(), hidden_size=D, H_cycles=3, L_cycles=2, rotary=RotaryEmbedding(D // 2, S))
    log = []
    record_calls(core.net, log, "f")
    carry = tuple(z.requires_grad_(True) for z in core.empty_carry(2, S))
    x = torch.randn(2, S, D, requires_grad=True)
    z_H, z_L = core(carry, x)
    assert [g for _, g, _ in log] == [False] * 6 + [True] * 3  # (T-1)(n+1) then n+1 calls
    (z_H.sum() + z_L.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The no-grad cycles cut the graph: nothing flows back into the incoming carry.
    assert carry[0].grad is None and carry[1].grad is None


def test_trm_cycle_counts_can_be_overridden_per_call():
    core = TRMCore(net=net(), hidden_size=D, H_cycles=3, L_cycles=2)
    log = []
    record_calls(core.net, log, "f")
    core(core.empty_carry(1, S), torch.randn(1, S, D), H_cycles=2, L_cycles=4)
    assert len(log) == 2 * (4 + 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        core(core.empty_carry(1, S), torch.randn(1, S, D), H_cycles=0)


def test_hrm_call_order_and_one_step_gradient():
    core = HRMCore(H_net=net(), L_net=net(), hidden_size=D, H_cycles=2, L_cycles=2)
    log = []
    record_calls(core.L_net, log, "L")
    record_calls(core.H_net, log, "H")
    core(core.empty_carry(1, S), torch.randn(1, S, D))
    assert [(n, g) for n, g, _ in log] == [
        ("L", False), ("L", False), ("H", False), ("L", False), ("L", True), ("H", True)
    ]


def test_single_z_core_injects_x_n_times_then_updates_without_it():
    core = SingleZCore(net=net(), hidden_size=D, H_cycles=2, L_cycles=3)
    log = []
    record_calls(core.net, log, "f")
    (z,) = core(core.empty_carry(1, S), torch.randn(1, S, D))
    assert z.shape == (1, S, D)
    assert [(g, inj) for _, g, inj in log] == [(False, True)] * 3 + [(False, False)] + [(True, True)] * 3 + [
        (True, False)
    ]


def test_reset_carry_restores_init_only_for_reset_slots():
    core = TRMCore(net=net(), hidden_size=D, H_cycles=1, L_cycles=1)
    carry = (torch.randn(3, S, D), torch.randn(3, S, D))
    reset = torch.tensor([True, False, True])
    z_H, z_L = core.reset_carry(reset, carry)
    assert torch.equal(z_H[0], core.H_init.expand(S, D)) and torch.equal(z_L[2], core.L_init.expand(S, D))
    assert torch.equal(z_H[1], carry[0][1]) and torch.equal(z_L[1], carry[1][1])


def test_core_rejects_mismatched_carry():
    core = TRMCore(net=net(), hidden_size=D, H_cycles=1, L_cycles=1)
    with pytest.raises(ValueError, match="carry latents have shape"):
        core(core.empty_carry(2, S), torch.randn(2, S + 1, D))
    with pytest.raises(ValueError, match="carries 2 latents"):
        core((torch.zeros(2, S, D),), torch.randn(2, S, D))


class CountingReasoner(nn.Module):
    """Carry = how many steps the slot has taken since its reset; q logits read from the batch plus that count."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def empty_carry(self, batch):
        return (torch.zeros(batch["q"].shape[0], 1, 1),)

    def reset_carry(self, reset, carry):
        return (torch.where(reset.view(-1, 1, 1), 0.0, carry[0]),)

    def forward(self, carry, batch):
        self.calls += 1
        z = carry[0] + 1
        count = z.view(-1)
        return ReasonerOutput(
            carry=(z.detach(),),
            logits=batch["x"].float()[:, :, None].expand(-1, -1, 3),
            q_halt_logits=batch["q"] + count,
            q_continue_logits=batch["qc"] - count,
            z=(z,),
        )


def batch(q, x_value, qc=None):
    q = torch.tensor(q, dtype=torch.float32)
    return {
        "q": q,
        "qc": torch.zeros_like(q) if qc is None else torch.tensor(qc, dtype=torch.float32),
        "x": torch.full((q.shape[0], 4), x_value),
        "features": torch.full((q.shape[0], 4, 2), float(x_value)),  # any key, any rank is carried
    }


def test_act_resets_and_refills_only_halted_slots():
    act = ACT(CountingReasoner(), halt_max_steps=8, halt_exploration_prob=0.0).train()
    first = batch([0.0, -10.0], 1)  # slot 0 halts after step 1 (q_halt = 1 > 0), slot 1 keeps running
    carry = act.initial_carry(first)
    assert carry.halted.all()
    carry, _ = act(carry, first)
    assert carry.halted.tolist() == [True, False] and carry.steps.tolist() == [1, 1]
    second = batch([-10.0, -10.0], 2)
    carry, out = act(carry, second)
    assert carry.current_data["x"][:, 0].tolist() == [2, 1]  # slot 0 took the new row, slot 1 kept its example
    assert carry.current_data["features"][:, 0, 0].tolist() == [2.0, 1.0]
    assert carry.inner[0].view(-1).tolist() == [1.0, 2.0]  # slot 0's latent was reset
    assert carry.steps.tolist() == [1, 2]
    assert out["logits"][:, 0, 0].tolist() == [2.0, 1.0]


def test_act_eval_ignores_q_and_halts_at_halt_max_steps_which_can_be_overridden():
    act = ACT(CountingReasoner(), halt_max_steps=3, halt_exploration_prob=0.0).eval()
    b = batch([100.0, 100.0], 1)
    carry = act.initial_carry(b)
    history = []
    for _ in range(3):
        carry, _ = act(carry, b)
        history.append(carry.halted.tolist())
    assert history == [[False, False], [False, False], [True, True]]
    carry = act.initial_carry(b)
    for step in range(1, 6):
        carry, _ = act(carry, b, halt_max_steps=5)
        assert carry.halted.all().item() == (step == 5)


def test_act_halt_rule_vs_continue():
    act = ACT(CountingReasoner(), halt_max_steps=8, halt_exploration_prob=0.0, halt_rule="q_halt_vs_continue").train()
    b = batch([-3.0, -3.0], 1, qc=[-10.0, 10.0])  # q_halt = -2 at step 1; continue = -11 vs 9
    carry, _ = act(act.initial_carry(b), b)
    assert carry.halted.tolist() == [True, False]


def test_act_training_with_one_max_step_always_halts():
    act = ACT(CountingReasoner(), halt_max_steps=1, halt_exploration_prob=1.0).train()
    b = batch([-10.0, -10.0], 1)
    carry, _ = act(act.initial_carry(b), b)
    assert carry.halted.all()


def exploration_run(seed: int, n: int = 3000) -> list[torch.Tensor]:
    act = ACT(
        CountingReasoner(),
        halt_max_steps=4,
        halt_exploration_prob=1.0,
        generator=torch.Generator().manual_seed(seed),
    ).train()
    b = batch([10.0] * n, 1)  # the Q head always wants to halt; only exploration holds slots back
    carry = act.initial_carry(b)
    halted = []
    for _ in range(3):
        carry, _ = act(carry, b)
        halted.append(carry.halted.clone())
    return halted


def test_exploration_is_redrawn_every_step_and_seedable():
    h1, h2, h3 = exploration_run(seed=0)
    assert not h1.any()  # min_steps >= 2 for every exploring slot
    # Step 2: min_steps in {2,3,4} uniformly -> 1/3 halt.
    assert abs(h2.float().mean().item() - 1 / 3) < 0.04
    # Step 3, among slots still running: a fresh draw halts 2/3 of them; a per-episode draw would halt only 1/2.
    assert abs(h3[~h2].float().mean().item() - 2 / 3) < 0.04
    again = exploration_run(seed=0)
    other = exploration_run(seed=1)
    assert all(torch.equal(a, b) for a, b in zip(again, (h1, h2, h3)))
    assert not torch.equal(other[1], h2)


def test_hrm_target_q_continue_from_an_extra_step_in_training_only():
    reasoner = CountingReasoner()
    act = ACT(reasoner, halt_max_steps=2, halt_exploration_prob=0.0, halt_rule="q_halt_vs_continue",
              compute_target_q=True).train()
    b = batch([-10.0, -10.0], 1, qc=[0.0, 20.0])
    carry, out = act(act.initial_carry(b), b)
    assert reasoner.calls == 2
    # The extra step sees count 2: q_halt' = -8, q_cont' = -2 / 18; not the last step -> max of the two.
    torch.testing.assert_close(out["target_q_continue"], torch.sigmoid(torch.tensor([-2.0, 18.0])))
    carry, out = act(carry, b)  # step 2 = halt_max_steps: the target is the next q_halt alone (count 3)
    torch.testing.assert_close(out["target_q_continue"], torch.sigmoid(torch.tensor([-7.0, -7.0])))
    act.eval()
    _, out = act(act.initial_carry(b), b)
    assert "target_q_continue" not in out


def test_act_rejects_a_batch_with_other_keys_or_shapes():
    act = ACT(CountingReasoner(), halt_max_steps=2, halt_exploration_prob=0.0)
    b = batch([0.0, 0.0], 1)
    carry = act.initial_carry(b)
    with pytest.raises(ValueError, match="batch keys"):
        act(carry, {k: v for k, v in b.items() if k != "features"})
    with pytest.raises(ValueError, match=r"batch\['x'\] has shape"):
        act(carry, {**b, "x": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="halt_exploration_prob"):
        ACT(CountingReasoner(), halt_max_steps=2, halt_exploration_prob=1.5)
    with pytest.raises(ValueError, match="halt_rule"):
        ACT(CountingReasoner(), halt_max_steps=2, halt_exploration_prob=0.0, halt_rule="always")
