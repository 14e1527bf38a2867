"""irkd.py section 1, the model (ViT, Block, Attention, build_model, count_params): shapes at
every resolution, presets, position-embedding resampling, fused vs explicit attention, the
distillation-token convention, and the resolution checks.

Oracles: the published parameter counts of the presets; F.interpolate (bicubic, antialiased
when shrinking) for the position-embedding resampling, and constants staying constant; a
manual softmax(q k^T / sqrt(d)) v for the explicit attention path, which in turn is the oracle
for the fused path; a dist head made a copy of the cls head must give the cls head's logits.
"""
import pytest
import torch
import torch.nn.functional as F

import irkd
from conftest import tiny_vit


# ----------------------------------------------------------------------------- shapes, presets

@pytest.mark.parametrize("patch_size", [2, 4])
@pytest.mark.parametrize("distill_token", [False, True])
def test_shapes_at_every_resolution(patch_size, distill_token):
    torch.manual_seed(0)
    model = tiny_vit(patch_size, distill_token).eval()
    prefix = 2 if distill_token else 1
    for res in (12, 16, 20, 24, 28, 32):
        x = torch.randn(3, 3, res, res)
        out, attns = model(x, return_attn=True)
        logits = out if not distill_token else out[0]
        assert logits.shape == (3, 10)
        if distill_token:
            assert out[1].shape == (3, 10)
        n = prefix + (res // patch_size) ** 2
        assert len(attns) == 2
        for a in attns:
            assert a.shape == (3, 2, n, n)
        fused = model(x)
        fused = fused[0] if distill_token else fused
        assert fused.shape == (3, 10)
        assert torch.isfinite(fused).all()


@pytest.mark.parametrize("preset,expected",
                         [("custom", 0.55e6), ("tiny", 5.4e6), ("small", 21.4e6)])
def test_preset_param_counts(preset, expected):
    n = irkd.count_params(irkd.build_model(preset, patch_size=4))
    assert abs(n - expected) / expected < 0.05, (preset, n)


def test_preset_architecture():
    m = irkd.build_model("tiny", patch_size=2)
    assert len(m.blocks) == 12 and m.blocks[0].attn.heads == 3
    assert m.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert m.blocks[0].mlp[0].out_features == 768
    with pytest.raises(ValueError, match="preset"):
        irkd.build_model("huge", patch_size=4)


# ----------------------------------------------------------------------------- position embedding

@pytest.mark.parametrize("distill_token", [False, True])
def test_pos_embed_identity_at_native_grid(distill_token):
    model = tiny_vit(4, distill_token)
    assert model.pos_embed_for(8, 8) is model.pos_embed


@pytest.mark.parametrize("distill_token", [False, True])
def test_pos_embed_resampled_prefix_untouched(distill_token):
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token)
    P = model.num_prefix
    assert P == (2 if distill_token else 1)
    for g in (3, 4, 5, 6, 7, 10):
        pe = model.pos_embed_for(g, g)
        assert pe.shape == (1, P + g * g, 32)
        assert torch.equal(pe[:, :P], model.pos_embed[:, :P])
        assert pe.dtype == torch.float32
    pe = model.pos_embed_for(3, 5)                       # non-square grid, explicit size
    assert pe.shape == (1, P + 15, 32)


def test_pos_embed_resampling_matches_bicubic_oracle():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True)
    P, D = 2, 32
    grid = model.pos_embed[0, P:].detach().reshape(8, 8, D).permute(2, 0, 1)[None]
    for g, antialias in ((4, True), (6, True), (10, False)):
        want = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False,
                             antialias=antialias)
        want = want[0].permute(1, 2, 0).reshape(g * g, D)
        got = model.pos_embed_for(g, g)[0, P:].detach()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_pos_embed_resampling_preserves_constants():
    model = tiny_vit(4)
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.37
        model.pos_embed[:, 1:, 5] = -1.25              # a different constant in one channel
    for g in (3, 4, 5, 6, 7, 12):
        pe = model.pos_embed_for(g, g)[0, 1:].detach()
        want = torch.full_like(pe, 0.37)
        want[:, 5] = -1.25
        torch.testing.assert_close(pe, want, atol=1e-5, rtol=0)


def test_pos_embed_gradient_flows_from_low_res_forward():
    torch.manual_seed(0)
    model = tiny_vit(4)
    params_before = [id(p) for p in model.parameters()]
    n_before = irkd.count_params(model)
    out = model(torch.randn(2, 3, 12, 12))
    out.sum().backward()
    g = model.pos_embed.grad
    assert g is not None
    assert g[:, 1:].abs().sum() > 0                    # the patch part, through the resampling
    assert g[:, 0].abs().sum() > 0                     # the cls position
    for res in (16, 20, 24, 28, 32):
        model(torch.randn(1, 3, res, res))
    assert [id(p) for p in model.parameters()] == params_before
    assert irkd.count_params(model) == n_before
    assert model.pos_embed.shape == (1, 1 + 64, 32)


# ----------------------------------------------------------------------------- attention paths

@pytest.mark.parametrize("distill_token", [False, True])
@pytest.mark.parametrize("res", [12, 32])
def test_fused_and_explicit_attention_agree(distill_token, res):
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token).eval()
    x = torch.randn(4, 3, res, res)
    with torch.no_grad():
        fused = model(x)
        explicit, attns = model(x, return_attn=True)
    if distill_token:
        for a, b in zip(fused, explicit):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    n = model.num_prefix + (res // 4) ** 2
    for a in attns:
        assert a.shape == (4, 2, n, n)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(4, 2, n), atol=1e-5, rtol=0)


def test_explicit_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attn = irkd.Attention(dim=8, heads=2)
    x = torch.randn(2, 5, 8)
    out, a = attn(x, return_attn=True)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    want_a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head dim 4) = 2
    torch.testing.assert_close(a, want_a, atol=1e-6, rtol=0)
    want = attn.proj((want_a @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- distillation token

def test_distill_token_output_convention():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    student = tiny_vit(4, distill_token=True)
    for mode in (True, False):
        student.train(mode)
        out = student(x)
        assert isinstance(out, tuple) and len(out) == 2
        out, attns = student(x, return_attn=True)
        assert isinstance(out, tuple) and len(out) == 2 and isinstance(attns, list)
    plain = tiny_vit(4, distill_token=False)
    for mode in (True, False):
        plain.train(mode)
        assert isinstance(plain(x), torch.Tensor)
        out, attns = plain(x, return_attn=True)
        assert isinstance(out, torch.Tensor)
    assert plain.head_dist is None and plain.dist_token is None


def test_distill_heads_are_separate():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True).eval()
    assert model.head is not model.head_dist
    assert model.head.weight.data_ptr() != model.head_dist.weight.data_ptr()
    cls, dist = model(torch.randn(3, 3, 16, 16))
    assert (cls - dist).abs().max() > 1e-4
    # the dist head reads token 1, the cls head token 0
    with torch.no_grad():
        model.head_dist.load_state_dict(model.head.state_dict())
        model.dist_token.copy_(model.cls_token)
        model.pos_embed[:, 1].copy_(model.pos_embed[:, 0])
    cls, dist = model(torch.randn(3, 3, 16, 16))
    torch.testing.assert_close(cls, dist, atol=1e-5, rtol=0)


def test_backward_through_dist_head():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True).train()
    cls, dist = model(torch.randn(4, 3, 16, 16))
    F.cross_entropy(dist, torch.tensor([0, 1, 2, 3])).backward()
    assert model.head_dist.weight.grad is not None
    assert model.head_dist.weight.grad.abs().sum() > 0
    assert model.dist_token.grad.abs().sum() > 0
    assert model.head.weight.grad is None              # the cls head took no part in this loss


# ----------------------------------------------------------------------------- resolution checks

def test_non_divisible_resolution_raises():
    model = tiny_vit(4)
    with pytest.raises(ValueError, match="patch size 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="patch size 4"):
        model(torch.randn(1, 3, 32, 30))
    with pytest.raises(ValueError, match="patch size"):
        irkd.ViT(dim=32, depth=1, heads=2, mlp_dim=64, patch_size=3)

