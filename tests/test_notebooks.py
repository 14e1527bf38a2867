"""notebooks.py: the notebooks' distilled student (NotebookViT, build_notebook_model).

Oracles: `notebook_forward`, the notebooks' ViTWithDistillation forward (HF embeddings, the
dist token inserted after them, HF's pre-norm blocks, the heads on the raw last-block output)
written out op by op on the model's own weights; in train mode the same transcription with
F.dropout at HF's places, which draws the same masks from the same seed only if the model
drops out at the same places in the same order; irkd.ViT built from the same seed.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import irkd
import notebooks

DIM, HEADS = 32, 2


def small(distill_token=True, **kw):
    """A 2-block, 32-dim NotebookViT with patch 4 (an 8 x 8 native grid)."""
    return notebooks.NotebookViT(dim=DIM, depth=2, heads=HEADS, mlp_dim=64, patch_size=4,
                                 distill_token=distill_token, **kw)


def randomised(model):
    """Every parameter drawn N(0, 0.3): no zero token or unit LayerNorm hides a wrong path."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def notebook_forward(m, x, p_hidden=0.0, p_attn=0.0):
    """ViTWithDistillation's forward, written out; F.dropout at HF's places when p > 0."""
    def drop(t, p):
        return F.dropout(t, p, training=True) if p > 0 else t

    B, D, ps = x.shape[0], DIM, m.patch_size
    # HF ViTEmbeddings: patch conv, cls prepended, + position table (cls row + patch rows)
    patches = F.conv2d(x, m.patch_embed.weight, m.patch_embed.bias, stride=ps)  # (B, D, gh, gw)
    gh, gw = patches.shape[-2:]
    emb = torch.cat([m.cls_token.expand(B, 1, D), patches.flatten(2).transpose(1, 2)], dim=1)
    pos = m.pos_embed
    assert pos.shape == (1, 1 + m.grid ** 2, D)
    if (gh, gw) != (m.grid, m.grid):
        # the patch rows resampled as irkd.ViT.pos_embed_for does; the cls row as it is
        grid = pos[:, 1:].reshape(1, m.grid, m.grid, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False,
                             antialias=gh < m.grid)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, D)], dim=1)
    emb = drop(emb + pos, p_hidden)
    # ViTWithDistillation: the dist token between cls and the patches, after all that
    x = emb if m.dist_token is None else \
        torch.cat([emb[:, :1], m.dist_token.expand(B, 1, D), emb[:, 1:]], dim=1)
    N, H = x.shape[1], HEADS
    for blk in m.blocks:
        h = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        # HF's query, key, value layers are the three thirds of irkd's qkv
        (wq, wk, wv), (bq, bk, bv) = blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)
        q, k, v = (F.linear(h, w, b).view(B, N, H, D // H).transpose(1, 2)
                   for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
        ctx = (drop(probs, p_attn) @ v).transpose(1, 2).reshape(B, N, D)
        x = x + drop(F.linear(ctx, blk.attn.proj.weight, blk.attn.proj.bias), p_hidden)
        h = F.layer_norm(x, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        fc1, fc2 = blk.mlp[0], blk.mlp[3]
        h = F.gelu(F.linear(h, fc1.weight, fc1.bias))                  # no dropout here
        x = x + drop(F.linear(h, fc2.weight, fc2.bias), p_hidden)
    if m.dist_token is None:
        # the CE / CL cells called the whole HF ViT, final LayerNorm included
        x = F.layer_norm(x, (D,), m.norm.weight, m.norm.bias, m.norm.eps)
        return F.linear(x[:, 0], m.head.weight, m.head.bias)
    return (F.linear(x[:, 0], m.head.weight, m.head.bias),
            F.linear(x[:, 1], m.head_dist.weight, m.head_dist.bias))


# ----------------------------------------------------------------------------- the oracle

@pytest.mark.parametrize("distill_token", [True, False])
@pytest.mark.parametrize("res", [32, 16, 24])
def test_matches_the_notebooks_forward(res, distill_token):
    model = randomised(small(distill_token)).eval()
    x = torch.randn(3, 3, res, res)
    with torch.no_grad():
        want = notebook_forward(model, x)
        for return_attn in (False, True):       # the fused and the explicit attention path
            got = model(x, return_attn=return_attn)
            got = got[0] if return_attn else got
            for g, w in zip(*((got, want) if distill_token else ((got,), (want,)))):
                assert g.shape == (3, 10)
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_dropout_at_hf_places_in_train_mode():
    # The same seed gives the same masks only if the model draws them at the oracle's places,
    # with the oracle's shapes, in its order: after the embeddings (before the dist token is
    # in), on the probabilities, after the projection, after the second linear, never after GELU.
    model = randomised(small(dropout=0.3, attn_dropout=0.2)).train()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(5)
    got, _ = model(x, return_attn=True)
    torch.manual_seed(5)
    want = notebook_forward(model, x, p_hidden=0.3, p_attn=0.2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    torch.manual_seed(5)
    swapped = notebook_forward(model, x, p_hidden=0.2, p_attn=0.3)   # the rates are not shared
    assert (got[0] - swapped[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the architecture

def test_tokens_table_and_no_final_norm():
    model = small()
    g = model.grid
    assert model.num_prefix == 2 and model.pos_prefix == 1
    assert model.pos_embed.shape == (1, 1 + g * g, DIM)
    assert torch.equal(model.dist_token, torch.zeros(1, 1, DIM))
    assert isinstance(model.norm, nn.Identity)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(n.startswith("blocks.") for n in norms)
    # the heads read the blocks' output as it is
    tokens = torch.randn(2, 2 + g * g, DIM) * 5 + 3
    cls, dist = model.classify(tokens)
    torch.testing.assert_close(cls, model.head(tokens[:, 0]), atol=0, rtol=0)
    torch.testing.assert_close(dist, model.head_dist(tokens[:, 1]), atol=0, rtol=0)
    # without the dist token, the HF ViT of the CE / CL cells: the final LayerNorm stays
    plain = small(distill_token=False)
    assert plain.num_prefix == 1 and isinstance(plain.norm, nn.LayerNorm)
    assert plain.pos_embed.shape == (1, 1 + g * g, DIM)


def test_embed_puts_the_dist_token_second_without_a_position():
    model = randomised(small()).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.embed(x)
    assert tokens.shape == (2, 2 + 4 * 4, DIM)
    torch.testing.assert_close(tokens[:, 1], model.dist_token[0].expand(2, DIM), atol=0, rtol=0)
    pe = model.pos_embed_for(4, 4)
    assert pe.shape == (1, 1 + 16, DIM)
    assert torch.equal(pe[:, :1], model.pos_embed[:, :1])        # the cls row is not resampled
    assert model.pos_embed_for(8, 8) is model.pos_embed          # identity at the native grid


def test_dropout_modules():
    model = small(dropout=0.1, attn_dropout=0.25)
    assert model.drop.p == 0.1                                   # after the embeddings
    for blk in model.blocks:
        assert blk.attn.drop.p == 0.25 and blk.attn.dropout == 0.25   # the probabilities
        assert blk.attn.proj_drop.p == 0.1                       # after the projection
        kinds = [type(m) for m in blk.mlp]
        assert kinds == [nn.Linear, nn.GELU, nn.Identity, nn.Linear, nn.Dropout]
        assert blk.mlp[4].p == 0.1                               # after the second linear


def test_attention_dropout_is_the_only_randomness():
    x = torch.randn(2, 3, 32, 32)
    for return_attn in (False, True):
        torch.manual_seed(0)
        noisy = small(attn_dropout=0.5).train()
        a = noisy(x, return_attn=return_attn)[0]
        b = noisy(x, return_attn=return_attn)[0]
        a, b = (a[0], b[0]) if return_attn else (a, b)
        assert (a - b).abs().max() > 1e-4
        torch.manual_seed(0)
        quiet = small().train()
        a, b = quiet(x)[0], quiet(x)[0]
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_same_seed_same_weights_as_irkd():
    torch.manual_seed(3)
    ref = irkd.ViT(dim=DIM, depth=2, heads=HEADS, mlp_dim=64, patch_size=4, distill_token=True)
    after_ref = torch.rand(4)
    torch.manual_seed(3)
    model = small(dropout=0.1, attn_dropout=0.1)
    assert torch.equal(torch.rand(4), after_ref)                 # nothing more was drawn
    want, got = ref.state_dict(), model.state_dict()
    assert set(got) == set(want) - {"norm.weight", "norm.bias"}
    for name, t in got.items():
        if name == "pos_embed":
            t_ref = torch.cat([want[name][:, :1], want[name][:, 2:]], dim=1)
        elif name == "dist_token":
            t_ref = torch.zeros_like(want[name])
        else:
            t_ref = want[name]
        assert torch.equal(t, t_ref), name


# ----------------------------------------------------------------------------- with the method

@pytest.mark.parametrize("res", [32, 16])
def test_rollout_runs_on_its_attention(res):
    model = small().eval()
    _, attns = model(torch.randn(2, 3, res, res), return_attn=True)
    g = res // 4
    assert len(attns) == 2 and all(a.shape == (2, HEADS, 2 + g * g, 2 + g * g) for a in attns)
    maps = irkd.attention_rollout(attns, num_prefix=model.num_prefix)
    assert maps.shape == (2, g, g) and torch.isfinite(maps).all()


@pytest.mark.parametrize("grad_checkpoint", [False, True])
def test_it_trains(grad_checkpoint):
    torch.manual_seed(0)
    model = small(dropout=0.1, attn_dropout=0.1).train()
    model.grad_checkpoint = grad_checkpoint
    y = torch.tensor([0, 3])
    (cls, dist), attns = model(torch.randn(2, 3, 16, 16), return_attn=True)
    loss = F.cross_entropy(cls, y) + F.cross_entropy(dist, y)
    loss = loss + irkd.attention_rollout(attns, num_prefix=model.num_prefix).square().mean()
    loss.backward()
    assert model.dist_token.grad is not None and model.dist_token.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith("blocks."):
            assert p.grad.abs().sum() > 0, name


def test_build_notebook_model():
    model = notebooks.build_notebook_model("custom", patch_size=4, distill_token=True,
                                           dropout=0.1, attn_dropout=0.0)
    assert isinstance(model, notebooks.NotebookViT) and isinstance(model, irkd.ViT)
    assert model.pos_embed.shape == (1, 1 + 64, irkd.PRESETS["custom"]["dim"])
    assert len(model.blocks) == irkd.PRESETS["custom"]["depth"]
    assert model.blocks[0].attn.dropout == 0.0 and model.blocks[0].attn.proj_drop.p == 0.1
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        notebooks.build_notebook_model("huge", patch_size=4)
