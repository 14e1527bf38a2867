"""IRKD: inter-resolution knowledge distillation for Vision Transformers on CIFAR-10.

The method alone, read top to bottom:

  1. model       ViT (teacher and students, with an optional distillation token), PRESETS
  2. saliency    attention_rollout, saliency_loss; token Grad-CAM; the notebooks' attn and probe
  3. losses      kd_loss, IRKDLoss (owns the frozen teacher's forward)
  4. config      Config: every field of a run, checked before any work
  5. training    train_step, train(): the 12 -> 32 px resolution curriculum
  6. evaluation  evaluate(), evaluate_all(): every head at every resolution 12..32

The data (data.py) and a run's bookkeeping (runs.py) sit beside it. Nothing runs at
import time; experiments.py and teacher.py are the entry points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import data as data_lib
import runs
from data import RESOLUTIONS, normalize, resize

# =============================================================================
# 1. Model
# =============================================================================

PRESETS = {
    "custom": dict(dim=128, depth=4, heads=4, mlp_dim=256),    # ~0.55 M parameters
    "tiny": dict(dim=192, depth=12, heads=3, mlp_dim=768),     # ~5.4 M (ViT-Tiny / DeiT-Ti)
    "small": dict(dim=384, depth=12, heads=6, mlp_dim=1536),   # ~21.5 M (ViT-Small / DeiT-S)
}


class Attention(nn.Module):
    """Multi-head self-attention; returns its probabilities too when asked (for saliency)."""

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        # 1/sqrt(head dim) keeps the logits at unit scale; SDPA's default is the same value
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)         # q, k and v of every head in one matmul
        self.proj = nn.Linear(dim, dim)            # mixes the heads' outputs
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        # B batch, N tokens (prefix + patches), D width, H heads of D/H channels each
        B, N, D = x.shape
        H = self.heads
        qkv = self.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D/H)
        q, k, v = qkv.unbind(0)                                                # each (B, H, N, D/H)
        attn = None
        if return_attn:
            # Explicit path: the probabilities are a named step so rollout can use them.
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, H, N, N)
            out = self.drop(attn) @ v                                          # (B, H, N, D/H)
        else:
            # Fused path (flash / memory-efficient kernels): same maths, no N x N tensor kept.
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0)     # (B, H, N, D/H)
        out = out.transpose(1, 2).reshape(B, N, D)     # (B, N, D): the heads side by side again
        return self.drop(self.proj(out)), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        # pre-norm: each sublayer sees a normalised copy; the residual stream itself is
        # never normalised, so every block can only add to it
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        # the MLP works on each token alone: widen to mlp_dim, GELU, back to dim
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        # x: (B, N, D) tokens; attn: (B, heads, N, N) probabilities, or None
        a, attn = self.attn(self.norm1(x), return_attn)
        x = x + a                                  # tokens exchange information
        x = x + self.mlp(self.norm2(x))            # each token is transformed alone; (B, N, D)
        return x, attn


class ViT(nn.Module):
    """A plain ViT; with distill_token=True, a DeiT-style student with two heads.

    Tokens are [cls, (dist), patch_1 ... patch_n]. One learned position embedding
    for the native grid (img_size / patch_size) is resampled to the grid of
    whatever resolution comes in, so the same model runs at 12 px and at 32 px.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, patch_size: int,
                 img_size: int = 32, num_classes: int = 10, distill_token: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide the image size {img_size}")
        self.patch_size, self.grid = patch_size, img_size // patch_size  # grid: patches per side
        self.num_prefix = 2 if distill_token else 1                      # cls (+ dist) token
        # a p x p convolution with stride p: one shared linear map applied to every patch
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distill_token else None
        # a row per prefix token and per patch of the native grid; pos_embed_for resamples it
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid ** 2, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        # the heads read the final cls token and dist token; the patches feed them via attention
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill_token else None
        # True: keep only each block's input for backward and recompute the block there
        # (train() sets it from Config.checkpoint): far less memory, the same numbers
        self.grad_checkpoint = False
        self.apply(self._init_weights)
        # the learned tokens start as small random vectors (std 0.02, as in ViT / DeiT)
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module):
        # ViT / DeiT init for Linear and LayerNorm; the patch convolution keeps PyTorch's default
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pos_embed_for(self, gh: int, gw: int) -> torch.Tensor:
        """The position embedding for a gh x gw grid: bicubic resampling of the native table.

        Identity at the native grid; prefix tokens are never resampled. Done in
        float32 with an explicit output size, and from the one parameter, so
        every stage of the curriculum trains the same table.
        """
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        prefix, patches = self.pos_embed[:, :self.num_prefix], self.pos_embed[:, self.num_prefix:]
        D = patches.shape[-1]
        # the rows as a D-channel image of the native g x g grid, so it can be resampled
        patches = (patches.float().reshape(1, self.grid, self.grid, D)
                   .permute(0, 3, 1, 2))                                   # (1, D, g, g)
        # antialiasing only where the grid shrinks, so no row is skipped over
        patches = F.interpolate(patches, size=(gh, gw), mode="bicubic", align_corners=False,
                                antialias=gh < self.grid or gw < self.grid)
        patches = patches.permute(0, 2, 3, 1).reshape(1, gh * gw, D)      # (1, gh*gw, D)
        return torch.cat([prefix, patches.to(prefix.dtype)], dim=1)        # (1, N, D)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, N, D): patches, prefix tokens, positions."""
        # B batch, H x W pixels, p patch size, gh x gw patches, D width,
        # N = num_prefix + gh*gw tokens
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"resolution {H}x{W} is not divisible by the patch size {p}; "
                             f"use a multiple of {p}")
        x = self.patch_embed(x)                                   # (B, D, H/p, W/p)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)                          # (B, gh*gw, D)
        prefix = [self.cls_token.expand(B, -1, -1)]               # (B, 1, D): one shared token
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)                        # (B, N = num_prefix + gh*gw, D)
        return self.drop(x + self.pos_embed_for(gh, gw))          # positions for this grid

    def classify(self, x: torch.Tensor):
        """The last block's tokens (B, N, D) -> cls logits (B, C), or (cls, dist) logits."""
        x = self.norm(x)
        logits = self.head(x[:, 0])                               # (B, C) from the cls token
        if self.head_dist is not None:
            # Always both heads, in training and evaluation: the caller decides how to combine.
            logits = (logits, self.head_dist(x[:, 1]))            # + (B, C) from the dist token
        return logits

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        x = self.embed(x)                                         # (B, N, D)
        attentions = []                                           # per block (B, heads, N, N)
        for block in self.blocks:
            if self.grad_checkpoint and torch.is_grad_enabled():
                x, attn = checkpoint(block, x, return_attn, use_reentrant=False)
            else:
                x, attn = block(x, return_attn)
            attentions.append(attn)
        logits = self.classify(x)
        return (logits, attentions) if return_attn else logits


def build_model(preset: str, *, patch_size: int, distill_token: bool = False,
                dropout: float = 0.0) -> ViT:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid: {', '.join(PRESETS)}")
    return ViT(**PRESETS[preset], patch_size=patch_size, distill_token=distill_token,
               dropout=dropout)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================
# 2. Saliency: attention rollout (Abnar & Zuidema, 2020)
# =============================================================================

def rollout_step(rollout: torch.Tensor | None, attn: torch.Tensor, num_prefix: int = 1,
                 head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """One layer of attention rollout: (B, N, N) flow so far (None before the first layer)
    and this layer's (B, heads, N, N) probabilities -> the flow through this layer too."""
    # B batch, N tokens = num_prefix + g*g patches; a layer's row i: where token i reads from
    B, _, N, _ = attn.shape
    eye = torch.eye(N, device=attn.device)
    if rollout is None:
        rollout = eye.expand(B, N, N)                              # (B, N, N): before any layer
    attn = attn.float()                                            # a bf16 product would drift
    # one (B, N, N) matrix per layer: the heads fused into one flow
    if head_fusion == "mean":
        a = attn.mean(dim=1)                                       # (B, N, N)
    elif head_fusion == "max":
        a = attn.amax(dim=1)
    elif head_fusion == "min":
        a = attn.amin(dim=1)
    else:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; use mean, max or min")
    if discard_ratio > 0:
        # Drop the weakest links of each sample, never attention to a prefix token
        # (column < num_prefix) nor a token's attention to itself (the diagonal).
        protected = eye.bool().clone()
        protected[:, :num_prefix] = True
        # |diagonal| + |prefix columns| - their overlap, counted on the host: summing the
        # mask would be a device-to-host sync per layer on CUDA.
        k = int((N * N - (N + num_prefix * N - num_prefix)) * discard_ratio)
        if k > 0:
            scores = a.masked_fill(protected, float("inf")).flatten(1)  # (B, N*N)
            drop = scores.topk(k, dim=1, largest=False).indices
            a = a.flatten(1).scatter(1, drop, 0.0).view(B, N, N)      # (B, N, N)
    a = (a + eye) / 2                                              # the residual connection
    a = a / a.sum(dim=-1, keepdim=True)                            # rows sum to one again
    return a @ rollout                                             # later layers on the left


def rollout_map(rollout: torch.Tensor, token: int = 0, num_prefix: int = 1) -> torch.Tensor:
    """The (B, N, N) flow -> row `token` over the patch columns, as a (B, gh, gw) map."""
    B, N, _ = rollout.shape
    n_patches = N - num_prefix
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"{n_patches} patch tokens (N={N}, num_prefix={num_prefix}) "
                         "is not a square grid")
    return rollout[:, token, num_prefix:].reshape(B, g, g)        # (B, gh, gw)


def attention_rollout(attentions: list[torch.Tensor], token: int = 0, num_prefix: int = 1,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """How much each patch flows into `token` through all layers -> (B, gh, gw).

    attentions: per layer (B, heads, N, N) probabilities. Pure, batched and
    differentiable, so the student's map can be trained. Per layer: fuse the heads,
    optionally drop the weakest links, add the identity (the residual), renormalise the
    rows, multiply onto the flow so far (rollout_step); then read row `token`.
    """
    rollout = None
    for attn in attentions:
        rollout = rollout_step(rollout, attn, num_prefix, head_fusion, discard_ratio)
    return rollout_map(rollout, token, num_prefix)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map to [0, 1]; eps keeps a flat map finite (it becomes all zeros)."""
    flat = maps.flatten(1)                                 # (B, everything after the batch)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)   # back to the maps' shape


def saliency_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE between min-max normalised maps (B, gh, gw).

    A finer teacher map is area-pooled to the student's grid first.
    """
    if teacher_map.shape[-2:] != student_map.shape[-2:]:
        # (B, 1, gh', gw') -> pooled to (B, 1, gh, gw) -> (B, gh, gw)
        teacher_map = F.adaptive_avg_pool2d(teacher_map[:, None], student_map.shape[-2:])[:, 0]
    return F.mse_loss(minmax_normalize(student_map), minmax_normalize(teacher_map))


class capture_tokens:
    """Context manager that records the output tokens (B, N, D) of chosen blocks during a forward.

    Forward hooks keep ViT.forward free of a third return mode; Grad-CAM needs the
    tokens themselves (not copies) so gradients can be taken with respect to them.
    """

    def __init__(self, model: nn.Module, layers=()):
        self.model, self.layers, self.tokens, self.handles = model, list(layers), [], []

    def __enter__(self) -> list[torch.Tensor]:
        for i in self.layers:
            hook = lambda module, inputs, output: self.tokens.append(output[0])  # noqa: E731
            self.handles.append(self.model.blocks[i].register_forward_hook(hook))
        return self.tokens

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def grad_layers(depth: int) -> list[int]:
    """The layers of saliency="grad" (this repository's choice, not the notebooks'): blocks 0, 1
    and the last for models of up to 4 blocks, else all. The last block's map is all zero (see
    token_gradcam), so it only rescales the layer average, which min-max normalisation removes."""
    return [0, 1, depth - 1] if depth <= 4 else list(range(depth))


def token_gradcam(logits: torch.Tensor, tokens: list[torch.Tensor], target: torch.Tensor,
                  num_prefix: int, create_graph: bool) -> torch.Tensor:
    """Grad-CAM over patch tokens through the rest of the network, averaged over the captured
    layers -> (B, gh, gw). This repository's variant; it is not what the notebooks ran (see
    probe_gradient_maps and cls_attention_maps for those).

    Per layer: channel weights = the gradient of the target-class score averaged over the
    *patch* tokens only (averaging over all tokens let the class and distillation tokens,
    whose gradients are far larger, set the weights); map = ReLU(sum over channels of
    weight * patch token). The heads read only the prefix tokens after the final norm, so the
    last block's patch tokens get exactly zero gradient and that layer's map is all zero: only
    blocks before the last (or a probe, saliency="probe") carry signal. With create_graph=True
    the map stays differentiable (second order), so a loss on it trains the student.
    """
    # logits (B, C); tokens and their grads: per captured layer (B, N, D)
    score = logits.float().gather(1, target[:, None]).sum()    # samples are independent: sum
    grads = torch.autograd.grad(score, tokens, create_graph=create_graph)
    cams = [F.relu((g[:, num_prefix:].float().mean(dim=1, keepdim=True)
                    * h[:, num_prefix:].float()).sum(-1))                      # (B, n_patches)
            for h, g in zip(tokens, grads)]
    cam = torch.stack(cams).mean(0)                       # (L, B, n_patches) -> (B, n_patches)
    side = math.isqrt(cam.shape[1])
    return cam.reshape(-1, side, side)                                         # (B, gh, gw)


# The two saliency methods the original notebooks (github.com/Soobiwan/IRKD) ran, replayed.
# Notebook cells are numbered from 0 (markdown included); line numbers are within the cell.
SALIENCY = ("rollout", "grad", "attn", "probe")    # the valid values of Config.saliency


def _square(n: int) -> int:
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch tokens is not a square grid")
    return g


def area_pool_grid(maps: torch.Tensor, size) -> torch.Tensor:
    """Area-pool (..., gh, gw) maps to the grid `size`, as saliency_loss pools a teacher map."""
    size = tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    # every leading dim folded into the batch: (M, 1, gh, gw), one channel per map
    pooled = F.adaptive_avg_pool2d(maps.reshape(-1, 1, *maps.shape[-2:]), size)
    return pooled.view(*maps.shape[:-2], *size)                    # (..., size[0], size[1])


def cls_attention_maps(attentions: list[torch.Tensor], num_prefix: int) -> torch.Tensor:
    """Class-token -> patch attention of every layer, mean over heads -> (L, B, gh, gw), raw.

    Replays process_attention() of P_4_ALL.ipynb (the ViT-Tiny p4 KD+CL+Sal cell, cell 14,
    lines 107-119): attentions[l].mean(heads)[:, 0, num_prefix:] on a square grid. No
    gradients and no rollout; attn_saliency_loss does the min-max normalisation and the MSE.
    attentions: per layer (B, heads, N, N) probabilities, tokens [cls, (dist), patches].
    """
    a = torch.stack([layer.float().mean(dim=1)[:, 0, num_prefix:]
                     for layer in attentions])                                 # (L, B, n)
    g = _square(a.shape[-1])
    return a.reshape(*a.shape[:2], g, g)                                       # (L, B, gh, gw)


def attn_saliency_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """saliency="attn": per-image min-max (over patches), MSE per layer, averaged over layers.

    Replays multi_layer_attention_loss() of P_4_ALL.ipynb (cell 14, lines 121-146): layer i of
    the student against layer i of the teacher, over the layers both have (the notebook looped
    over range(12) and skipped missing layers), eps 1e-8. Where the grids differ, the teacher's
    raw maps are area-pooled to the student's grid (as saliency_loss does); the notebook would
    have resized the student's normalised map bilinearly, a branch its runs never reached.
    """
    L = min(len(student_maps), len(teacher_maps))
    s = student_maps[:L].flatten(0, 1)                                         # (L*B, gh, gw)
    t = area_pool_grid(teacher_maps[:L], student_maps.shape[-2:]).flatten(0, 1)  # (L*B, gh, gw)
    # every layer has the same B*gh*gw terms, so one MSE over all = the mean of layer MSEs
    return F.mse_loss(minmax_normalize(s, 1e-8), minmax_normalize(t, 1e-8))


def probe_layers(depth: int) -> list[int]:
    """The blocks saliency="probe" reads, in the student and (same indices) in the teacher:
    [0, 2, 3] for a 4-block model (P_2_OUR_STUDENT_SAL_MAP.ipynb's custom student), else all
    (P_2_SaliencyMap.ipynb used all 12 blocks of ViT-Tiny)."""
    return [0, 2, 3] if depth == 4 else list(range(depth))


def probe_gradient_maps(tokens: list[torch.Tensor], head: nn.Module, num_prefix: int,
                        create_graph: bool) -> torch.Tensor:
    """Per-class gradient maps of a linear probe on each layer's patches -> (L, B, gh, gw, C), raw.

    Replays SaliencyDistiller.compute_attention_map / saliency_loss of
    P_2_OUR_STUDENT_SAL_MAP.ipynb (cell 1, lines 91-132) and P_2_SaliencyMap.ipynb (cell 1,
    lines 101-142). Per captured block output (tokens[l], (B, N, D)): P = its patch tokens,
    with no norm; probe logits = head(mean over patches of P), `head` being the model's final
    class-token classifier; for every class c, w_c = the gradient of probe logit c w.r.t. P,
    averaged over patches; map_c[patch] = sum over channels of ReLU(w_c * P[patch]).
    probe_saliency_loss normalises the maps jointly over patches x classes per image.

    Since the probe input is the patch mean z, mean_n d logit_c / d P_n = (d logit_c / d z) / n:
    one small backward per class through the head alone. sum_k ReLU(w_k P_k) is computed as
    ReLU(P) @ ReLU(w) + ReLU(-P) @ ReLU(-w) (exact, ReLU(ab) = ReLU(a)ReLU(b) + ReLU(-a)ReLU(-b)),
    two matmuls instead of a (B, n, C, D) tensor. create_graph=True (the student, as in the
    notebooks) keeps the maps differentiable w.r.t. the features and, second order, the head's
    weights; False (the teacher) returns maps without a graph.
    """
    maps = []
    with torch.autocast(tokens[0].device.type, enabled=False), torch.enable_grad():
        for h in tokens:
            P = h[:, num_prefix:].float()                                          # (B, n, D)
            if not create_graph:
                P = P.detach()
            n = P.shape[1]
            z = P.mean(dim=1)                                                      # (B, D)
            if not z.requires_grad:
                z.requires_grad_(True)
            logits = head(z)                                                       # (B, C)
            w = torch.stack([torch.autograd.grad(logits[:, c].sum(), z, retain_graph=True,
                                                 create_graph=create_graph)[0]
                             for c in range(logits.shape[1])], dim=1) / n          # (B, C, D)
            if not create_graph:
                w = w.detach()
            m = (F.relu(P) @ F.relu(w).transpose(1, 2)
                 + F.relu(-P) @ F.relu(-w).transpose(1, 2))                        # (B, n, C)
            g = _square(n)
            maps.append(m.reshape(m.shape[0], g, g, m.shape[-1]))                 # (B, gh, gw, C)
    return torch.stack(maps)                                                   # (L, B, gh, gw, C)


def probe_saliency_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """saliency="probe": per-image min-max over patches x classes jointly, MSE per layer,
    summed over layers (P_2_OUR_STUDENT_SAL_MAP.ipynb cell 1 lines 106-109 and 128; eps 1e-6).

    Both map stacks come from the same layer indices (probe_layers). The notebooks' teacher and
    student always had the same grid; here a finer teacher grid is area-pooled to the student's
    before normalising, as saliency_loss does.
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student layers against "
                         f"{len(teacher_maps)} teacher layers")
    # maps are (L, B, gh, gw, C): the classes move out of the way of the pooled grid and back
    t = area_pool_grid(teacher_maps.movedim(-1, -3), student_maps.shape[-3:-1]).movedim(-3, -1)
    s, t = (minmax_normalize(student_maps.flatten(0, 1), 1e-6),             # (L*B, gh, gw, C)
            minmax_normalize(t.flatten(0, 1), 1e-6))
    return ((s - t) ** 2).reshape(len(student_maps), -1).mean(dim=1).sum()  # (L, ...): per layer

# =============================================================================
# 3. Losses
# =============================================================================

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            hard: bool = False) -> torch.Tensor:
    """Soft KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    The KL is summed over classes and divided by the batch size ("batchmean"),
    the textbook scale. Dividing by B*C instead (as DeiT's code does) would
    shrink the term tenfold on CIFAR-10. hard=True is DeiT's hard distillation:
    cross-entropy against the teacher's argmax.
    """
    if hard:
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    T = temperature
    log_p_student = F.log_softmax(student_logits.float() / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T


class IRKDLoss(nn.Module):
    """The student's whole objective; owns the frozen teacher and its forward pass.

        loss = (1 - alpha) * CE(cls head, y) + alpha * KD(dist head, teacher)
               + gamma * Sal(student, teacher)

    (the notebooks' code); loss_form="paper" is the paper's Eq. 1, CE + alpha * KD + gamma * Sal.

    Sal by `saliency`: "rollout" MSE of min-max normalised attention-rollout maps (the
    default); "grad" the same on token_gradcam maps (this repository's variant); "attn" and
    "probe" replay the notebooks' two methods (attn_saliency_loss, probe_saliency_loss).
    Without a teacher it is plain cross-entropy (with optional label smoothing).
    """

    def __init__(self, teacher: nn.Module | None = None, *, alpha: float = 0.5,
                 temperature: float = 4.0, hard: bool = False, gamma: float = 0.0,
                 label_smoothing: float = 0.0, saliency: str = "rollout",
                 loss_form: str = "convex"):
        super().__init__()
        if loss_form not in ("convex", "paper"):
            raise ValueError(f"loss_form={loss_form!r}; valid: convex, paper")
        # the weight of CE beside alpha * KD: 1 - alpha (the code), or 1 (the paper's Eq. 1)
        self.ce_weight = 1 - alpha if loss_form == "convex" else 1.0
        self.teacher = teacher
        if teacher is not None:
            # frozen: no dropout, and no parameter gradients (the student's step never moves it)
            teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.hard = alpha, temperature, hard
        self.gamma, self.label_smoothing, self.saliency = gamma, label_smoothing, saliency
        if saliency not in SALIENCY:
            raise ValueError(f"saliency={saliency!r}; valid: {', '.join(SALIENCY)}")
        # what the student's forward must expose: the explicit attention path (rollout and attn
        # read the probabilities; grad differentiates twice through the attention, which the
        # fused kernels cannot) and/or chosen blocks' output tokens (grad, probe: token_layers)
        on = teacher is not None and gamma > 0
        self.needs_attn = on and saliency != "probe"
        self.needs_tokens = on and saliency in ("grad", "probe")

    def token_layers(self, depth: int) -> list[int]:
        """The student's blocks whose output tokens this loss reads (train_step captures them)."""
        if not self.needs_tokens:
            return []
        return grad_layers(depth) if self.saliency == "grad" else probe_layers(depth)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, ever
        return self

    def forward(self, outputs, internals, y, teacher_input=None, student=None):
        """The loss of one batch -> (loss, parts), parts detached for logging.

        Args:
            outputs: the student's logits (B, C), or its (cls, dist) logits, each (B, C).
            internals: what the saliency term reads, used only when gamma > 0: the student's
                per-layer attention probabilities, each (B, heads, N, N) ("rollout",
                "attn"), or its blocks' output tokens (B, N, D) at token_layers(depth)
                ("grad", "probe").
            y: labels (B,), or soft targets (B, C) (mixup / cutmix).
            teacher_input: the teacher's view of the same images (B, 3, H, W): the student's
                own view, or the 32-px one (teacher_res="full").
            student: the student module; saliency="probe" only (its head is the probe).
        """
        # B batch, C classes; y: (B,) labels, or (B, C) soft targets
        cls_logits = outputs[0] if isinstance(outputs, tuple) else outputs      # (B, C)
        ce = F.cross_entropy(cls_logits, y, label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        if self.teacher is None:
            return ce, parts
        if self.gamma == 0:
            # KD alone reads only the teacher's logits: no graph, and the fused attention path
            with torch.no_grad():
                t_logits = self.teacher(teacher_input)                          # (B, C)
        else:
            if self.saliency == "probe" and student is None:
                raise ValueError("saliency='probe' needs student= (its head is the probe)")
            layers = self.token_layers(len(student.blocks)) if self.saliency == "probe" else None
            t_logits, t_map = self.teacher_saliency(teacher_input, y, layers)
        # the dist head (outputs[1]) learns from the teacher, the cls head from the labels
        kd = kd_loss(outputs[1], t_logits, self.temperature, self.hard)
        loss = self.ce_weight * ce + self.alpha * kd
        parts["kd"] = kd.detach()
        if self.gamma > 0:
            # num_prefix=2: a distilled student has [cls, dist] before its patches; each loss
            # pools a finer teacher map (t_map) to the student's grid
            if self.saliency == "rollout":
                s_map = attention_rollout(internals, num_prefix=2)  # (B, gh, gw), the cls row
                sal = saliency_loss(s_map, t_map)
            elif self.saliency == "grad":
                s_map = token_gradcam(cls_logits, internals, y, num_prefix=2,
                                      create_graph=True)            # (B, gh, gw)
                sal = saliency_loss(s_map, t_map)
            elif self.saliency == "attn":
                # (L, B, gh, gw): the raw cls-row attention of every layer
                sal = attn_saliency_loss(cls_attention_maps(internals, num_prefix=2), t_map)
            else:                                                            # probe
                s_maps = probe_gradient_maps(internals, student.head, num_prefix=2,
                                             create_graph=True)     # (L, B, gh, gw, C)
                sal = probe_saliency_loss(s_maps, t_map)
            loss = loss + self.gamma * sal
            parts["sal"] = sal.detach()
        return loss, parts

    def teacher_saliency(self, x: torch.Tensor, y: torch.Tensor, layers: list[int] | None = None):
        """The teacher's logits and saliency map(s), both without a graph to the student.

        layers: saliency="probe" only, the student's probe layers, read at the same indices
        (as the notebooks did); None = probe_layers of the teacher's own depth.
        """
        t = self.teacher
        if self.saliency == "rollout":
            # folded in as the forward goes: one layer's attention in memory at a time, not all
            with torch.no_grad():
                h, flow = t.embed(x), None                                   # (B, N, D)
                for block in t.blocks:
                    h, attn = block(h, return_attn=True)                     # (B, heads, N, N)
                    flow = rollout_step(flow, attn, num_prefix=t.num_prefix)  # (B, N, N)
                return t.classify(h), rollout_map(flow, num_prefix=t.num_prefix)
        if self.saliency == "attn":
            # the class token's row of each layer, taken as the forward goes: one layer's
            # attention in memory at a time
            with torch.no_grad():
                h, maps = t.embed(x), []                                     # (B, N, D)
                for block in t.blocks:
                    h, attn = block(h, return_attn=True)                     # (B, heads, N, N)
                    maps.append(cls_attention_maps([attn], t.num_prefix)[0])  # (B, gh, gw)
                return t.classify(h), torch.stack(maps)                      # (L, B, gh, gw)
        if self.saliency == "probe":
            layers = probe_layers(len(t.blocks)) if layers is None else layers
            if max(layers) >= len(t.blocks):
                raise ValueError(f"saliency='probe' reads blocks {layers}; "
                                 f"the teacher has {len(t.blocks)}")
            # the probe's gradients start at the captured tokens, so the forward needs no graph
            with torch.no_grad(), capture_tokens(t, layers) as tokens:
                logits = t(x)
            return logits, probe_gradient_maps(tokens, t.head, t.num_prefix,
                                               create_graph=False)  # (L, B, gh, gw, C)
        # Grad-CAM needs gradients inside the frozen teacher: take them w.r.t. its tokens only.
        with torch.enable_grad(), capture_tokens(t, grad_layers(len(t.blocks))) as tokens:
            # its parameters are frozen, so an input that needs grad is what builds the graph
            logits = t(x.detach().requires_grad_(True))
            cam = token_gradcam(logits, tokens, y, num_prefix=t.num_prefix, create_graph=False)
        return logits.detach(), cam.detach()

# =============================================================================
# 4. Config
# =============================================================================

@dataclass
class Config:
    """Everything one run needs. experiments.py builds every variant from this one base."""
    name: str = "run"
    # the student (or, for teacher.py, the teacher itself)
    model: str = "custom"              # a key of PRESETS
    patch_size: int = 4
    dropout: float = 0.0
    # what the run combines: knowledge distillation, curriculum, saliency
    kd: bool = False
    cl: bool = False
    sal: bool = False
    # curriculum: with cl, `epochs` are split equally over `resolutions`; without, all at 32 px
    resolutions: tuple = RESOLUTIONS
    epochs: int = 60
    fresh_optimizer: bool = True       # re-create AdamW at every stage (the paper)
    resize_mode: str = "resize"        # "resize" (paper's idea) or "crop" (the original code)
    augment: str = "crop_flip"         # "crop_flip" (random crop of the padded image + flip),
                                       # "crop_flip_aa" (then AutoAugment's CIFAR-10 policy,
                                       # data.auto_augment, per image) or "none"
    # optimisation
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-4
    schedule: str = "constant"         # "constant" (students) or "onecycle" (warm-up + cosine)
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    mixup: bool = False                # mixup / cutmix, half the batches each (teacher recipe)
    randaug: bool = False              # TrivialAugment: one random op per image (teacher recipe)
    erasing: float = 0.0               # random-erasing probability per image (teacher recipe)
    # distillation
    alpha: float = 0.5
    loss_form: str = "convex"          # "convex": (1 - alpha) CE + alpha KD; "paper": CE + alpha KD
    temperature: float = 4.0
    hard_kd: bool = False
    gamma: float = 0.8
    saliency: str = "rollout"          # a key of SALIENCY: "rollout" (attention rollout), "grad"
                                       # (token Grad-CAM, this repo's), "attn" / "probe" (the
                                       # notebooks' two, see section 2)
    teacher: str = ""                  # checkpoint path; empty = the cached default teacher
    teacher_model: str = "small"       # the teacher's preset (its recipe is in teacher.py)
    teacher_patch: int = 0             # the teacher's patch size; 0 = the student's
    teacher_recipe: str = "default"    # "default" (teacher.py) or "original" (the notebooks' p4
                                       # teacher)
    teacher_epochs: int = 135
    teacher_res: str = "same"          # "same": the student's view; "full": the 32-px view
    # what is reported, and which weights
    head: str = "avg"                  # "avg" (mean of the two heads' softmax) or "cls"
                                       # (the original)
    select: str = "last"               # "last" epoch's weights, or "best" validation epoch's
                                       # (at 32 px)
    patience: int = 0                  # > 0: end a stage after this many epochs without a
                                       # better validation accuracy
    test_epochs: tuple = ()            # epochs after which the model is also tested at 32 px
    # data and bookkeeping
    data: str = "data"
    train_size: int = 0                # 0 = all 45,000 training images
    val_size: int = 0                  # 0 = all 5,000 validation images
    test_size: int = 0                 # 0 = all 10,000 test images
    seed: int = 0
    device: str = "auto"               # "auto", "cpu", "cuda", "cuda:1", "mps"
    out: str = "runs"
    quick: bool = False
    resume: bool = True                # continue from runs/NAME/checkpoint.pt when it exists
    overwrite: bool = False            # with resume=False: replace a finished run's directory
    compile: bool = False              # torch.compile the student and teacher (CUDA graphs on CUDA)
    checkpoint: bool = False           # recompute each block in backward: less memory, same numbers
    micro_batch: int = 0               # > 0: forward/backward the batch in chunks of this many
                                       # images, gradients summed (one step; less memory)

    def stages(self) -> list[tuple[int, int]]:
        """[(resolution, epochs), ...]: six 10-epoch stages with cl, else 60 epochs at 32 px."""
        if not self.cl:
            return [(32, self.epochs)]
        per_stage = self.epochs // len(self.resolutions)
        return [(r, per_stage) for r in self.resolutions]

    def check(self) -> None:
        """Reject a config that cannot run, with a message that says what to change."""
        def bad(msg):
            raise ValueError(f"config {self.name!r}: {msg}")
        for k in ("model", "teacher_model"):
            if getattr(self, k) not in PRESETS:
                bad(f"{k}={getattr(self, k)!r} is not a preset; valid: {', '.join(PRESETS)}")
        for r in sorted(set(self.resolutions) | {32}):   # trained (with cl) and evaluated at all
            if r % self.patch_size:
                bad(f"resolution {r} is not divisible by patch_size={self.patch_size}; "
                    f"choose resolutions that are multiples of {self.patch_size}")
        if self.cl and self.epochs % len(self.resolutions):
            bad(f"epochs={self.epochs} does not split equally over {len(self.resolutions)} stages")
        if self.epochs < 1 or self.batch_size < 1:
            bad("epochs and batch_size must be positive")
        if self.micro_batch < 0:
            bad(f"micro_batch={self.micro_batch}: 0 (the whole batch at once) or a number of "
                f"images per chunk")
        choices = dict(resize_mode=("resize", "crop"), schedule=("constant", "onecycle"),
                       teacher_res=("same", "full"), saliency=SALIENCY,
                       augment=("crop_flip", "crop_flip_aa", "none"), head=("avg", "cls"),
                       select=("last", "best"), loss_form=("convex", "paper"),
                       teacher_recipe=("default", "original"))
        for k, valid in choices.items():
            if getattr(self, k) not in valid:
                bad(f"{k}={getattr(self, k)!r}; valid: {', '.join(valid)}")
        if self.randaug and self.augment == "crop_flip_aa":
            bad("randaug=True (TrivialAugment) and augment='crop_flip_aa' (AutoAugment) each "
                "pick one policy per image; choose one of them")
        if self.sal and not self.kd:
            bad("sal=True needs kd=True (the saliency target comes from the teacher)")
        if self.kd and (self.mixup or (self.erasing and self.teacher_res == "full")):
            bad("mixup, and erasing with teacher_res='full', cannot be combined with kd: the "
                "teacher would not see the images the student sees")
        if self.compile and self.sal and self.saliency == "probe":
            bad("compile=True is not supported with saliency='probe' (forward hooks on compiled "
                "graphs are untested here); use --compile=false or --saliency=rollout")
        if self.compile and self.sal and self.saliency == "grad":
            bad("compile=True cannot run saliency='grad': compiled graphs have no second-order "
                "gradients; use --compile=false or --saliency=rollout")
        if not 0 <= self.erasing <= 1:
            bad(f"erasing={self.erasing} is a probability; choose a value in [0, 1]")
        t_patch = self.teacher_patch or self.patch_size
        if self.kd and (32 % t_patch or (self.teacher_res == "same" and self.cl
                                         and any(r % t_patch for r in self.resolutions))):
            bad(f"teacher_patch={t_patch} must divide 32 and, with teacher_res='same', every "
                f"curriculum resolution {self.resolutions}")
        if self.checkpoint and self.sal and self.saliency in ("grad", "probe"):
            bad(f"checkpoint=True is not supported with saliency={self.saliency!r} (second-order "
                f"gradients through recomputed blocks are untested); use --checkpoint=false")
        if self.patience < 0:
            bad(f"patience={self.patience}: 0 (no early stopping) or a number of epochs")
        if any(not 1 <= e <= self.epochs for e in self.test_epochs):
            bad(f"test_epochs={self.test_epochs}: each must be an epoch in 1..{self.epochs}")

# =============================================================================
# 5. Training: the resolution curriculum
# =============================================================================

def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the prefix tokens or the position embedding."""
    no_decay = {"cls_token", "dist_token", "pos_embed"}
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if p.ndim <= 1 or name in no_decay else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)


def lr_at(cfg: Config, step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate at `step`: constant, or linear warm-up then cosine to zero."""
    if cfg.schedule == "constant":
        return cfg.lr
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))



def model_args(cfg: Config) -> dict:
    return dict(preset=cfg.model, patch_size=cfg.patch_size, distill_token=cfg.kd,
                dropout=cfg.dropout)


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[ViT, dict]:
    """Rebuild a model saved by train() -> (model, checkpoint metadata)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; "
                                "pass the model.pt of a trained run") from None
    except Exception as e:                       # torch's own text here is pages long
        why = "not a torch checkpoint, or a truncated one"
        raise ValueError(f"{path} is not a model.pt written by this project ({why}); pass the "
                         "model.pt of a trained teacher (runs/teacher_*/model.pt)") from e
    try:
        model = build_model(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no model"
        why = f"{type(e).__name__}: {first}"
        raise ValueError(f"{path} is not a model.pt written by this project ({why}); pass the "
                         "model.pt of a trained teacher (runs/teacher_*/model.pt)") from e
    return model.to(device), ckpt


@torch.no_grad()
def saliency_snapshot(model: nn.Module, teacher: nn.Module | None, images: torch.Tensor, res: int,
                      teacher_res: str) -> dict:
    """Rollout maps of the student (and teacher) for a fixed handful of images, for plots.py."""
    was_training = model.training
    model.eval()
    x = normalize(images)
    _, attn = model(resize(x, res), return_attn=True)
    # clone: a map is a view of its (B, N, N) flow, which torch.save would store whole
    snap = dict(res=res, student=attention_rollout(attn, num_prefix=model.num_prefix).cpu().clone())
    if teacher is not None:
        _, t_attn = teacher(resize(x, 32 if teacher_res == "full" else res), return_attn=True)
        snap["teacher"] = attention_rollout(t_attn, num_prefix=teacher.num_prefix).cpu().clone()
    model.train(was_training)
    return snap


def train_step(model: nn.Module, loss_fn: IRKDLoss, opt: torch.optim.Optimizer, x: torch.Tensor,
               target: torch.Tensor, *, labels: torch.Tensor, teacher_input: torch.Tensor,
               lr: float, micro_batch: int = 0):
    """One AdamW step on a prepared batch -> (loss, ce, kd, sal, correct) as one device tensor.

    x: the student's view (B, 3, res, res); target: labels (B,) or soft targets (B, C);
    labels: for the accuracy count; teacher_input: the teacher's view of the same images.
    micro_batch > 0: forward and backward in chunks of that many images, each chunk's loss
    weighted by its share of B. Every term of the loss is a mean over images, so the summed
    gradient is the whole batch's, up to float rounding, with a fraction of the activations.
    Nothing here waits for the device (bench.py times this same function).
    """
    # B batch, C classes, N tokens, D width
    for group in opt.param_groups:
        group["lr"] = lr                       # the schedule is a plain number per step (lr_at)
    # grad and probe read chosen blocks' output tokens; rollout and attn the attention probabilities
    layers = loss_fn.token_layers(len(model.blocks))
    on_cuda = x.device.type == "cuda"
    B = x.shape[0]
    size = micro_batch if 0 < micro_batch < B else B
    opt.zero_grad(set_to_none=True)
    stats = x.new_zeros(5, dtype=torch.float32)
    for start in range(0, B, size):
        part = slice(start, start + size)
        share = min(size, B - start) / B      # 1.0 for the whole batch: the plain step, exactly
        t_part = None if teacher_input is None else teacher_input[part]
        # bf16 autocast on CUDA only: a CPU run stays in float32
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on_cuda), \
                capture_tokens(model, layers) as tokens:
            out = model(x[part], return_attn=loss_fn.needs_attn)
            # out: (b, C) logits, or a (cls, dist) pair; attns: per block (b, heads, N, N)
            out, attns = out if loss_fn.needs_attn else (out, None)
            # tokens: per captured block (b, N, D), filled by the hooks during the forward
            loss, parts = loss_fn(out, tokens if layers else attns, target[part],
                                  teacher_input=t_part, student=model)
        (loss * share if share != 1 else loss).backward()
        cls_logits = out[0] if isinstance(out, tuple) else out                  # (b, C)
        zero = loss.new_zeros(())              # the kd and sal slots of a run without them
        means = torch.stack([loss.detach().float(), parts["ce"].float(),
                             parts.get("kd", zero).float(), parts.get("sal", zero).float()])
        # (5,) on the device: train() sums it over the epoch and reads it once at the end
        stats += torch.cat([means * share if share != 1 else means,
                            (cls_logits.argmax(-1) == labels[part]).sum().float().view(1)])
    opt.step()
    return stats


def build(cfg: Config, teacher: nn.Module | None, device: torch.device):
    """The model to train and its loss -> (model, the teacher on the device, step_model, loss_fn).

    step_model is what the steps run: the same module, compiled with cfg.compile (the
    weights are shared, so save and load through `model`).
    """
    torch.manual_seed(cfg.seed)            # the initial weights are a function of the seed
    model = build_model(**model_args(cfg)).to(device)
    model.grad_checkpoint = cfg.checkpoint
    teacher = teacher.to(device) if cfg.kd else None   # without kd a given teacher is unused
    step_model, step_teacher = (runs.maybe_compile(m, cfg.compile, device)
                                for m in (model, teacher))
    loss_fn = IRKDLoss(step_teacher, alpha=cfg.alpha, temperature=cfg.temperature, hard=cfg.hard_kd,
                       gamma=cfg.gamma if cfg.sal else 0.0, label_smoothing=cfg.label_smoothing,
                       saliency=cfg.saliency, loss_form=cfg.loss_form)
    return model, teacher, step_model, loss_fn


def train(cfg: Config, *, teacher: nn.Module | None = None, data: dict | None = None,
          teacher_info: dict | None = None) -> dict:
    """Train one model through the curriculum, test it at every resolution -> results.json's dict.

    teacher: the frozen teacher when cfg.kd; data: load_cifar10()'s dict (read from
    cfg.data when None). runs.Run writes runs/NAME/ and resumes a run that was cut short.
    """
    cfg.check()                                 # a bad config fails here, before any work
    if cfg.kd and teacher is None:
        raise ValueError(f"config {cfg.name!r} has kd=True but no teacher was given")
    run = runs.Run(cfg, teacher_info=teacher_info)  # device, runs/NAME/, a checkpoint to resume
    d = data_lib.prepare(data if data is not None else data_lib.load_cifar10(cfg.data),
                         device=run.device, train_size=cfg.train_size, val_size=cfg.val_size,
                         test_size=cfg.test_size, batch_size=cfg.batch_size)
    model, teacher, step_model, loss_fn = build(cfg, teacher, run.device)
    # every random draw of the data comes from these three generators, all saved in checkpoints
    sampler = data_lib.EpochSampler(len(d["train_x"]), cfg.batch_size, cfg.seed, run.device)
    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 2)
    stages, steps = cfg.stages(), sampler.steps_per_epoch()     # [(res, epochs)], steps/epoch
    total_epochs = sum(e for _, e in stages)
    run.start(model, dict(sampler_rng=sampler.generator, mix_rng=mix_gen, aug_rng=aug_gen),
              model_args=model_args(cfg), params=count_params(model), epochs=total_epochs,
              images_per_epoch=steps * cfg.batch_size)

    epoch, opt = 0, None
    for stage, (res, epochs) in enumerate(stages):
        for stage_epoch in range(1, epochs + 1):
            epoch += 1
            # skip what a resumed run finished, and (patience > 0) a stage that stopped improving
            if epoch <= run.done or (cfg.patience and run.epochs_since_best(stage) >= cfg.patience):
                continue
            # a fresh AdamW at every stage start: each resolution begins with new moments
            new_stage = cfg.fresh_optimizer and stage_epoch == 1
            if opt is None or new_stage:
                opt = make_optimizer(model, cfg)
                if run.opt_state is not None and not new_stage:
                    opt.load_state_dict(run.opt_state)  # resumed mid-stage, or one AdamW for all
            # one epoch of steps at `res`; nothing in this loop waits for the device
            model.train()
            loss_fn.train()
            sums = torch.zeros(5, device=run.device)        # loss, ce, kd, sal, correct
            run.begin_epoch(f"{cfg.name} {res}px ep {epoch}/{total_epochs}")
            crop = res if cfg.resize_mode == "crop" else 32  # "crop": res px cut out directly
            for idx, offsets, flips in sampler.epoch(crop=crop, augment=cfg.augment != "none"):
                # the student's view at res; the teacher's: the same, or 32 px of the same image;
                # a per-image policy on the crop: AutoAugment, TrivialAugment (randaug) or none
                aa = cfg.augment == "crop_flip_aa"
                xs, xt = data_lib.make_views(d["train_x"][idx], offsets, flips, res,
                                             cfg.resize_mode,
                                             full_view=cfg.kd and cfg.teacher_res == "full",
                                             aug_gen=aug_gen if cfg.randaug or aa else None,
                                             policy="autoaugment" if aa else "trivial")
                xs, target = data_lib.recipe_extras(xs, d["train_y"][idx], aug_gen=aug_gen,
                                                    erasing=cfg.erasing,
                                                    mix_gen=mix_gen if cfg.mixup else None)
                lr = lr_at(cfg, run.step, steps * total_epochs, cfg.warmup_epochs * steps)
                run.before_step()
                stats = train_step(step_model, loss_fn, opt, xs, target, labels=d["train_y"][idx],
                                   teacher_input=xs if xt is None else xt, lr=lr,
                                   micro_batch=cfg.micro_batch)
                sums += stats
                run.after_step(stats[0])                    # the NaN watch, on the device
            # sync point: the NaN flag, read once per epoch; then validation (more sync points)
            seconds = run.end_steps(f"stage {stage} ({res} px), epoch {epoch}")
            checked = validate(model, d, res, cfg, test=epoch in cfg.test_epochs)
            # stage end: rollout maps of a fixed handful of test images, for plots.py
            snap = (saliency_snapshot(model, teacher, d["test_x"][:8], res, cfg.teacher_res)
                    | dict(images=d["test_x"][:8], labels=d["test_y"][:8])
                    if stage_epoch == epochs else None)
            run.end_epoch(model, opt, sums, seconds, snapshot=snap, stage=stage, res=res,
                          epoch=epoch, stage_epoch=stage_epoch, lr=lr, **checked)

    # test: the last weights, and the best validation epoch's, at every resolution
    run.begin_test()
    best = run.best_state if run.best_epoch not in (None, run.done) else None  # done: last epoch
    test, predictions = test_all(model, best, d, cfg)
    return run.finish(model, test, predictions=predictions, test_x=d["test_x"], labels=d["test_y"],
                      params=count_params(model), epochs=total_epochs, stages=stages,
                      teacher=teacher_info, train_images=len(d["train_x"]))

# =============================================================================
# 6. Evaluation: every head at every resolution
# =============================================================================

def main_head(heads: dict, wanted: str = "avg") -> str:
    """The reported head: `wanted` where the model has it, else "cls" (no distillation token)."""
    return wanted if wanted in heads else "cls"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, res: int,
            batch_size: int = 0) -> dict[str, torch.Tensor]:
    """Predicted classes at resolution `res` -> {"cls": (N,)}, or {"cls", "dist", "avg"}.

    The images go through the same normalise + antialiased resize as in training. "avg"
    is the argmax of the sum of the two heads' softmax probabilities. (DeiT's code averages
    the logits instead; the two can differ where one head is far more confident.)
    """
    # N images in batches of B = batch_size, C classes. By default B is sized by tokens: 500
    # images up to 66 tokens (patch 4 at 32 px), fewer above, so that a patch-2 model's
    # activations (258 tokens) stay near a patch-4 model's (docs/speed.md, Memory)
    if not batch_size:
        tokens = (res // model.patch_size) ** 2 + model.num_prefix
        batch_size = max(1, min(500, 33_000 // tokens))
    was_training = model.training
    model.eval()                               # no dropout; the caller's mode is restored below
    preds: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(x), batch_size):
        # the same precision as the training steps: bf16 autocast on CUDA only
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = model(resize(normalize(x[i:i + batch_size]), res))  # (B, C), or (cls, dist)
        logits = dict(zip(("cls", "dist"), out)) if isinstance(out, tuple) else {"cls": out}
        logits = {h: v.float() for h, v in logits.items()}                      # each (B, C)
        if "dist" in logits:
            # (B, C) summed probabilities: same argmax as their mean (see the docstring)
            logits["avg"] = logits["cls"].softmax(-1) + logits["dist"].softmax(-1)
        for h, v in logits.items():
            preds.setdefault(h, []).append(v.argmax(-1))
    model.train(was_training)
    return {h: torch.cat(p) for h, p in preds.items()}                          # each (N,)


def accuracy(preds: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy (%) of each head's predictions, rounded to 0.01."""
    hits = torch.stack([(p == y).sum() for p in preds.values()])
    accs = (hits.float() * 100 / len(y)).tolist()                               # one host sync
    return {h: round(a, 2) for h, a in zip(preds, accs)}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: int,
             batch_size: int = 0) -> dict:
    """Top-1 accuracy (%) at resolution `res` -> {"cls": ..} or {"cls", "dist", "avg"}."""
    return accuracy(predict(model, x, res, batch_size), y)


def predict_all(model: nn.Module, x: torch.Tensor, resolutions=RESOLUTIONS,
                progress: bool = False) -> dict:
    """{res: {head: (N,) predictions}} at every resolution; 32 px always included."""
    resolutions = sorted(set(resolutions) | {32})
    bar = tqdm(resolutions, desc=f"test ({len(x)} images)", unit="res", leave=False,
               disable=not progress)
    return {r: predict(model, x, r) for r in bar}


def by_resolution(preds: dict, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """predict_all()'s output -> {head: {"12": acc, ..., "32": acc}}."""
    per_res = {r: accuracy(p, y) for r, p in preds.items()}
    return {h: {str(r): per_res[r][h] for r in per_res} for h in per_res[32]}


def evaluate_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 resolutions=RESOLUTIONS) -> dict[str, dict[str, float]]:
    """{head: {"12": acc, ..., "32": acc}} on every resolution; 32 px always included."""
    return by_resolution(predict_all(model, x, resolutions), y)


def validate(model: nn.Module, d: dict, res: int, cfg: Config, test: bool = False) -> dict:
    """An epoch's checks -> the log row's fields: validation at `res` and at 32 px (the
    reported head's 32-px accuracy, select_val, picks the best epoch); with test=True also
    the test set at 32 px (its predictions go to predictions.json)."""
    val = evaluate(model, d["val_x"], d["val_y"], res)
    val32 = val if res == 32 else evaluate(model, d["val_x"], d["val_y"], 32)
    head = main_head(val, cfg.head)
    tested = predict(model, d["test_x"], 32) if test else None
    return dict(select_val=val32[head], test_predictions=tested, val_acc=val[head], val_heads=val,
                val_acc_32=val32[head], val_heads_32=val32,
                test_heads_32=accuracy(tested, d["test_y"]) if tested else None)


def test_all(model: nn.Module, best_state: dict | None, d: dict, cfg: Config):
    """The last weights (and the best validation epoch's, when they differ) on the test set at
    every resolution -> (results.json's test fields, {which: 32-px predictions})."""
    final = predict_all(model, d["test_x"], cfg.resolutions, progress=True)
    best = final
    if best_state is not None:
        best_model = build_model(**model_args(cfg)).to(d["test_x"].device)
        best_model.load_state_dict(best_state)
        best = predict_all(best_model, d["test_x"], cfg.resolutions, progress=True)
    heads = {w: by_resolution(p, d["test_y"]) for w, p in (("last", final), ("best", best))}
    head, chosen = main_head(heads["last"], cfg.head), heads[cfg.select]
    test = dict(test_acc=chosen[head]["32"], test_head=head, test_acc_by_res=chosen[head],
                heads=chosen, select=cfg.select, heads_last=heads["last"], heads_best=heads["best"])
    return test, dict(last=final[32], best=best[32])
