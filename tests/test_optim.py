"""Optimisers against hand-written reference formulas (adam-atan2's update, official
sparse_embedding.py, pretrain.py `cosine_schedule_with_warmup_lr_lambda`, ema.py), in float64 with Python `math`."""

import io
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hybrid.optim import EMA, AdamATan2, SparseSignSGD, lr_at

B1, B2 = 0.9, 0.95


def adam_atan2_reference(p0: float, grads: list[float], lrs: list[float], wd: float) -> float:
    """The adam-atan2 package's per-element update, written out with scalars."""
    p, m, v = p0, 0.0, 0.0
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        p = p * (1 - lr * wd)
        m = m + (1 - B1) * (g - m)
        v = v + (1 - B2) * (g * g - v)
        p = p - lr * math.atan2(m / (1 - B1**t), math.sqrt(v) / math.sqrt(1 - B2**t))
    return p


def run_adam_atan2(p0: list[float], grads: list[list[float]], lrs: list[float], wd: float,
                   dtype=torch.float64) -> torch.Tensor:
    param = nn.Parameter(torch.tensor(p0, dtype=dtype))
    opt = AdamATan2([param], weight_decay=wd)
    for g, lr in zip(grads, lrs):
        param.grad = torch.tensor(g, dtype=dtype)
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return param.detach()


P0 = [0.5, -1.25, 2.0, 0.0]
GRADS = [[0.3, -0.7, 1e-3, 0.0], [-0.4, -0.2, 5.0, 0.0]]


def test_adam_atan2_two_steps_match_formula():
    lrs, wd = [0.05, 0.02], 0.1
    got = run_adam_atan2(P0, GRADS, lrs, wd)
    expected = [adam_atan2_reference(p, [g[i] for g in GRADS], lrs, wd) for i, p in enumerate(P0)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)


def test_adam_atan2_decays_before_the_update():
    lr, wd, p0, g = 0.1, 0.5, 2.0, 0.3
    got = run_adam_atan2([p0], [[g]], [lr], wd).item()
    step = lr * math.atan2(g, abs(g))  # t = 1: m_hat = g and sqrt(v_hat) = |g|
    assert got == pytest.approx(p0 * (1 - lr * wd) - step, abs=1e-14)
    assert abs(got - (p0 - step) * (1 - lr * wd)) > 1e-3


def test_adam_atan2_first_bias_correction_is_inside_atan2():
    lr, g = 0.1, 0.3
    got = run_adam_atan2([0.0], [[g]], [lr], 0.0).item()
    inside = -lr * math.atan2((1 - B1) * g / (1 - B1), math.sqrt((1 - B2) * g * g) / math.sqrt(1 - B2))
    outside = -lr / (1 - B1) * math.atan2((1 - B1) * g, math.sqrt((1 - B2) * g * g) / math.sqrt(1 - B2))
    assert got == pytest.approx(inside, abs=1e-14)
    assert abs(got - outside) > 1e-2


def test_adam_atan2_lr_zero_keeps_params_but_advances_moments_and_step():
    param = nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = AdamATan2([param], weight_decay=0.1)
    param.grad = torch.tensor(GRADS[0], dtype=torch.float64)
    opt.step()
    assert torch.equal(param.detach(), torch.tensor(P0, dtype=torch.float64))
    state = opt.state[param]
    assert state["step"] == 1
    torch.testing.assert_close(state["exp_avg"], (1 - B1) * torch.tensor(GRADS[0], dtype=torch.float64))
    # The second step must use t = 2 and the moments from the lr = 0 step.
    param.grad = torch.tensor(GRADS[1], dtype=torch.float64)
    opt.param_groups[0]["lr"] = 0.05
    opt.step()
    expected = [adam_atan2_reference(p, [g[i] for g in GRADS], [0.0, 0.05], 0.1) for i, p in enumerate(P0)]
    torch.testing.assert_close(param.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)


def test_adam_atan2_zero_gradient_only_decays():
    got = run_adam_atan2([1.5], [[0.0], [0.0]], [0.1, 0.1], 0.2)
    assert torch.isfinite(got).all()
    assert got.item() == pytest.approx(1.5 * (1 - 0.1 * 0.2) ** 2, abs=1e-15)


def test_adam_atan2_bf16_computes_in_fp32_and_rounds_once():
    p0 = torch.randn(64)
    g = torch.randn(64)
    got = run_adam_atan2(p0.bfloat16().tolist(), [g.bfloat16().tolist()], [0.01], 0.1, dtype=torch.bfloat16)
    exact = run_adam_atan2(p0.bfloat16().tolist(), [g.bfloat16().tolist()], [0.01], 0.1, dtype=torch.float32)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, exact.bfloat16())


def test_adam_atan2_state_dict_round_trip_continues_identically():
    model_a = nn.Linear(4, 3)
    model_b = nn.Linear(4, 3)
    model_b.load_state_dict(model_a.state_dict())
    opt_a = AdamATan2(model_a.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt_a.zero_grad()
        model_a(x).pow(2).sum().backward()
        opt_a.step()
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    model_b.load_state_dict(model_a.state_dict())
    opt_b = AdamATan2(model_b.parameters())
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.param_groups[0]["lr"] == 0.01
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_b.state[model_b.weight]["step"] == 3


def per_tensor_adam_atan2(params, grads, moments, t, lr, wd):
    """The previous implementation's update, one tensor at a time: the reference for the flat-buffer update."""
    for p, g, (m, v) in zip(params, grads, moments):
        p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - B1)
        v.lerp_(g * g, 1 - B2)
        p.add_(torch.atan2(m / (1 - B1**t), v.sqrt() / (1 - B2**t) ** 0.5), alpha=-lr)


def test_adam_atan2_flat_update_equals_per_tensor_update_on_many_tensors():
    g = torch.Generator().manual_seed(0)
    shapes = [(int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g)))
              for _ in range(40)] + [(0, 4), (1,), (3, 5, 7)]
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    reference = [p.detach().clone() for p in params]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in reference]
    opt = AdamATan2(params, weight_decay=0.1)
    for t, lr in enumerate([0.05, 0.02, 0.01], start=1):
        grads = [torch.randn(s, generator=g) * 10.0 ** float(torch.randint(-4, 2, (1,), generator=g)) for s in shapes]
        grads[0].zero_()  # a never-used row block: atan2(0, 0) = 0, only decay
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        per_tensor_adam_atan2(reference, grads, moments, t, lr, 0.1)
    for p, ref, (m, v) in zip(params, reference, moments):
        # Float32 rounding of the same ops: the vectorised and scalar atan2 may differ in the last bit.
        torch.testing.assert_close(p.detach(), ref, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=1e-6, atol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, rtol=1e-6, atol=0)


def test_adam_atan2_parameter_without_grad_keeps_its_moments_and_step_count():
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
    opt = AdamATan2([a, b], lr=0.1, weight_decay=0.0)
    a.grad, b.grad = torch.tensor([0.5, -0.5]), torch.tensor([1.0])
    opt.step()
    m_b = opt.state[b]["exp_avg"].clone()
    a.grad, b.grad = torch.tensor([0.5, -0.5]), None  # b sits out: a alone forms a new bucket
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    assert torch.equal(opt.state[b]["exp_avg"], m_b) and b.item() == pytest.approx(3.0 - 0.1 * math.atan2(1.0, 1.0))
    b.grad = torch.tensor([1.0])  # back in, at a different step count than a: two buckets with their own t
    opt.step()
    expected_b = adam_atan2_reference(3.0, [1.0, 1.0], [0.1, 0.1], 0.0)
    assert b.item() == pytest.approx(expected_b, abs=1e-6)
    expected_a = [adam_atan2_reference(p0, [g, g, g], [0.1] * 3, 0.0) for p0, g in ((1.0, 0.5), (2.0, -0.5))]
    torch.testing.assert_close(a.detach(), torch.tensor(expected_a), rtol=0, atol=1e-6)


def test_adam_atan2_load_state_dict_into_a_stepped_optimiser_replaces_its_flat_moments():
    saved = AdamATan2([nn.Parameter(torch.tensor(P0))], lr=0.05)
    saved.param_groups[0]["params"][0].grad = torch.tensor(GRADS[0])
    saved.step()
    param = nn.Parameter(torch.tensor(P0))
    opt = AdamATan2([param], lr=0.05)
    param.grad = torch.tensor([9.0, 9.0, 9.0, 9.0])  # moments that the loaded state must replace
    opt.step()
    opt.load_state_dict(saved.state_dict())
    with torch.no_grad():
        param.copy_(saved.param_groups[0]["params"][0])
    param.grad = torch.tensor(GRADS[1])
    opt.param_groups[0]["lr"] = 0.02
    opt.step()
    expected = [adam_atan2_reference(p, [g[i] for g in GRADS], [0.05, 0.02], 0.1) for i, p in enumerate(P0)]
    torch.testing.assert_close(param.detach(), torch.tensor(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1)])
def test_adam_atan2_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="AdamATan2"):
        AdamATan2([nn.Parameter(torch.zeros(2))], **kwargs)


class FakeSparseEmbedding(nn.Module):
    """The duck type SparseSignSGD expects: a table, and the batch's rows gathered into a gradient-carrying buffer."""

    def __init__(self, num_rows: int, dim: int, batch_size: int):
        super().__init__()
        self.register_buffer("weights", torch.randn(num_rows, dim, dtype=torch.float64))
        self.register_buffer("local_weights", torch.zeros(batch_size, dim, dtype=torch.float64, requires_grad=True),
                             persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights


def sparse_step(emb: FakeSparseEmbedding, ids: list[int], grads: list[list[float]], lr: float, wd: float):
    opt = SparseSignSGD(emb, weight_decay=wd)
    opt.param_groups[0]["lr"] = lr
    out = emb(torch.tensor(ids))
    (out * torch.tensor(grads, dtype=torch.float64)).sum().backward()  # d(loss)/d(row b) = grads[b]
    opt.step()
    return opt


def sparse_reference(table: list[list[float]], ids: list[int], grads: list[list[float]], lr: float, wd: float):
    sums: dict[int, list[float]] = {}
    for i, g in zip(ids, grads):
        sums[i] = [a + b for a, b in zip(sums.get(i, [0.0] * len(g)), g)]
    out = [row[:] for row in table]
    for i, g in sums.items():
        out[i] = [w * (1 - lr * wd) - lr * math.copysign(1.0, s) * (s != 0) for w, s in zip(table[i], g)]
    return out


def test_sparse_sign_sgd_sums_duplicates_and_touches_only_seen_rows():
    emb = FakeSparseEmbedding(6, 2, batch_size=3)
    before = emb.weights.tolist()
    ids = [2, 5, 2]
    grads = [[1.0, -3.0], [0.5, 0.0], [-2.0, 1.0]]  # row 2 sums to [-1, -2]: opposite sign to row 0's first entry
    sparse_step(emb, ids, grads, lr=0.01, wd=0.1)
    expected = sparse_reference(before, ids, grads, lr=0.01, wd=0.1)
    torch.testing.assert_close(emb.weights, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    for row in (0, 1, 3, 4):
        assert emb.weights[row].tolist() == before[row]


def test_sparse_sign_sgd_drives_the_real_casted_sparse_embedding():
    from hybrid.core.layers import CastedSparseEmbedding

    emb = CastedSparseEmbedding(5, 3, cast_to=torch.float32)
    opt = SparseSignSGD(emb, weight_decay=0.1)
    opt.param_groups[0]["lr"] = 0.5
    emb.train()
    (emb(torch.tensor([4, 1, 4])) * torch.tensor([[1.0, -1.0, 2.0], [3.0, 3.0, -3.0], [1.0, 1.0, -5.0]])).sum().backward()
    opt.step()
    expected = torch.zeros(5, 3)
    expected[1] = torch.tensor([-0.5, -0.5, 0.5])
    expected[4] = torch.tensor([-0.5, 0.0, 0.5])  # row 4 sums to [2, 0, -3]; sign(0) = 0
    assert torch.equal(emb.weights, expected)


def test_sparse_sign_sgd_zero_grad_and_state_dict():
    emb = FakeSparseEmbedding(4, 2, batch_size=2)
    opt = sparse_step(emb, [0, 1], [[1.0, 1.0], [1.0, 1.0]], lr=0.3, wd=0.2)
    assert emb.local_weights.grad is not None
    opt.zero_grad()
    assert emb.local_weights.grad is None
    with pytest.raises(RuntimeError, match="local_weights.grad is None"):
        opt.step()
    restored = SparseSignSGD(FakeSparseEmbedding(4, 2, batch_size=2))
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[0]["lr"] == 0.3 and restored.param_groups[0]["weight_decay"] == 0.2


def test_sparse_sign_sgd_rejects_module_without_buffers():
    with pytest.raises(ValueError, match="local_weights"):
        SparseSignSGD(nn.Linear(2, 2))


WORLD_TABLE_SEED, WORLD_IDS = 7, [[3, 1, 3], [1, 0, 5]]


def _world_grads(rank: int) -> list[list[float]]:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(3, 4, generator=generator, dtype=torch.float64).tolist()


def _distributed_worker(rank: int, port: int, out_dir: str):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(WORLD_TABLE_SEED)
        emb = FakeSparseEmbedding(8, 4, batch_size=3)
        sparse_step(emb, WORLD_IDS[rank], _world_grads(rank), lr=0.05, wd=0.1)
        torch.save(emb.weights, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_sparse_sign_sgd_two_processes_match_single_process_on_concatenated_batch(tmp_path):
    mp.spawn(_distributed_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(rank0, rank1)

    torch.manual_seed(WORLD_TABLE_SEED)
    single = FakeSparseEmbedding(8, 4, batch_size=6)
    before = single.weights.tolist()
    ids, grads = WORLD_IDS[0] + WORLD_IDS[1], _world_grads(0) + _world_grads(1)
    sparse_step(single, ids, grads, lr=0.05, wd=0.1)
    assert torch.equal(rank0, single.weights)
    assert not torch.equal(rank0, torch.tensor(before, dtype=torch.float64))  # the update did something
    assert rank0[2].tolist() == before[2]  # a row no rank saw


@pytest.mark.parametrize("step, expected", [(1, 1e-3 * 1 / 10), (5, 1e-3 * 5 / 10), (10, 1e-3), (60, 1e-3 * 0.55),
                                            (110, 1e-3 * 0.1)])
def test_lr_at_warmup_cosine_and_floor(step, expected):
    assert lr_at(step, base_lr=1e-3, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(expected, rel=1e-12)


def test_lr_at_min_ratio_one_is_constant_after_warmup():
    values = [lr_at(s, base_lr=2e-4, warmup_steps=4, total_steps=50, min_ratio=1.0) for s in range(4, 51)]
    assert values == [2e-4] * len(values)


@pytest.mark.parametrize("step", [0, 111])
def test_lr_at_rejects_steps_outside_the_run(step):
    with pytest.raises(ValueError, match="step must be in"):
        lr_at(step, base_lr=1e-3, warmup_steps=10, total_steps=110, min_ratio=0.1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2).double()
        self.frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
        self.register_buffer("H_init", torch.zeros(2, dtype=torch.float64))


def test_ema_after_k_updates_equals_closed_form():
    mu, model = 0.9, Tiny()
    p0 = model.linear.weight.detach().clone()
    ema = EMA(model, mu=mu)
    assert set(ema.state_dict()["shadow"]) == {"linear.weight", "linear.bias"}  # no frozen param, no buffer
    history = []
    for k in range(1, 6):
        with torch.no_grad():
            model.linear.weight.add_(0.1 * k)
            model.frozen.add_(1.0)
            model.H_init.add_(1.0)
        history.append(model.linear.weight.detach().clone())
        ema.update(model)
    k = len(history)
    closed = mu**k * p0 + sum((1 - mu) * mu ** (k - j) * p for j, p in enumerate(history, start=1))
    torch.testing.assert_close(ema.shadow["linear.weight"], closed, rtol=0, atol=1e-14)


def test_ema_apply_to_swaps_and_restores_copy_to_overwrites():
    model = Tiny()
    initial = model.linear.weight.detach().clone()
    ema = EMA(model, mu=0.5)
    with torch.no_grad():
        model.linear.weight.fill_(4.0)
    ema.update(model)
    expected = 0.5 * initial + 0.5 * 4.0
    with ema.apply_to(model):
        torch.testing.assert_close(model.linear.weight.detach(), expected)
    assert torch.all(model.linear.weight == 4.0)
    ema.copy_to(model)
    torch.testing.assert_close(model.linear.weight.detach(), expected)


def test_ema_state_dict_round_trip_and_mismatch_error():
    model = Tiny()
    ema = EMA(model, mu=0.99)
    with torch.no_grad():
        model.linear.bias.add_(3.0)
    ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    other = EMA(Tiny(), mu=0.5)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.mu == 0.99
    for name in ema.shadow:
        assert torch.equal(other.shadow[name], ema.shadow[name])
    with pytest.raises(ValueError, match="missing"):
        ema.update(nn.Linear(3, 2))
