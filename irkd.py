"""IRKD: inter-resolution knowledge distillation for Vision Transformers, the method alone.

Read top to bottom, in the order of the paper: 1. the ViT (distillation token, resampled
position embedding); 2. attention rollout and the saliency loss; 3. kd_loss and IRKDLoss;
4. Config; 5. the curriculum's views, stages and training step; 6. evaluation at every
resolution. torch and the standard library only: copy this file alone into your project.
The loop with its data and bookkeeping is train.py; other saliency maps saliency_variants.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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

    Tokens are [cls, (dist), patch_1 ... patch_n]. One learned position embedding for the
    native grid is resampled to the grid of whatever resolution comes in. forward(x) -> cls
    logits (B, C), or the (cls, dist) pair; return_attn=True adds the per-block attention.
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
        # True: keep only each block's input for backward and recompute the block there:
        # far less memory, the same numbers
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
        """The position embedding for a gh x gw grid: bicubic resampling of the native table
        (identity at the native grid; prefix tokens untouched), in float32 with an explicit
        size, from the one parameter, so every stage of the curriculum trains the same table."""
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
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1),
            "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; use mean, max or min")
    a = fuse[head_fusion](attn)                                    # (B, N, N)
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

    attentions: per layer (B, heads, N, N) probabilities. Pure, batched and differentiable;
    per layer: fuse the heads, optionally drop the weakest links, add the identity (the
    residual), renormalise the rows, multiply onto the flow (rollout_step); read row `token`.
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
    """MSE between min-max normalised maps (B, gh, gw); a finer teacher map is area-pooled
    to the student's grid first."""
    if teacher_map.shape[-2:] != student_map.shape[-2:]:
        # (B, 1, gh', gw') -> pooled to (B, 1, gh, gw) -> (B, gh, gw)
        teacher_map = F.adaptive_avg_pool2d(teacher_map[:, None], student_map.shape[-2:])[:, 0]
    return F.mse_loss(minmax_normalize(student_map), minmax_normalize(teacher_map))


class RolloutSaliency:
    """The paper's saliency term: the student's attention rollout (cls row) against the
    teacher's. Needs from the student: return_attn=True (the explicit attention path).

    Every saliency method has these four parts; another map plugs into IRKDLoss as an object
    like this one (saliency_variants.py has three): student_forward(student, x) -> (outputs,
    what the map reads); student_map(...) -> map(s), differentiable; teacher_map(...) ->
    (logits, map(s)) without a graph; loss(student maps, teacher maps) -> a scalar.
    """
    name = "rollout"
    # a plain forward for the teacher (torch.compile takes it); no second-order gradients, so
    # blocks may be recomputed in backward (ViT.grad_checkpoint)
    compilable, recomputable = True, True

    def student_forward(self, student: nn.Module, x: torch.Tensor):
        return student(x, return_attn=True)         # ((cls, dist) logits, per-block attention)

    def student_map(self, student, outputs, attentions, y) -> torch.Tensor:
        return attention_rollout(attentions, num_prefix=student.num_prefix)  # (B, gh, gw)

    @torch.no_grad()
    def teacher_map(self, teacher: nn.Module, x: torch.Tensor, y, student_depth: int):
        # folded in as the forward goes: one layer's attention in memory at a time, not all
        h, flow = teacher.embed(x), None                                  # (B, N, D)
        for block in teacher.blocks:
            h, attn = block(h, return_attn=True)                          # (B, heads, N, N)
            flow = rollout_step(flow, attn, num_prefix=teacher.num_prefix)  # (B, N, N)
        return teacher.classify(h), rollout_map(flow, num_prefix=teacher.num_prefix)

    def loss(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return saliency_loss(student_map, teacher_map)


# =============================================================================
# 3. Losses
# =============================================================================

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            hard: bool = False) -> torch.Tensor:
    """Soft KD: T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes and divided by
    the batch size ("batchmean", the textbook scale; DeiT's code divides by B*C, a tenfold
    smaller term on CIFAR-10). hard=True: DeiT's hard distillation, CE against the argmax."""
    if hard:
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    T = temperature
    log_p_student = F.log_softmax(student_logits.float() / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T


class TeacherWithMap(nn.Module):
    """The frozen teacher's forward for the saliency term -> (logits, map(s)); a module of
    its own so that torch.compile compiles exactly what runs (blocks with the map folded in)."""

    def __init__(self, teacher: nn.Module, saliency, student_depth: int):
        super().__init__()
        self.teacher, self.saliency, self.student_depth = teacher, saliency, student_depth

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.saliency.teacher_map(self.teacher, x, y, self.student_depth)


class IRKDLoss(nn.Module):
    """The student's whole objective; owns the frozen teacher and its forward pass.

        loss = (1 - alpha) * CE(cls head, y) + alpha * KD(dist head, teacher)
               + gamma * Sal(student, teacher)

    (the notebooks' code); loss_form="paper" is the paper's Eq. 1, CE + alpha * KD + gamma * Sal.
    Without a teacher it is plain cross-entropy (with optional label smoothing).

    Args:
        teacher: the frozen teacher, any module that maps images to logits (B, C) (KD alone);
            with gamma > 0 also what the saliency method reads (rollout: a ViT of this file).
        alpha: the weight of KD (and 1 - alpha of CE with loss_form="convex").
        temperature: the KD temperature T.
        hard: DeiT's hard distillation (CE against the teacher's argmax) instead of soft KD.
        gamma: the weight of the saliency term; 0 turns it off.
        label_smoothing: of the CE term.
        saliency: the saliency method (RolloutSaliency by default; saliency_variants.py has
            the others). What it needs from the student is in its docstring.
        student_depth: the student's number of blocks (methods that read chosen blocks of
            student and teacher at the same indices use it).
        loss_form: "convex" (the code's (1 - alpha) CE) or "paper" (Eq. 1's CE).

    KD needs a student with a distillation token: outputs must be the (cls, dist) pair.
    """

    def __init__(self, teacher: nn.Module | None = None, *, alpha: float = 0.5,
                 temperature: float = 4.0, hard: bool = False, gamma: float = 0.0,
                 label_smoothing: float = 0.0, saliency=None, student_depth: int = 0,
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
        self.gamma, self.label_smoothing = gamma, label_smoothing
        # the saliency term is on only with a teacher and gamma > 0
        self.saliency = (saliency or RolloutSaliency()) if teacher is not None and gamma > 0 \
            else None
        # what runs for the teacher: its logits (KD), or its logits and map(s) (KD + Sal);
        # train.py may replace it by a compiled copy (the weights are shared)
        self.teacher_forward = (None if teacher is None else teacher if self.saliency is None
                                else TeacherWithMap(teacher, self.saliency, student_depth))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, ever
        return self

    def student_forward(self, student: nn.Module, x: torch.Tensor):
        """The student's forward -> (outputs, what the saliency term reads, or None)."""
        if self.saliency is None:
            return student(x), None
        return self.saliency.student_forward(student, x)

    def forward(self, outputs, y, *, teacher_input=None, internals=None, student=None):
        """The loss of one batch -> (loss, parts), parts detached for logging.

        Args:
            outputs: the student's (cls, dist) logits, each (B, C); (B, C) without a teacher.
            y: labels (B,), or soft targets (B, C) (mixup / cutmix).
            teacher_input: the teacher's view of the same images (B, 3, H, W).
            internals, student: student_forward's second output, and the student (saliency).
        """
        # B batch, C classes; y: (B,) labels, or (B, C) soft targets
        cls_logits = outputs[0] if isinstance(outputs, tuple) else outputs      # (B, C)
        ce = F.cross_entropy(cls_logits, y, label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        if self.teacher is None:
            return ce, parts
        if not (isinstance(outputs, tuple) and len(outputs) == 2):
            raise ValueError("KD needs a student with a distillation token: outputs must be the "
                             "(cls logits, dist logits) pair; got one tensor of shape "
                             f"{tuple(cls_logits.shape)}. Build the student with "
                             "distill_token=True")
        if teacher_input is None:
            raise ValueError("KD needs teacher_input: the teacher's view of the same images")
        if self.saliency is None:
            # KD alone reads only the teacher's logits: no graph, and the fused attention path
            with torch.no_grad():
                t_logits = self.teacher_forward(teacher_input)                  # (B, C)
        else:
            if student is None or internals is None:
                raise ValueError("the saliency term needs student= and internals= (from "
                                 "IRKDLoss.student_forward)")
            t_logits, t_map = self.teacher_forward(teacher_input, y)
        # the dist head (outputs[1]) learns from the teacher, the cls head from the labels
        kd = kd_loss(outputs[1], t_logits, self.temperature, self.hard)
        loss = self.ce_weight * ce + self.alpha * kd
        parts["kd"] = kd.detach()
        if self.saliency is not None:
            # each method pools a finer teacher map to the student's grid
            s_map = self.saliency.student_map(student, outputs, internals, y)
            sal = self.saliency.loss(s_map, t_map)
            loss = loss + self.gamma * sal
            parts["sal"] = sal.detach()
        return loss, parts


# =============================================================================
# 4. Config: the method's fields, each with its valid range
# =============================================================================

def spec(default, valid: str | tuple):
    """A field that states its valid values once: an interval "(0, inf)", "[0, 1)", or a
    tuple of choices. check_fields() enforces it."""
    return field(default=default, metadata=dict(valid=valid))


def check_fields(cfg) -> None:
    """Every spec() field against its valid values -> a one-line ValueError naming both."""
    for f in dataclasses.fields(cfg):
        # a subclass that only changes a default (experiments.Exp1a) keeps the base's range
        valid = next((c.__dataclass_fields__[f.name].metadata["valid"] for c in type(cfg).__mro__
                      if f.name in getattr(c, "__dataclass_fields__", {})
                      and "valid" in c.__dataclass_fields__[f.name].metadata), None)
        value = getattr(cfg, f.name)
        if valid is None:
            continue
        if isinstance(valid, tuple):
            if value not in valid:
                raise ValueError(f"{f.name}={value!r}; valid: {', '.join(map(str, valid))}")
            continue
        lo, hi = (float(v) for v in valid[1:-1].split(","))        # "[0, 1)" -> 0.0, 1.0
        if not ((value > lo if valid[0] == "(" else value >= lo)
                and (value < hi if valid[-1] == ")" else value <= hi)):
            raise ValueError(f"{f.name}={value} is out of range; valid: {valid}")


RESOLUTIONS = (12, 16, 20, 24, 28, 32)  # the curriculum's stages, and every evaluation


@dataclass
class Config:
    """The method: which student, which of the three ideas, the curriculum, the optimiser and
    the distillation. A run's other options (data, device, output, the teacher's recipe) are
    in train.RunConfig, which extends this class."""
    # the student
    model: str = spec("custom", tuple(PRESETS))
    patch_size: int = spec(4, "[1, 32]")     # must divide every resolution
    dropout: float = spec(0.0, "[0, 1)")
    # the three ideas: knowledge distillation, the resolution curriculum, saliency
    kd: bool = False
    cl: bool = False
    sal: bool = False
    # the curriculum: with cl, `epochs` split equally over `resolutions`; without, all at 32 px
    resolutions: tuple = RESOLUTIONS   # increasing, each in [patch_size, 32]
    epochs: int = spec(60, "[1, inf)")
    fresh_optimizer: bool = True       # re-create AdamW at every stage (the paper)
    # optimisation: AdamW at a constant learning rate
    batch_size: int = spec(128, "[1, inf)")
    lr: float = spec(3e-4, "(0, inf)")
    weight_decay: float = spec(1e-4, "[0, inf)")
    # distillation: (1 - alpha) CE + alpha KD + gamma Sal
    alpha: float = spec(0.5, "[0, 1]")
    temperature: float = spec(4.0, "(0, inf)")
    hard_kd: bool = False
    gamma: float = spec(0.8, "[0, inf)")
    teacher_res: str = spec("same", ("same", "full"))  # the student's view, or 32 px

    def stages(self) -> list[tuple[int, int]]:
        """[(resolution, epochs), ...]: six 10-epoch stages with cl, else 60 epochs at 32 px."""
        if not self.cl:
            return [(32, self.epochs)]
        per_stage = self.epochs // len(self.resolutions)
        return [(r, per_stage) for r in self.resolutions]

    def check(self) -> None:
        """Reject a method config that cannot run, with a message that says what to change."""
        check_fields(self)
        res = tuple(self.resolutions)
        if not res or list(res) != sorted(set(res)) or res[0] < self.patch_size or res[-1] > 32:
            raise ValueError(f"resolutions={','.join(map(str, res))}: increasing, each between "
                             f"patch_size={self.patch_size} and 32 px")
        for r in eval_resolutions(res):     # trained (with cl) and evaluated at every one
            if r % self.patch_size:
                raise ValueError(f"resolution {r} is not divisible by patch_size="
                                 f"{self.patch_size}; choose multiples of {self.patch_size}")
        if self.cl and sum(e for _, e in self.stages()) != self.epochs:   # an unequal split
            raise ValueError(f"epochs={self.epochs} does not split equally over {len(res)} "
                             f"curriculum stages")
        if self.sal and not self.kd:
            raise ValueError("sal=True needs kd=True (the saliency target comes from the teacher)")


# =============================================================================
# 5. The curriculum: views, stages, optimiser, one training step
# =============================================================================

MEAN = (0.4914, 0.4822, 0.4465)   # CIFAR-10's per-channel mean and std
STD = (0.2023, 0.1994, 0.2010)
_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32, standardised by CIFAR-10's mean, std."""
    # the (1, 3, 1, 1) mean and std are made once per device: building them every step is a
    # blocking host-to-device copy on CUDA (and illegal in a CUDA graph)
    if x.device not in _MEAN_STD:
        _MEAN_STD[x.device] = (torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1),
                               torch.tensor(STD, device=x.device).view(1, 3, 1, 1))
    mean, std = _MEAN_STD[x.device]
    return ((x.float() / 255.0 if x.dtype == torch.uint8 else x) - mean) / std


def resize(x: torch.Tensor, res: int) -> torch.Tensor:
    """The one resize used in training and evaluation: antialiased bilinear, float input."""
    if x.shape[-1] == res and x.shape[-2] == res:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the prefix tokens or the position embedding."""
    no_decay = {"cls_token", "dist_token", "pos_embed"}
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if p.ndim <= 1 or name in no_decay else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)


def train_step(model: nn.Module, loss_fn: IRKDLoss, opt: torch.optim.Optimizer, x: torch.Tensor,
               target: torch.Tensor, *, labels: torch.Tensor, teacher_input: torch.Tensor,
               lr: float, micro_batch: int = 0):
    """One AdamW step on a prepared batch -> (loss, ce, kd, sal, correct) as one device tensor.

    x: the student's view (B, 3, res, res); target: labels (B,) or soft targets (B, C);
    labels: for the accuracy count; teacher_input: the teacher's view of the same images.
    micro_batch > 0: chunks of that many images, each loss weighted by its share of B (every
    term is a mean over images: the whole batch's gradient, up to float rounding, with less
    memory). Nothing here waits for the device.
    """
    for group in opt.param_groups:
        group["lr"] = lr                       # the schedule is a plain number per step
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
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on_cuda):
            # out: (b, C) logits, or a (cls, dist) pair; internals: what the saliency map reads
            out, internals = loss_fn.student_forward(model, x[part])
            loss, parts = loss_fn(out, target[part], teacher_input=t_part, internals=internals,
                                  student=model)
        (loss * share if share != 1 else loss).backward()
        cls_logits = out[0] if isinstance(out, tuple) else out                  # (b, C)
        zero = loss.new_zeros(())              # the kd and sal slots of a run without them
        means = torch.stack([loss.detach().float(), parts["ce"].float(),
                             parts.get("kd", zero).float(), parts.get("sal", zero).float()])
        # (5,) on the device: the caller sums it over the epoch and reads it once at the end
        stats += torch.cat([means * share if share != 1 else means,
                            (cls_logits.argmax(-1) == labels[part]).sum().float().view(1)])
    opt.step()
    return stats


# =============================================================================
# 6. Evaluation: every head at every resolution
# =============================================================================

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, res: int,
            batch_size: int = 0) -> dict[str, torch.Tensor]:
    """Predicted classes at resolution `res` -> {"cls": (N,)}, or {"cls", "dist", "avg"}.

    x: uint8 images (N, 3, 32, 32), normalised and resized as in training. "avg" is the argmax
    of the two heads' summed softmax (DeiT averages logits; they differ where one head is far
    more confident)."""
    # N images in batches of B = batch_size, C classes. By default B is sized by tokens: 500
    # images up to 66 tokens (patch 4 at 32 px), fewer above, so that a patch-2 model's
    # activations (258 tokens) stay near a patch-4 model's; a model without patches: 500
    if not batch_size:
        tokens = ((res // model.patch_size) ** 2 + model.num_prefix
                  if hasattr(model, "patch_size") else 0)
        batch_size = max(1, min(500, 33_000 // tokens)) if tokens else 500
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


def eval_resolutions(resolutions=RESOLUTIONS) -> list[int]:
    """The resolutions a model is evaluated at: every one given, and 32 px always."""
    return sorted(set(resolutions) | {32})


def by_resolution(preds: dict, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """{res: {head: (N,) predictions}} -> {head: {"12": acc, ..., "32": acc}}."""
    per_res = {r: accuracy(p, y) for r, p in preds.items()}
    return {h: {str(r): per_res[r][h] for r in per_res} for h in per_res[32]}


def evaluate_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 resolutions=RESOLUTIONS) -> dict[str, dict[str, float]]:
    """{head: {"12": acc, ..., "32": acc}} on every resolution; 32 px always included."""
    return by_resolution({r: predict(model, x, r) for r in eval_resolutions(resolutions)}, y)
