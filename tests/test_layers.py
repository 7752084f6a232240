import math

import pytest
import torch

from hybrid.core.layers import (
    Attention,
    Block,
    CastedEmbedding,
    CastedLinear,
    CastedSparseEmbedding,
    ReasoningModule,
    RotaryEmbedding,
    SwiGLU,
    TokenMixer,
    apply_rotary,
    rms_norm,
    swiglu_intermediate_size,
    trunc_normal_init_,
)


def test_rms_norm_matches_hand_computation_and_keeps_dtype():
    x = torch.tensor([[3.0, 4.0], [1.0, -1.0]])
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5), expected)
    y = rms_norm(x.bfloat16(), 1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, atol=1e-2, rtol=1e-2)


def test_trunc_normal_has_the_requested_std_and_is_cut_at_two_sigma():
    t = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.005
    assert t.abs().max().item() <= 2 * 0.5 * 1.1369 + 1e-6
    assert torch.count_nonzero(trunc_normal_init_(torch.ones(10), std=0.0)) == 0


@pytest.mark.parametrize(
    "width, expansion, expected",
    [(512, 4, 1536), (97, 4, 512), (916, 4, 2560), (64, 4, 256), (18, 4, 256)],
)
def test_swiglu_intermediate_size_rounding(width, expansion, expected):
    assert swiglu_intermediate_size(width, expansion) == expected
    assert SwiGLU(width, expansion).down.weight.shape == (width, expected)


def test_swiglu_uses_first_half_as_gate():
    mlp = SwiGLU(4, 1)  # intermediate 256
    x = torch.randn(3, 4)
    gate, up = (x @ mlp.gate_up.weight.T).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), (torch.nn.functional.silu(gate) * up) @ mlp.down.weight.T)


def test_casted_linear_casts_weight_to_input_dtype_and_keeps_fp32_master():
    lin = CastedLinear(8, 4, bias=True)
    assert lin.weight.dtype == torch.float32
    assert lin(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    # truncated LeCun normal: std 1/sqrt(fan_in)
    big = CastedLinear(256, 512)
    assert abs(big.weight.std().item() - 256**-0.5) < 0.003


def test_casted_embedding_casts_table():
    emb = CastedEmbedding(5, 8, init_std=0.1, cast_to=torch.bfloat16)
    out = emb(torch.tensor([0, 4]))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, emb.weight[[0, 4]].bfloat16())


def test_sparse_embedding_train_rows_carry_the_gradient_and_eval_reads_the_table():
    emb = CastedSparseEmbedding(6, 4, cast_to=torch.float32)
    assert "weights" in emb.state_dict() and "local_weights" not in emb.state_dict()
    assert list(emb.parameters()) == []
    with torch.no_grad():
        emb.weights.copy_(torch.arange(24.0).view(6, 4))
    ids = torch.tensor([5, 1, 5])
    emb.train()
    out = emb(ids)
    torch.testing.assert_close(out, emb.weights[ids])
    (out * torch.tensor([1.0, 2.0, 3.0])[:, None]).sum().backward()
    torch.testing.assert_close(emb.local_weights.grad, torch.tensor([1.0, 2.0, 3.0])[:, None].expand(3, 4))
    assert emb.local_ids.tolist() == [5, 1, 5]
    emb(torch.tensor([0, 0, 2]))  # a new batch of the same size: rows replaced, old gradient dropped
    assert emb.local_weights.grad is None
    assert emb.local_ids.tolist() == [0, 0, 2]
    emb.eval()
    torch.testing.assert_close(emb(torch.tensor([2])), emb.weights[[2]])


def test_rotary_half_rotation_on_hand_values():
    rope = RotaryEmbedding(4, 3, base=10000.0)
    cos, sin = rope(3)
    # inv_freq = [1, 1/100]; position 2, component 0 rotates by angle 2.
    assert math.isclose(cos[2, 0].item(), math.cos(2.0), rel_tol=1e-6)
    assert math.isclose(sin[2, 1].item(), math.sin(0.02), rel_tol=1e-5)
    assert torch.equal(cos[:, :2], cos[:, 2:])
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    y = apply_rotary(x, cos, sin)
    # pairs (x0, x2) and (x1, x3) rotate: [a*cos - b*sin, ..., b*cos + a*sin]
    c, s = math.cos(2.0), math.sin(2.0)
    assert math.isclose(y[0, 2, 0, 0].item(), 1 * c - 3 * s, rel_tol=1e-5)
    assert math.isclose(y[0, 2, 0, 2].item(), 3 * c + 1 * s, rel_tol=1e-5)
    torch.testing.assert_close(y[0, 0], x[0, 0])  # position 0 is not rotated
    with pytest.raises(ValueError, match="exceeds the RoPE table"):
        rope(4)


def test_attention_key_padding_mask_isolates_real_tokens():
    attn = Attention(16, 2)
    rope = RotaryEmbedding(8, 10)
    real = torch.randn(1, 6, 16)
    padded = torch.cat([real, torch.randn(1, 4, 16) * 10], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    alone = attn(real, rope(6))
    with_pad = attn(padded, rope(10), attn_mask=mask)
    torch.testing.assert_close(with_pad[:, :6], alone, atol=1e-5, rtol=1e-5)
    # without the mask the padding does leak in
    assert not torch.allclose(attn(padded, rope(10))[:, :6], alone, atol=1e-3)


def test_attention_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Attention(10, 3)


def test_token_mixer_normalises_over_the_sequence_axis():
    mixer = TokenMixer(5, 4, rms_norm_eps=1e-5)
    with torch.no_grad():
        mixer.mlp.down.weight.zero_()  # mixer output = norm(h) alone
    h = torch.randn(2, 5, 3) * torch.tensor([1.0, 10.0, 100.0])
    out = mixer(h)
    torch.testing.assert_close(out.pow(2).mean(dim=1), torch.ones(2, 3), atol=1e-3, rtol=1e-3)
    assert not torch.allclose(out.pow(2).mean(dim=2), torch.ones(2, 5), atol=1e-2)
    with pytest.raises(ValueError, match="built for sequence length 5"):
        mixer(torch.randn(2, 6, 3))


def test_block_is_post_norm_and_mlp_t_block_rejects_a_mask():
    block = Block(hidden_size=16, num_heads=2, expansion=4, rms_norm_eps=1e-5)
    out = block(torch.randn(2, 5, 16) * 7)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(2, 5), atol=1e-3, rtol=1e-3)
    mixer_block = Block(hidden_size=16, num_heads=2, expansion=4, rms_norm_eps=1e-5, mlp_t_seq_len=5)
    with pytest.raises(ValueError, match="cannot take an attn_mask"):
        mixer_block(torch.randn(1, 5, 16), attn_mask=torch.ones(1, 5, dtype=torch.bool))


def test_reasoning_module_adds_injection_before_the_layers():
    net = ReasoningModule(num_layers=2, hidden_size=16, num_heads=2, expansion=2, rms_norm_eps=1e-5)
    h, inj = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    torch.testing.assert_close(net(h, inj), net(h + inj, None))
    with pytest.raises(ValueError, match="at least one layer"):
        ReasoningModule(num_layers=0, hidden_size=16, num_heads=2, expansion=2, rms_norm_eps=1e-5)
