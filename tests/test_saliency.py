"""irkd.py section 2, saliency: attention_rollout, minmax_normalize, saliency_loss,
capture_tokens and token_gradcam.

Oracles: closed forms for uniform and identity attention; a two-layer example worked by hand
as explicit matrices (HAND_* below); a numpy re-implementation of Abnar & Zuidema's rollout
(`oracle`) for head fusion, discard and two prefix tokens; a manual min-max-then-MSE for
saliency_loss, with a manual 2x2 area average for a finer teacher map; and the Grad-CAM formula
ReLU(sum_d mean_tokens(dy/dh) * h) written out with torch.autograd.grad.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import irkd
import saliency_variants
from conftest import tiny_vit


def random_attention(B, H, N, seed):
    """Row-stochastic (B, H, N, N) attention with distinct entries (no ties for the discard)."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64), -1).float()


def oracle(attentions, token=0, num_prefix=1, head_fusion="mean", discard_ratio=0.0):
    """Abnar & Zuidema rollout, one sample at a time in numpy: fuse heads, drop the weakest
    links (never the diagonal nor a prefix column), add I, renormalise rows, multiply."""
    B, _, N, _ = attentions[0].shape
    fuse = dict(mean=lambda a: a.mean(0), max=lambda a: a.max(0),
                min=lambda a: a.min(0))[head_fusion]
    maps = []
    for b in range(B):
        R = np.eye(N)
        for layer in attentions:
            a = fuse(layer[b].double().numpy()).copy()
            if discard_ratio > 0:
                free = [(i, j) for i in range(N) for j in range(N) if i != j and j >= num_prefix]
                k = int(len(free) * discard_ratio)
                for i, j in sorted(free, key=lambda ij: a[ij])[:k]:
                    a[i, j] = 0.0
            a = (a + np.eye(N)) / 2
            a = a / a.sum(1, keepdims=True)
            R = a @ R
        g = int(round((N - num_prefix) ** 0.5))
        maps.append(R[token, num_prefix:].reshape(g, g))
    return torch.tensor(np.stack(maps), dtype=torch.float32)


def test_uniform_attention_closed_form():
    # With uniform attention U = J/N, one layer gives B = (U + I)/2 (rows already sum to 1),
    # and B^L = I/2^L + (1 - 1/2^L) U, so every patch gets (1 - 2^-L) / N from the cls row.
    N = 1 + 9
    for L in (1, 2, 3):
        attns = [torch.full((2, 3, N, N), 1.0 / N) for _ in range(L)]
        got = irkd.attention_rollout(attns)
        assert got.shape == (2, 3, 3)
        want = torch.full((2, 3, 3), (1 - 2.0 ** -L) / N)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_identity_attention_gives_no_flow_to_patches():
    N = 1 + 4
    attns = [torch.eye(N).expand(1, 2, N, N).clone() for _ in range(3)]
    torch.testing.assert_close(irkd.attention_rollout(attns), torch.zeros(1, 2, 2), atol=0, rtol=0)
    # a patch token's own row: all its flow is to itself
    got = irkd.attention_rollout(attns, token=3)
    want = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])     # token 3 = patch index 2 = (row 1, col 0)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


# The hand-worked example: N = cls + 4 patches, 2 heads, 2 layers; HAND_L<layer>H<head> is
# the (row-stochastic) attention of that head, every step written out as explicit matrices.
HAND_L1H1 = torch.tensor([[.2, .2, .2, .2, .2],
                          [.5, .5, 0., 0., 0.],
                          [.1, .2, .3, .4, 0.],
                          [0., 0., 0., 1., 0.],
                          [.25, 0., .25, 0., .5]])
HAND_L1H2 = torch.tensor([[.6, .1, .1, .1, .1],
                          [0., 1., 0., 0., 0.],
                          [.3, .3, .4, 0., 0.],
                          [.2, .2, .2, .2, .2],
                          [0., 0., 0., .5, .5]])
HAND_L2H1 = torch.tensor([[.1, .4, .1, .1, .3],
                          [.2, .2, .2, .2, .2],
                          [0., .5, .5, 0., 0.],
                          [.4, 0., 0., .6, 0.],
                          [.1, .1, .1, .1, .6]])
HAND_L2H2 = torch.tensor([[.3, 0., .3, .4, 0.],
                          [.2, .2, .2, .2, .2],
                          [.2, .2, .2, .2, .2],
                          [0., 0., 1., 0., 0.],
                          [.5, 0., 0., 0., .5]])


def test_hand_worked_two_layers():
    l1h1, l1h2, l2h1, l2h2 = HAND_L1H1, HAND_L1H2, HAND_L2H1, HAND_L2H2
    I = torch.eye(5)

    def layer(h1, h2):
        a = (h1 + h2) / 2                       # fuse heads: mean
        a = (a + I) / 2                         # residual
        return a / a.sum(1, keepdim=True)       # rows sum to 1 (already do: kept for clarity)

    R = layer(l2h1, l2h2) @ layer(l1h1, l1h2)   # later layer on the left
    want = R[0, 1:].reshape(1, 2, 2)
    attns = [torch.stack([l1h1, l1h2])[None], torch.stack([l2h1, l2h2])[None]]
    got = irkd.attention_rollout(attns)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # and the same numbers by hand for one entry: patch 1 (column 1)
    A1 = ((l1h1 + l1h2) / 2 + I) / 2
    A2 = ((l2h1 + l2h2) / 2 + I) / 2
    by_hand = sum(A2[0, m] * A1[m, 1] for m in range(5))
    assert abs(got[0, 0, 0].item() - by_hand.item()) < 1e-6
    # the order matters: A1 @ A2 is a different answer
    assert (got[0] - (A1 @ A2)[0, 1:].reshape(2, 2)).abs().max() > 1e-3


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_matches_oracle(head_fusion):
    attns = [random_attention(3, 4, 1 + 16, seed=s) for s in range(3)]
    got = irkd.attention_rollout(attns, head_fusion=head_fusion)
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, oracle(attns, head_fusion=head_fusion), atol=1e-5, rtol=0)


def test_head_fusions_differ():
    attns = [random_attention(2, 4, 1 + 4, seed=s) for s in range(2)]
    maps = {h: irkd.attention_rollout(attns, head_fusion=h) for h in ("mean", "max", "min")}
    assert (maps["max"] - maps["mean"]).abs().max() > 1e-3
    assert (maps["min"] - maps["mean"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="head_fusion"):
        irkd.attention_rollout(attns, head_fusion="median")


@pytest.mark.parametrize("ratio", [0.3, 0.9])
def test_discard_matches_oracle(ratio):
    attns = [random_attention(3, 2, 1 + 9, seed=10 + s) for s in range(2)]
    got = irkd.attention_rollout(attns, discard_ratio=ratio)
    torch.testing.assert_close(got, oracle(attns, discard_ratio=ratio), atol=1e-5, rtol=0)
    assert (got - irkd.attention_rollout(attns)).abs().max() > 1e-3   # the discard did something


def test_discard_is_per_sample():
    attns = [random_attention(2, 2, 1 + 4, seed=20 + s) for s in range(2)]
    both = irkd.attention_rollout(attns, discard_ratio=0.5)
    for b in range(2):
        alone = irkd.attention_rollout([a[b:b + 1] for a in attns], discard_ratio=0.5)
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-6, rtol=0)
    # sample 1 with sample 0's mask would be a different map
    swapped = irkd.attention_rollout([a.flip(0) for a in attns], discard_ratio=0.5)
    torch.testing.assert_close(swapped.flip(0), both, atol=1e-6, rtol=0)


def protected_attention(num_prefix):
    """One layer, N = num_prefix + 4, where the diagonal and the prefix columns hold the
    smallest weights, so a discard that did not protect them would drop them first."""
    N = num_prefix + 4
    a = torch.full((N, N), 1.0)
    a += torch.arange(N * N, dtype=torch.float32).view(N, N) * 0.01     # distinct values
    a.fill_diagonal_(0.05)
    a[:, :num_prefix] = 0.02
    a[range(N), range(N)] = 0.05
    a = a / a.sum(1, keepdim=True)
    return a, [a.expand(1, 1, N, N).clone()]


@pytest.mark.parametrize("num_prefix", [1, 2])
def test_discard_never_drops_diagonal_or_prefix_columns(num_prefix):
    # Every row read through `token`, against the oracle.
    a, attns = protected_attention(num_prefix)
    for token in range(len(a)):
        got = irkd.attention_rollout(attns, token=token, num_prefix=num_prefix,
                                     discard_ratio=0.75)
        want = oracle(attns, token=token, num_prefix=num_prefix, discard_ratio=0.75)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_prefix", [1, 2])
def test_discard_keeps_diagonal_and_renormalises_with_prefix_columns(num_prefix):
    # Direct check on one row: the diagonal survives, and the row is renormalised including
    # the prefix columns (dropping them would change every patch value).
    a, attns = protected_attention(num_prefix)
    N = len(a)
    kept = a.clone()
    free = [(i, j) for i in range(N) for j in range(N) if i != j and j >= num_prefix]
    for ij in sorted(free, key=lambda ij: kept[ij].item())[:int(len(free) * 0.75)]:
        kept[ij] = 0
    row = (kept[0] + torch.eye(N)[0]) / 2
    row = row / row.sum()
    got = irkd.attention_rollout(attns, token=0, num_prefix=num_prefix, discard_ratio=0.75)
    torch.testing.assert_close(got.flatten(), row[num_prefix:], atol=1e-6, rtol=0)


def test_two_prefix_tokens():
    N = 2 + 9
    attns = [random_attention(2, 3, N, seed=30 + s) for s in range(2)]
    got_dist = irkd.attention_rollout(attns, token=1, num_prefix=2)
    got_cls = irkd.attention_rollout(attns, token=0, num_prefix=2)
    assert got_dist.shape == (2, 3, 3)
    torch.testing.assert_close(got_dist, oracle(attns, token=1, num_prefix=2), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_cls, oracle(attns, token=0, num_prefix=2), atol=1e-5, rtol=0)
    assert (got_dist - got_cls).abs().max() > 1e-3
    # explicit: row 1, columns 2: (the dist token's column is not a patch)
    R = torch.eye(N, dtype=torch.float64)
    for a in attns:
        m = (a.double().mean(1) + torch.eye(N, dtype=torch.float64)) / 2
        R = (m / m.sum(-1, keepdim=True)) @ R
    torch.testing.assert_close(got_dist, R[:, 1, 2:].reshape(2, 3, 3).float(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="square"):
        irkd.attention_rollout(attns, num_prefix=1)     # 10 "patches" is not a square grid


def test_rollout_of_a_model_is_differentiable():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True)
    (cls, dist), attns = model(torch.randn(2, 3, 16, 16), return_attn=True)
    m = irkd.attention_rollout(attns, num_prefix=2)
    assert m.shape == (2, 4, 4)
    target = torch.rand(2, 4, 4)
    irkd.saliency_loss(m, target).backward()
    for blk in model.blocks:
        assert blk.attn.qkv.weight.grad is not None
        assert blk.attn.qkv.weight.grad.abs().sum() > 0


# Oracle: one layer of uniform attention by hand. bf16 stores 1/5 as u = 0.2001953125 (exactly);
# (u + I)/2 renormalised puts u / (5u + 1) = 0.2001953125 / 2.0009765625 = 0.10004880...
# on every patch of the cls row. A product kept in bf16 would land on its grid (steps of
# 2^-11 near 0.1: 0.09998 or 0.10010), 5e-5 away; float32 is within 1e-6. The map is made
# where the attention is: on the CPU, on "meta" (no data: a constant made on the default
# device would fail to mix with it) and on CUDA where there is one.
def test_rollout_of_bf16_attention_is_float32_on_the_input_device():
    u = torch.tensor(0.2, dtype=torch.bfloat16)
    assert u.item() == 0.2001953125
    want = 0.2001953125 / 2.0009765625
    devices = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        attns = [torch.full((1, 2, 5, 5), 0.2, dtype=torch.bfloat16, device=device)]
        out = irkd.attention_rollout(attns)
        assert out.device == torch.device(device) or (device == "cuda" and out.is_cuda), device
        assert out.dtype == torch.float32 and out.shape == (1, 2, 2), device
        if device != "meta":
            torch.testing.assert_close(out.cpu(), torch.full((1, 2, 2), want), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- saliency_loss

def test_saliency_zero_for_identical_maps():
    torch.manual_seed(0)
    m = torch.rand(3, 4, 4)
    assert irkd.saliency_loss(m, m.clone()).item() < 1e-12


def test_saliency_invariant_to_affine_scaling():
    torch.manual_seed(0)
    s, t = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    base = irkd.saliency_loss(s, t)
    assert base.item() > 1e-3
    torch.testing.assert_close(irkd.saliency_loss(7.5 * s + 2.0, t), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(irkd.saliency_loss(s, 0.05 * t - 3.0), base, atol=1e-5, rtol=0)
    # per image: scaling one image differently from the other does not matter either
    scale = torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    torch.testing.assert_close(irkd.saliency_loss(s * scale, t), base, atol=1e-6, rtol=0)


def test_saliency_matches_manual_minmax_mse():
    torch.manual_seed(0)
    s, t = torch.rand(2, 3, 3), torch.rand(2, 3, 3)

    def norm(m):
        lo = m.amin(dim=(1, 2), keepdim=True)
        hi = m.amax(dim=(1, 2), keepdim=True)
        return (m - lo) / (hi - lo)

    want = ((norm(s) - norm(t)) ** 2).mean()
    torch.testing.assert_close(irkd.saliency_loss(s, t), want, atol=1e-6, rtol=0)


def test_saliency_flat_map_is_finite():
    flat = torch.full((2, 4, 4), 0.25, requires_grad=True)
    t = torch.rand(2, 4, 4)
    loss = irkd.saliency_loss(flat, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(flat.grad).all()
    # a flat map normalises to zeros
    torch.testing.assert_close(irkd.minmax_normalize(flat.detach()), torch.zeros(2, 4, 4),
                               atol=0, rtol=0)
    both_flat = irkd.saliency_loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))
    assert both_flat.item() == 0.0


def test_saliency_pools_finer_teacher_map():
    torch.manual_seed(0)
    s, t = torch.rand(2, 4, 4), torch.rand(2, 8, 8)
    pooled = t.view(2, 4, 2, 4, 2).mean(dim=(2, 4))          # manual 2x2 area average
    torch.testing.assert_close(irkd.saliency_loss(s, t), irkd.saliency_loss(s, pooled),
                               atol=1e-6, rtol=0)
    # and it is not just comparing to a nearest/strided subsample
    strided = t[:, ::2, ::2]
    assert abs(irkd.saliency_loss(s, t).item() - irkd.saliency_loss(s, strided).item()) > 1e-4


# ----------------------------------------------------------------------------- Grad-CAM saliency

def test_token_gradcam_matches_manual_formula():
    torch.manual_seed(0)
    model = tiny_vit(4, distill_token=True)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([3, 7])
    with saliency_variants.capture_tokens(model, [0, 1]) as tokens:
        (cls, _), _ = model(x, return_attn=True)
    assert len(tokens) == 2 and tokens[0].shape == (2, 2 + 16, 32)
    cam = saliency_variants.token_gradcam(cls, tokens, y, num_prefix=2, create_graph=True)
    assert cam.shape == (2, 4, 4)
    grads = torch.autograd.grad(cls[0, 3] + cls[1, 7], tokens, retain_graph=True)
    want = torch.stack([F.relu((g[:, 2:].mean(1, keepdim=True) * h[:, 2:]).sum(-1))
                        for h, g in zip(tokens, grads)])
    torch.testing.assert_close(cam, want.mean(0).view(2, 4, 4), atol=1e-6, rtol=1e-5)
    # second order: a loss on the map reaches the student's weights
    irkd.saliency_loss(cam, torch.rand(2, 4, 4)).backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
