"""TRM's Table 1 ablation switches of the pure model (arXiv 2510.04871): separate f_H and f_L, HRM's 1-step
gradient, and deep supervision without the carried latents. Each test fails when its switch is ignored."""

from pathlib import Path

import pytest
import torch

from hybrid.config import ConfigError, load_config
from hybrid.core.losses import ACTLoss
from hybrid.core.recursion import HRMCore, TRMCore
from hybrid.models.pure import PureConfig, build_pure_model
from hybrid.train.config import PureTrainConfig

CPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "sudoku6x6.yaml"

T, n = 2, 3


def config(**overrides) -> PureConfig:
    base = dict(seq_len=6, vocab_size=5, num_puzzle_identifiers=3, H_cycles=T, L_cycles=n, L_layers=1,
                hidden_size=16, num_heads=2, puzzle_emb_ndim=16, puzzle_emb_len=2, mlp_t=True, pos_encodings="none",
                forward_dtype="float32", halt_max_steps=4)
    return PureConfig(**{**base, **overrides})


def grid_batch(cfg: PureConfig, seed: int = 1, B: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "labels": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (B,), generator=g),
    }


def model(cfg: PureConfig):
    torch.manual_seed(0)
    reasoner, act = build_pure_model(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the Q head starts at zero weights: small ones make q depend on the latents, still < 0
        reasoner.heads.q_head.weight.normal_(std=0.05)
    return reasoner, act


def record_grad_calls(module: torch.nn.Module, log: list, name: str):
    module.register_forward_pre_hook(lambda m, args: log.append((name, torch.is_grad_enabled())))


def dense_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- separate f_H and f_L ------------------------------------------------------------------------------------------


def test_separate_networks_are_two_equal_size_networks_under_trm_schedule_and_gradient():
    shared, _ = model(config())
    separate, act = model(config(separate_networks=True))
    core = separate.core
    assert isinstance(core, HRMCore) and not core.one_step_gradient
    assert core.H_net is not core.L_net
    assert not {id(p) for p in core.H_net.parameters()} & {id(p) for p in core.L_net.parameters()}
    assert dense_count(core.H_net) == dense_count(core.L_net) == dense_count(shared.core.net)
    assert dense_count(separate) == dense_count(shared) + dense_count(shared.core.net)

    log = []
    record_grad_calls(core.L_net, log, "L")
    record_grad_calls(core.H_net, log, "H")
    loss_fn = ACTLoss(act)
    result = loss_fn(loss_fn.initial_carry(grid_batch(separate.cfg)), grid_batch(separate.cfg))
    cycle = ["L"] * n + ["H"]
    # TRM's schedule and gradient: T-1 cycles without gradient, the whole last cycle with it
    assert log == [(name, False) for name in cycle] * (T - 1) + [(name, True) for name in cycle]
    result.loss.backward()
    for net in (core.H_net, core.L_net):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ---- 1-step gradient -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("one_step", [False, True])
def test_one_step_gradient_runs_only_the_last_f_L_and_f_H_calls_with_gradient(one_step):
    reasoner, _ = model(config(one_step_gradient=one_step))
    core = reasoner.core
    assert isinstance(core, TRMCore) and core.one_step_gradient is one_step
    log = []
    record_grad_calls(core.net, log, "f")
    reasoner(reasoner.empty_carry(grid_batch(reasoner.cfg)), grid_batch(reasoner.cfg))
    grad = 2 if one_step else n + 1
    assert [g for _, g in log] == [False] * (T * (n + 1) - grad) + [True] * grad


def test_one_step_gradient_equals_the_gradient_of_the_last_two_calls():
    """The parameter gradient of a loss on z_H equals the one computed by hand: every call but the last f(z_L) and
    the last f(z_H) without gradient. The whole-cycle gradient of TRM differs from it."""
    one_step, _ = model(config(one_step_gradient=True))
    full, _ = model(config())
    full.load_state_dict(one_step.state_dict())
    x = torch.randn(2, one_step.cfg.total_len, 16)
    carry = one_step.core.empty_carry(2, one_step.cfg.total_len)

    def param_grads(core, z_H):
        core.zero_grad()
        z_H.square().mean().backward()
        return [p.grad.clone() for p in core.net.parameters()]

    f = one_step.core.net
    z_H, z_L = carry
    with torch.no_grad():  # T cycles of n f(z_L) calls and one f(z_H), less the last f(z_L) and f(z_H)
        for _ in range(T - 1):
            for _ in range(n):
                z_L = f(z_L, z_H + x, None, None)
            z_H = f(z_H, z_L, None, None)
        for _ in range(n - 1):
            z_L = f(z_L, z_H + x, None, None)
    expected = param_grads(one_step.core, f(z_H, f(z_L, z_H + x, None, None), None, None))

    for got, want in zip(param_grads(one_step.core, one_step.core(carry, x)[0]), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert any(not torch.allclose(a, b) for a, b in zip(param_grads(full.core, full.core(carry, x)[0]), expected))


# ---- deep supervision without the carried latents ------------------------------------------------------------------


@pytest.mark.parametrize("carry_latents", [True, False])
def test_without_the_carry_every_step_restarts_from_the_initial_latents(carry_latents):
    """Training mode, two supervision steps of the same slots: without the carry the second step's output is the
    first's (same start, same example, same weights); with it, it differs. ACT is otherwise unchanged: the running
    slots keep their example (the second batch is not taken) and count their steps."""
    reasoner, act = model(config(carry_latents=carry_latents))
    assert act.carry_latents is carry_latents
    first_batch, second_batch = grid_batch(reasoner.cfg, seed=1), grid_batch(reasoner.cfg, seed=2)
    carry, first = act(act.initial_carry(first_batch), first_batch)
    assert not carry.halted.any()  # the Q head's bias keeps every slot running
    carry, second = act(carry, second_batch)
    assert carry.steps.tolist() == [2, 2, 2]
    assert torch.equal(carry.current_data["inputs"], first_batch["inputs"])
    same = torch.equal(first["logits"], second["logits"]) and torch.equal(first["q_halt_logits"], second["q_halt_logits"])
    assert same is not carry_latents


def test_without_the_carry_hrm_target_step_also_starts_from_the_initial_latents():
    """HRM's Q-continue target comes from the next step of the same slots; without the carry that step starts from
    the initial latents too, so it repeats the first step's Q logits."""
    reasoner, act = model(config(family="hrm", H_layers=1, pos_encodings="rope", mlp_t=False, carry_latents=False))
    batch = grid_batch(reasoner.cfg)
    _, out = act(act.initial_carry(batch), batch)
    expected = torch.sigmoid(torch.maximum(out["q_halt_logits"], out["q_continue_logits"]))
    torch.testing.assert_close(out["target_q_continue"], expected.detach(), rtol=0, atol=0)
    _, act_carry = model(config(family="hrm", H_layers=1, pos_encodings="rope", mlp_t=False))
    _, out_carry = act_carry(act_carry.initial_carry(batch), batch)
    assert not torch.equal(out_carry["target_q_continue"], expected.detach())


# ---- defaults and config loading -----------------------------------------------------------------------------------


def test_defaults_are_the_papers_model_and_misplaced_switches_fail_at_load():
    cfg = config()
    assert (cfg.separate_networks, cfg.one_step_gradient, cfg.carry_latents) == (False, False, True)
    hrm, _ = model(config(family="hrm", H_layers=1, pos_encodings="rope", mlp_t=False))
    assert hrm.core.one_step_gradient  # HRM keeps its own gradient
    # a recipe config fails when loaded, before any data is read
    with pytest.raises(ConfigError, match="ablations of family 'trm', not 'hrm'"):
        load_config(PureTrainConfig, CPU_CONFIG, ["arch.family=hrm", "arch.H_layers=2", "arch.pos_encodings=rope",
                                                   "arch.separate_networks=true"])
