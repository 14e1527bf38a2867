"""IRKD: inter-resolution knowledge distillation for Vision Transformers on CIFAR-10.

One file, read top to bottom:

  1. data        load_cifar10, split_train_val, augment / resize as batch tensor ops
  2. model       ViT (teacher and students), PRESETS
  3. saliency    attention_rollout, saliency_loss
  4. losses      kd_loss, IRKDLoss (owns the frozen teacher's forward)
  5. training    Config, train(): the resolution curriculum
  6. evaluation  evaluate(), evaluate_all(): every head at every resolution 12..32

Nothing runs at import time; experiments.py and teacher.py are the entry points.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import os
import pickle
import platform
import shutil
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# =============================================================================
# 1. Data
# =============================================================================

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
CIFAR_MEMBERS = TRAIN_FILES + [TEST_FILE, "batches.meta", "readme.html"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
RESOLUTIONS = (12, 16, 20, 24, 28, 32)  # the curriculum, and every evaluation


class DataError(RuntimeError):
    """Missing, partial or corrupt data; the message says what to do."""


def _where_to_put(root: str) -> str:
    return (f"Put the official CIFAR-10 python files in {os.path.join(root, CIFAR_DIR)}/ "
            f"(data_batch_1..5, test_batch), e.g. by unpacking {CIFAR_URL} into {root}/, "
            f"or pass another directory with --data=DIR.")


def md5sum(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(root: str, url: str = CIFAR_URL, md5: str = CIFAR_MD5) -> None:
    """Fetch the official archive, check its md5 and unpack only the expected members.

    Everything happens in a temporary directory inside `root`; the finished
    `cifar-10-batches-py/` is moved into place with one rename, so an interrupted
    download never leaves a half-written dataset behind.
    """
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".cifar-download-") as tmp:
        archive = os.path.join(tmp, "cifar-10-python.tar.gz")
        print(f"downloading CIFAR-10 from {url} ...")
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataError(f"could not download CIFAR-10 ({e}). {_where_to_put(root)}") from e
        got = md5sum(archive)
        if got != md5:
            raise DataError(f"the downloaded archive has md5 {got}, expected {md5}: it is corrupt or "
                            f"not the official file. Delete it and retry, or {_where_to_put(root)}")
        wanted = {f"{CIFAR_DIR}/{m}" for m in CIFAR_MEMBERS}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # Only the known member names: a hostile archive cannot write outside tmp.
                members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
                tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"the archive could not be unpacked ({e}). {_where_to_put(root)}") from e
        dst = os.path.join(root, CIFAR_DIR)
        if os.path.isdir(dst):
            shutil.rmtree(dst)  # an earlier partial copy; the complete one replaces it
        os.replace(os.path.join(tmp, CIFAR_DIR), dst)


def _read_batch(path: str, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled CIFAR batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # the files were written by Python 2
        data, labels = d["data"], d["labels"]
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)  # rows are CHW
        labels = torch.as_tensor(labels, dtype=torch.int64)
    except Exception as e:  # truncated pickle, wrong keys, wrong size: all mean "bad file"
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}). "
                        f"Delete {os.path.join(root, CIFAR_DIR)} and run again to re-download, "
                        f"or {_where_to_put(root)}") from e
    if len(labels) == 0 or len(images) != len(labels) or labels.min() < 0 or labels.max() > 9:
        span = f"[{labels.min()}, {labels.max()}]" if len(labels) else "none"
        raise DataError(f"{path} has {len(images)} images, {len(labels)} labels and labels in "
                        f"{span}: not a CIFAR-10 batch. {_where_to_put(root)}")
    return images, labels


def load_cifar10(root: str = "data", download: bool = True) -> dict[str, torch.Tensor]:
    """CIFAR-10 as uint8 tensors: train_x (50000, 3, 32, 32), train_y, test_x, test_y."""
    folder = os.path.join(root, CIFAR_DIR)
    missing = [f for f in TRAIN_FILES + [TEST_FILE] if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        if not download:
            raise DataError(f"CIFAR-10 is missing or partial: no {', '.join(missing)} in {folder}. "
                            f"{_where_to_put(root)}")
        download_cifar10(root)
    parts = [_read_batch(os.path.join(folder, f), root) for f in TRAIN_FILES]
    test_x, test_y = _read_batch(os.path.join(folder, TEST_FILE), root)
    return dict(train_x=torch.cat([p[0] for p in parts]), train_y=torch.cat([p[1] for p in parts]),
                test_x=test_x, test_y=test_y)


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int = 5000, seed: int = 42):
    """The paper's fixed split of the 50,000 training images (45,000 train / 5,000 val)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return x[train], y[train], x[val], y[val]


_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, 1, 1) mean and std on `device`, made once: building them from Python
    lists every step is a blocking host-to-device copy on CUDA (and illegal in a CUDA graph)."""
    if device not in _MEAN_STD:
        _MEAN_STD[device] = (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                             torch.tensor(STD, device=device).view(1, 3, 1, 1))
    return _MEAN_STD[device]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W), or float in [0, 1] -> float32, standardised with the CIFAR-10 mean and std."""
    mean, std = _mean_std(x.device)
    return ((x.float() / 255.0 if x.dtype == torch.uint8 else x) - mean) / std


def resize(x: torch.Tensor, res: int) -> torch.Tensor:
    """The one resize used in training and evaluation: antialiased bilinear, float input."""
    if x.shape[-1] == res and x.shape[-2] == res:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                     size: int = 32, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image plus horizontal flip, for a whole batch at once.

    offsets: (B, 2) int64 top-left corners in [0, 32 + 2*pad - size]; flips: (B,) bool.
    Two gathers with per-sample index grids (rows, then columns) replace a Python loop
    over images; half the cost of one four-index gather on a CPU.
    """
    B, C = x.shape[:2]
    x = F.pad(x, (pad, pad, pad, pad))                                  # (B, C, 40, 40), zeros
    P = x.shape[-1]
    ar = torch.arange(size, device=x.device)
    rows = offsets[:, 0:1] + ar                                         # (B, size)
    cols = offsets[:, 1:2] + ar                                         # (B, size)
    cols = torch.where(flips[:, None], cols.flip(1), cols)              # flip = reversed columns
    x = x.gather(2, rows.view(B, 1, size, 1).expand(B, C, size, P))     # (B, C, size, 40)
    return x.gather(3, cols.view(B, 1, 1, size).expand(B, C, size, size))  # (B, C, size, size)


class EpochSampler:
    """Draws one epoch's randomness (order, crop offsets, flips) from one CPU generator.

    Drawing everything at the start of the epoch keeps the per-step work on the
    device (no host round-trips) and makes a run a pure function of the seed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self, crop: int = 32, pad: int = 4):
        g = self.generator
        perm = torch.randperm(self.n, generator=g)
        offsets = torch.randint(0, 32 + 2 * pad - crop + 1, (self.n, 2), generator=g)
        flips = torch.rand(self.n, generator=g) < 0.5
        perm, offsets, flips = (t.to(self.device) for t in (perm, offsets, flips))
        for i in range(0, self.n - self.batch_size + 1, self.batch_size):  # drop the ragged last batch
            idx = perm[i:i + self.batch_size]
            yield idx, offsets[idx], flips[idx]

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size


# The teacher recipe's stronger augmentation, as batch tensor ops on the device (no torchvision):
# one random op per image at a random strength (TrivialAugment, Mueller & Hutter 2021, with
# moderate CIFAR ranges), then random erasing (Zhong et al. 2020). Students do not use them.
AUG_OPS = ("identity", "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
           "autocontrast", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_GEOMETRIC = 8  # AUG_OPS[8:] move pixels (one affine warp); the ones before change values


def apply_ops(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """x: float (B, 3, H, W) in [0, 1]; op: (B,) index into AUG_OPS; magnitude: (B,) in [-1, 1].

    Every op is computed for the whole batch and each image keeps its own op's result: at
    32 px this costs far less than a Python loop over images. On 8-bit images (uint8 / 255,
    what training feeds it) magnitude 0 is the identity for every op except autocontrast,
    which has no strength.
    """
    B, C, H, W = x.shape
    m = magnitude.view(B, 1, 1, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])          # (B, 1, H, W)
    mean_gray = gray.mean((2, 3), keepdim=True)                                 # (B, 1, 1, 1)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # (B, C, H, W)
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)        # (B, C, 1, 1)
    stretched = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-3), x)  # a flat channel stays
    step = 2.0 ** (m.abs() * 4).round()            # posterize: drop 0..4 of the 8 bits
    values = torch.stack([                          # (8, B, C, H, W), in AUG_OPS order
        x,
        x * (1 + 0.9 * m),                                             # brightness
        gray + (1 + 0.9 * m) * (x - gray),                             # color (saturation)
        mean_gray + (1 + 0.9 * m) * (x - mean_gray),                 # contrast
        x + 0.9 * m * (x - blur),                                      # sharpness (negative: blur)
        torch.floor((x * 255).round() / step) * step / 255,            # posterize
        torch.where(x > 1 - m.abs(), 1 - x, x),                        # solarize above 1 - |m|
        stretched,                                                     # autocontrast
    ]).clamp(0, 1)
    value_op = torch.where(op < _GEOMETRIC, op, 0)                                # geometric: identity here
    out = values[value_op, torch.arange(B, device=x.device)]                      # (B, C, H, W)
    # The geometric ops share one affine warp; theta is the identity for every other image.
    is_op = {name: op == AUG_OPS.index(name) for name in AUG_OPS[_GEOMETRIC:]}
    mg = magnitude.to(x.dtype)
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(B, 1, 1)      # (B, 2, 3)
    angle = math.radians(30) * mg
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], -1)
    theta[:, :, :2] = torch.where(is_op["rotate"].view(B, 1, 1), rot.view(B, 2, 2), theta[:, :, :2])
    theta[:, 0, 1] += torch.where(is_op["shear_x"], 0.3 * mg, 0.0)
    theta[:, 1, 0] += torch.where(is_op["shear_y"], 0.3 * mg, 0.0)
    # translate: 0.6 in grid units (the image spans [-1, 1]) is 30 % of the width
    theta[:, 0, 2] += torch.where(is_op["translate_x"], 0.6 * mg, 0.0)
    theta[:, 1, 2] += torch.where(is_op["translate_y"], 0.6 * mg, 0.0)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    warped = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where((op >= _GEOMETRIC).view(B, 1, 1, 1), warped, out)


def trivial_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One op of AUG_OPS per image with a uniform random signed magnitude, drawn on x's device."""
    B = x.shape[0]
    op = torch.randint(len(AUG_OPS), (B,), generator=generator, device=x.device)
    magnitude = torch.rand(B, generator=generator, device=x.device) * 2 - 1
    return apply_ops(x, op, magnitude)


def random_erase(x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """With probability p per image, set a random rectangle (2-33 % of the area, aspect
    0.3-3.3) to 0, the dataset mean once normalised. x: (B, C, H, W), normalised."""
    B, _, H, W = x.shape
    u = torch.rand(5, B, generator=generator, device=x.device)
    area = (0.02 + 0.31 * u[0]) * H * W
    aspect = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[1])
    h = (area * aspect).sqrt().round().clamp(1, H)
    w = (area / aspect).sqrt().round().clamp(1, W)
    top, left = ((H - h + 1) * u[2]).floor(), ((W - w + 1) * u[3]).floor()
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = ((rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
              & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1)))  # (B, H, W)
    erase = inside & (u[4] < p).view(B, 1, 1)
    return x.masked_fill(erase.unsqueeze(1), 0.0)


def make_views(x_uint8: torch.Tensor, offsets, flips, res: int, mode: str, full_view: bool,
               aug_gen: torch.Generator | None = None):
    """One augmented batch -> (student view at `res`, teacher's 32-px view or None).

    mode "resize": crop 32 of the padded image, flip, resize to res (the paper's idea).
    mode "crop":   crop res x res of the padded image directly (what the original code did).
    With full_view both views come from the *same* augmented 32-px image. With aug_gen,
    trivial_augment() runs on the 32-px crop first (the teacher recipe).
    """
    def crop(size):
        x = random_crop_flip(x_uint8, offsets, flips, size=size)
        return normalize(trivial_augment(x.float() / 255, aug_gen) if aug_gen is not None else x)
    if mode == "resize":
        full = crop(32)
        return resize(full, res), (full if full_view else None)
    if mode == "crop":
        if full_view:
            raise ValueError("teacher_res='full' needs resize_mode='resize': a crop has no 32-px view")
        return crop(res), None
    raise ValueError(f"unknown resize_mode {mode!r}; use 'resize' or 'crop'")


# =============================================================================
# 2. Model
# =============================================================================

PRESETS = {
    "custom": dict(dim=128, depth=4, heads=4, mlp_dim=256),    # ~0.55 M parameters
    "tiny": dict(dim=192, depth=12, heads=3, mlp_dim=768),     # ~5.4 M (ViT-Tiny / DeiT-Ti)
    "small": dict(dim=384, depth=12, heads=6, mlp_dim=1536),   # ~21.5 M (ViT-Small / DeiT-S)
}


class Attention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, N, D = x.shape
        H = self.heads
        qkv = self.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D/H)
        q, k, v = qkv.unbind(0)
        attn = None
        if return_attn:
            # Explicit path: the probabilities are a named step so rollout can use them.
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, H, N, N)
            out = self.drop(attn) @ v
        else:
            # Fused path (flash / memory-efficient kernels): same maths, no N x N tensor kept.
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, D)                              # (B, N, D)
        return self.drop(self.proj(out)), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        a, attn = self.attn(self.norm1(x), return_attn)
        x = x + a
        x = x + self.mlp(self.norm2(x))
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
        self.patch_size, self.grid = patch_size, img_size // patch_size
        self.num_prefix = 2 if distill_token else 1
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distill_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid ** 2, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill_token else None
        self.apply(self._init_weights)
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module):
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
        patches = patches.float().reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
        patches = F.interpolate(patches, size=(gh, gw), mode="bicubic", align_corners=False,
                                antialias=gh < self.grid or gw < self.grid)
        patches = patches.permute(0, 2, 3, 1).reshape(1, gh * gw, D)                      # (1, gh*gw, D)
        return torch.cat([prefix, patches.to(prefix.dtype)], dim=1)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"resolution {H}x{W} is not divisible by the patch size {p}; "
                             f"use a multiple of {p}")
        x = self.patch_embed(x)                                   # (B, D, H/p, W/p)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)                          # (B, gh*gw, D)
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)                        # (B, N = num_prefix + gh*gw, D)
        x = self.drop(x + self.pos_embed_for(gh, gw))
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attn)
            attentions.append(attn)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if self.head_dist is not None:
            # Always both heads, in training and evaluation: the caller decides how to combine.
            logits = (logits, self.head_dist(x[:, 1]))
        return (logits, attentions) if return_attn else logits


def build_model(preset: str, *, patch_size: int, distill_token: bool = False, dropout: float = 0.0) -> ViT:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid: {', '.join(PRESETS)}")
    return ViT(**PRESETS[preset], patch_size=patch_size, distill_token=distill_token, dropout=dropout)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================
# 3. Saliency: attention rollout (Abnar & Zuidema, 2020)
# =============================================================================

def attention_rollout(attentions: list[torch.Tensor], token: int = 0, num_prefix: int = 1,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """How much each patch flows into `token` through all layers -> (B, gh, gw).

    attentions: per layer (B, heads, N, N) probabilities. Pure, batched and
    differentiable, so the student's map can be trained.
    """
    B, _, N, _ = attentions[0].shape
    n_patches = N - num_prefix
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"{n_patches} patch tokens (N={N}, num_prefix={num_prefix}) is not a square grid")
    eye = torch.eye(N, device=attentions[0].device)
    rollout = eye.expand(B, N, N)
    for attn in attentions:
        attn = attn.float()
        if head_fusion == "mean":
            a = attn.mean(dim=1)                                   # (B, N, N)
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
                a = a.flatten(1).scatter(1, drop, 0.0).view(B, N, N)
        a = (a + eye) / 2                                          # the residual connection
        a = a / a.sum(dim=-1, keepdim=True)                        # rows sum to one again
        rollout = a @ rollout                                      # later layers on the left
    return rollout[:, token, num_prefix:].reshape(B, g, g)        # (B, gh, gw)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map to [0, 1]; eps keeps a flat map finite (it becomes all zeros)."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


def saliency_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE between min-max normalised maps; a finer teacher map is area-pooled to the student grid."""
    if teacher_map.shape[-2:] != student_map.shape[-2:]:
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
    """The layers of the original Grad-CAM saliency: 1, 2 and the last for shallow models, else all."""
    return [0, 1, depth - 1] if depth <= 4 else list(range(depth))


def token_gradcam(logits: torch.Tensor, tokens: list[torch.Tensor], target: torch.Tensor,
                  num_prefix: int, create_graph: bool) -> torch.Tensor:
    """Grad-CAM over patch tokens, averaged over the captured layers -> (B, gh, gw).

    Per layer: channel weights = the gradient of the target-class score averaged over
    tokens; map = ReLU(sum over channels of weight * token). With create_graph=True the
    map stays differentiable (second order), so a loss on it trains the student.
    """
    score = logits.float().gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(score, tokens, create_graph=create_graph)
    cams = [F.relu((g.mean(dim=1, keepdim=True) * h).sum(-1).float())[:, num_prefix:]  # (B, n_patches)
            for h, g in zip(tokens, grads)]
    cam = torch.stack(cams).mean(0)
    side = math.isqrt(cam.shape[1])
    return cam.reshape(-1, side, side)                                                 # (B, gh, gw)


# =============================================================================
# 4. Losses
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
               + gamma * MSE(rollout(student), rollout(teacher))

    Without a teacher it is plain cross-entropy (with optional label smoothing).
    """

    def __init__(self, teacher: nn.Module | None = None, *, alpha: float = 0.5, temperature: float = 4.0,
                 hard: bool = False, gamma: float = 0.0, label_smoothing: float = 0.0,
                 saliency: str = "rollout"):
        super().__init__()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.hard = alpha, temperature, hard
        self.gamma, self.label_smoothing, self.saliency = gamma, label_smoothing, saliency

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, ever
        return self

    def forward(self, outputs, internals, y, teacher_input=None):
        """outputs: student logits, or (cls, dist) logits; y: labels (B,) or soft targets (B, C);
        internals: the student's per-layer attention probabilities (saliency="rollout") or
        its captured tokens (saliency="grad"), used only when gamma > 0.

        Returns (loss, parts) with parts detached for logging.
        """
        cls_logits = outputs[0] if isinstance(outputs, tuple) else outputs
        ce = F.cross_entropy(cls_logits, y, label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        if self.teacher is None:
            return ce, parts
        if self.gamma == 0:
            with torch.no_grad():
                t_logits = self.teacher(teacher_input)
        else:
            t_logits, t_map = self.teacher_saliency(teacher_input, y)
        kd = kd_loss(outputs[1], t_logits, self.temperature, self.hard)
        loss = (1 - self.alpha) * ce + self.alpha * kd
        parts["kd"] = kd.detach()
        if self.gamma > 0:
            if self.saliency == "rollout":
                s_map = attention_rollout(internals, num_prefix=2)           # student: cls row
            else:
                s_map = token_gradcam(cls_logits, internals, y, num_prefix=2, create_graph=True)
            sal = saliency_loss(s_map, t_map)
            loss = loss + self.gamma * sal
            parts["sal"] = sal.detach()
        return loss, parts

    def teacher_saliency(self, x: torch.Tensor, y: torch.Tensor):
        """The teacher's logits and saliency map, both without a graph to the student."""
        t = self.teacher
        if self.saliency == "rollout":
            with torch.no_grad():
                logits, attn = t(x, return_attn=True)
            return logits, attention_rollout(attn, num_prefix=t.num_prefix)
        # Grad-CAM needs gradients inside the frozen teacher: take them w.r.t. its tokens only.
        with torch.enable_grad(), capture_tokens(t, grad_layers(len(t.blocks))) as tokens:
            logits = t(x.detach().requires_grad_(True))
            cam = token_gradcam(logits, tokens, y, num_prefix=t.num_prefix, create_graph=False)
        return logits.detach(), cam.detach()


def mix_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, num_classes: int = 10,
              mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0):
    """Mixup or CutMix (half the batches each) for the teacher recipe -> (x, soft targets)."""
    B = x.shape[0]
    perm = torch.randperm(B, generator=generator)
    # pinned + non_blocking: a plain host-to-GPU copy would wait for the queued work (a sync per step)
    perm = perm.pin_memory().to(x.device, non_blocking=True) if x.is_cuda else perm.to(x.device)
    use_cutmix = torch.rand(1, generator=generator).item() < 0.5
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    # Beta(alpha, alpha) from the same generator, so the run stays a function of its seed.
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator))).beta(alpha, alpha))
    if use_cutmix:
        H, W = x.shape[-2:]
        ch, cw = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy = int(torch.randint(H, (1,), generator=generator))
        cx = int(torch.randint(W, (1,), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually pasted
    else:
        x = lam * x + (1 - lam) * x[perm]
    one_hot = F.one_hot(y, num_classes).float()
    return x, lam * one_hot + (1 - lam) * one_hot[perm]


# =============================================================================
# 5. Training: the resolution curriculum
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
    temperature: float = 4.0
    hard_kd: bool = False
    gamma: float = 0.8
    saliency: str = "rollout"          # "rollout" (attention rollout) or "grad" (the original Grad-CAM)
    teacher: str = ""                  # checkpoint path; empty = the cached default teacher
    teacher_model: str = "small"       # the teacher's preset (its recipe is in teacher.py)
    teacher_epochs: int = 135
    teacher_res: str = "same"          # "same": the student's view; "full": the 32-px view
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
    compile: bool = False              # torch.compile the student and teacher (CUDA graphs on CUDA)

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
        choices = dict(resize_mode=("resize", "crop"), schedule=("constant", "onecycle"),
                       teacher_res=("same", "full"), saliency=("rollout", "grad"))
        for k, valid in choices.items():
            if getattr(self, k) not in valid:
                bad(f"{k}={getattr(self, k)!r}; valid: {', '.join(valid)}")
        if self.sal and not self.kd:
            bad("sal=True needs kd=True (the saliency target comes from the teacher)")
        if (self.mixup or self.randaug or self.erasing) and self.kd:
            bad("mixup, randaug and erasing are part of the teacher recipe; they cannot be combined with kd "
                "(the teacher would have to see the same altered images)")
        if self.compile and self.sal and self.saliency == "grad":
            bad("compile=True cannot run saliency='grad': compiled graphs have no second-order "
                "gradients; use --compile=false or --saliency=rollout")
        if not 0 <= self.erasing <= 1:
            bad(f"erasing={self.erasing} is a probability; choose a value in [0, 1]")


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and never hand freed memory back to the OS.

    By default glibc maps each block above 32 MB (the ViT-Small teacher's MLP activations
    at batch 128 are 51 MB) with its own mmap and trims the heap whenever a step frees its
    activations, so every step faults its memory in again, page by page. In this VM that
    costs 2.6-4.8 s of kernel time per KD+Sal step of the small student (a 9.8 s step
    instead of 7.8 s). Two mallopt calls end it; the price is that the process keeps
    its peak memory. Returns False where it does not apply (not glibc, or refused).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                   # from <malloc.h>; a threshold of -1: never trim
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


def compile_model(model: nn.Module, device: torch.device, backend: str = "inductor") -> nn.Module:
    """torch.compile with one static graph per resolution and attention path.

    On CUDA, mode "reduce-overhead" replays each step as a CUDA graph: the 9-token 12-px
    stage is otherwise bound by kernel launches, not by arithmetic. Callers mark each new
    step with torch.compiler.cudagraph_mark_step_begin(). On a CPU, inductor's C++.
    The returned module shares its parameters with `model`: save and load through `model`.
    """
    # 6 resolutions x (fused, explicit) x (train, eval) graphs: above dynamo's default limit of 8,
    # past which it would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return torch.compile(model, backend=backend, mode=mode, dynamic=False)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def write_json(path: str, obj) -> None:
    """Write JSON atomically: a temporary file, then one rename; never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_args(cfg: Config) -> dict:
    return dict(preset=cfg.model, patch_size=cfg.patch_size, distill_token=cfg.kd, dropout=cfg.dropout)


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[ViT, dict]:
    """Rebuild a model saved by train() -> (model, checkpoint metadata)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model = build_model(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; train it first (python teacher.py) "
                                f"or pass --teacher=PATH") from None
    except Exception as e:
        raise ValueError(f"{path} is not a usable IRKD checkpoint ({type(e).__name__}: {e}); "
                         f"delete it and train again") from e
    return model.to(device), ckpt


def prepare_data(cfg: Config, data: dict | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The paper's split, optional subsets, and every tensor moved to the device once."""
    data = data if data is not None else load_cifar10(cfg.data)
    tx, ty, vx, vy = split_train_val(data["train_x"], data["train_y"])
    sx, sy = data["test_x"], data["test_y"]
    n = lambda size, t: size if 0 < size < len(t) else len(t)  # noqa: E731 (0 = everything)
    out = dict(train_x=tx[:n(cfg.train_size, tx)], train_y=ty[:n(cfg.train_size, tx)],
               val_x=vx[:n(cfg.val_size, vx)], val_y=vy[:n(cfg.val_size, vx)],
               test_x=sx[:n(cfg.test_size, sx)], test_y=sy[:n(cfg.test_size, sx)])
    if len(out["train_x"]) < cfg.batch_size:
        raise ValueError(f"{len(out['train_x'])} training images (after holding out 5,000 for validation) "
                         f"is fewer than one batch of {cfg.batch_size}")
    return {k: v.to(device) for k, v in out.items()}


def make_run_dir(cfg: Config) -> str:
    run_dir = os.path.join(cfg.out, cfg.name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise OSError(f"cannot write to the output directory {run_dir} ({e.strerror}); "
                      f"choose another with --out=DIR") from e
    return run_dir


# Config fields that may change between a run and its resumption (where and how
# fast it runs, not what it computes).
RESUMABLE_CHANGES = {"device", "resume", "data", "compile"}


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e}); delete it "
                         f"to start the run over, or re-run with --resume=false") from e


def resume_state(cfg: Config, run_dir: str, teacher_info: dict | None) -> dict | None:
    """The last epoch-end checkpoint of this run, if it may be continued; None to start fresh."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not cfg.resume or not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    old, new = ckpt["config"], dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(Config())  # a field added since the checkpoint was written had its default
    changed = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k, defaults[k]) != new[k]]
    if changed:
        raise ValueError(f"{run_dir} holds a run with a different config ({', '.join(changed)} differ); "
                         f"re-run with --resume=false to start over, or choose another --name or --out")
    old_md5 = (ckpt.get("teacher_info") or {}).get("md5")
    if old_md5 != (teacher_info or {}).get("md5"):
        raise ValueError(f"{run_dir} was trained with another teacher ({(ckpt.get('teacher_info') or {}).get('path')}); "
                         f"re-run with --resume=false to start over with this one")
    return ckpt


@torch.no_grad()
def saliency_snapshot(model: nn.Module, teacher: nn.Module | None, images: torch.Tensor, res: int,
                      teacher_res: str) -> dict:
    """Rollout maps of the student (and teacher) for a fixed handful of images, for plots.py."""
    was_training = model.training
    model.eval()
    x = normalize(images)
    _, attn = model(resize(x, res), return_attn=True)
    snap = dict(res=res, student=attention_rollout(attn, num_prefix=model.num_prefix).cpu())
    if teacher is not None:
        _, t_attn = teacher(resize(x, 32 if teacher_res == "full" else res), return_attn=True)
        snap["teacher"] = attention_rollout(t_attn, num_prefix=teacher.num_prefix).cpu()
    model.train(was_training)
    return snap


def train_step(model: nn.Module, loss_fn: IRKDLoss, opt: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, res: int, lr: float,
               resize_mode: str = "resize", full_view: bool = False, need_attn: bool = False,
               token_layers=(), mix_gen: torch.Generator | None = None, aug_gen: torch.Generator | None = None,
               randaug: bool = False, erasing: float = 0.0, autocast: dict | None = None):
    """One optimisation step on a uint8 batch -> (loss, ce, kd, sal, correct) as one device tensor.

    The body of train()'s inner loop (bench.py times this same function): augment and
    resize, the teacher recipe's extras (TrivialAugment, random erasing, mixup / cutmix;
    their draws from the device generator aug_gen), student forward (explicit attention where saliency needs it),
    IRKDLoss (which runs the teacher), backward, AdamW. No host synchronisation.
    """
    xs, xt = make_views(images, offsets, flips, res, resize_mode, full_view=full_view,
                        aug_gen=aug_gen if randaug else None)
    if erasing > 0:
        xs = random_erase(xs, aug_gen, erasing)
    target = labels
    if mix_gen is not None:
        xs, target = mix_batch(xs, labels, mix_gen)
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast(**(autocast or dict(device_type=xs.device.type, enabled=False))), \
            capture_tokens(model, token_layers) as tokens:
        out = model(xs, return_attn=need_attn)
        out, attns = out if need_attn else (out, None)
        internals = tokens if token_layers else attns          # what the saliency term reads
        loss, parts = loss_fn(out, internals, target, teacher_input=xs if xt is None else xt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    cls_logits = out[0] if isinstance(out, tuple) else out
    zero = loss.new_zeros(())
    return torch.stack([loss.detach().float(), parts["ce"].float(), parts.get("kd", zero).float(),
                        parts.get("sal", zero).float(), (cls_logits.argmax(-1) == labels).sum().float()])


def train(cfg: Config, *, teacher: nn.Module | None = None, data: dict | None = None,
          teacher_info: dict | None = None) -> dict:
    """Train one model through the curriculum, evaluate it, write runs/NAME/; return results.json's dict.

    teacher: the frozen teacher for kd (loaded by the caller); data: load_cifar10()'s
    dict (loaded from cfg.data when None). Writes config.json, log.jsonl (one line per
    epoch), checkpoint.pt (every epoch, atomically), saliency.pt (every stage end),
    model.pt and results.json. A run whose checkpoint.pt exists continues from it.
    """
    cfg.check()
    if cfg.kd and teacher is None:
        raise ValueError(f"config {cfg.name!r} has kd=True but no teacher was given")
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # TF32 for any float32 matmul left
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        keep_freed_memory()                            # no page-faulting of activations every step
    torch.manual_seed(cfg.seed)
    run_dir = make_run_dir(cfg)
    ckpt = resume_state(cfg, run_dir, teacher_info)
    d = prepare_data(cfg, data, device)
    model = build_model(cfg.model, patch_size=cfg.patch_size, distill_token=cfg.kd,
                        dropout=cfg.dropout).to(device)
    if teacher is not None:
        teacher = teacher.to(device)
    # What the steps run: the same modules, compiled with cfg.compile (their weights are shared).
    step_model = compile_model(model, device) if cfg.compile else model
    step_teacher = compile_model(teacher, device) if cfg.compile and teacher is not None else teacher
    loss_fn = IRKDLoss(step_teacher if cfg.kd else None, alpha=cfg.alpha, temperature=cfg.temperature,
                       hard=cfg.hard_kd, gamma=cfg.gamma if cfg.sal else 0.0,
                       label_smoothing=cfg.label_smoothing, saliency=cfg.saliency)
    # The explicit attention path only where saliency needs it: rollout reads its probabilities,
    # and the second-order Grad-CAM cannot differentiate twice through the fused kernel.
    need_attn = cfg.kd and cfg.sal
    token_layers = grad_layers(len(model.blocks)) if need_attn and cfg.saliency == "grad" else []
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    write_json(os.path.join(run_dir, "config.json"),
               dict(dataclasses.asdict(cfg), params=count_params(model), teacher_info=teacher_info,
                    commit=git_commit()))

    stages = cfg.stages()
    total_epochs = sum(e for _, e in stages)
    sampler = EpochSampler(len(d["train_x"]), cfg.batch_size, cfg.seed, device)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = steps_per_epoch * total_epochs
    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # on the device: no copies per step
    sal_images = d["test_x"][:8]             # the fixed handful whose maps plots.py shows
    log_path, sal_path = os.path.join(run_dir, "log.jsonl"), os.path.join(run_dir, "saliency.pt")
    done, step, train_s, rows, snapshots, opt_state = 0, 0, 0.0, [], [], None
    if ckpt is not None:  # continue exactly where the last completed epoch left off
        model.load_state_dict(ckpt["model"])
        sampler.generator.set_state(ckpt["sampler_rng"])
        mix_gen.set_state(ckpt["mix_rng"])
        if ckpt.get("aug_rng") is not None and len(ckpt["aug_rng"]) == len(aug_gen.get_state()):
            aug_gen.set_state(ckpt["aug_rng"])
        elif cfg.randaug or cfg.erasing:      # CPU and CUDA generators differ: a new stream
            print(f"note: resumed on {device.type}; the augmentation draws restart from the seed")
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])      # dropout draws on the GPU's generator
        done, step, train_s, opt_state = ckpt["epoch"], ckpt["step"], ckpt["train_s"], ckpt["optimizer"]
        try:
            with open(log_path) as f:
                rows = [json.loads(line) for line in f if line.strip()][:done]
            snapshots = torch.load(sal_path, weights_only=False)["stages"] if os.path.exists(sal_path) else []
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"{run_dir}: log.jsonl or saliency.pt is damaged ({type(e).__name__}: {e}); "
                             f"re-run with --resume=false to start the run over") from e
        print(f"resuming {cfg.name} from {run_dir}/checkpoint.pt after epoch {done}/{total_epochs}")
    with open(log_path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(log_path + ".tmp", log_path)

    bar = tqdm(total=total_steps * cfg.batch_size, initial=done * steps_per_epoch * cfg.batch_size,
               unit="img", unit_scale=True, dynamic_ncols=True, smoothing=0.05, mininterval=1.0)
    log = open(log_path, "a")
    epoch, opt = 0, None
    for stage, (res, epochs) in enumerate(stages):
        for stage_epoch in range(1, epochs + 1):
            epoch += 1
            if epoch <= done:
                continue                           # finished before the resume
            if opt is None or (cfg.fresh_optimizer and stage_epoch == 1):
                opt = make_optimizer(model, cfg)   # fresh moments: each resolution starts anew
                if opt_state is not None and not (cfg.fresh_optimizer and stage_epoch == 1):
                    opt.load_state_dict(opt_state)  # resumed mid-stage (or optimizer carried over)
            bar.set_description(f"{cfg.name} {res}px ep {epoch}/{total_epochs}")
            model.train()
            loss_fn.train()
            sums = torch.zeros(5, device=device)   # loss, ce, kd, sal, correct: on the device, no sync
            first_bad = torch.full((), -1, device=device)  # first step with a non-finite loss
            t0 = time.time()
            for idx, offsets, flips in sampler.epoch(crop=res if cfg.resize_mode == "crop" else 32):
                lr = lr_at(cfg, step, total_steps, cfg.warmup_epochs * steps_per_epoch)
                if cfg.compile and device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
                stats = train_step(step_model, loss_fn, opt, d["train_x"][idx], d["train_y"][idx], offsets, flips,
                                   res=res, lr=lr, resize_mode=cfg.resize_mode,
                                   full_view=cfg.kd and cfg.teacher_res == "full", need_attn=need_attn,
                                   token_layers=token_layers, mix_gen=mix_gen if cfg.mixup else None,
                                   aug_gen=aug_gen, randaug=cfg.randaug, erasing=cfg.erasing, autocast=autocast)
                sums += stats
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(stats[0]),
                                        torch.full_like(first_bad, step), first_bad)
                step += 1
                bar.update(cfg.batch_size)
            if first_bad.item() >= 0:                  # one sync per epoch, not per step
                bar.close()
                raise FloatingPointError(
                    f"{cfg.name}: the loss became NaN or infinite at stage {stage} ({res} px), epoch {epoch}, "
                    f"step {int(first_bad)}; training stopped. The last good checkpoint (epoch {epoch - 1}) "
                    f"is kept in {run_dir}/checkpoint.pt. Try a lower --lr.")
            seconds = time.time() - t0
            val = evaluate(model, d["val_x"], d["val_y"], res)
            s = (sums / torch.tensor([steps_per_epoch] * 4 + [steps_per_epoch * cfg.batch_size / 100],
                                     device=device)).tolist()
            row = dict(stage=stage, res=res, epoch=epoch, stage_epoch=stage_epoch, lr=lr,
                       loss=s[0], ce=s[1], kd=s[2], sal=s[3], train_acc=s[4], val_acc=val[main_head(val)],
                       val_heads=val, seconds=round(seconds, 3),
                       images_per_s=round(steps_per_epoch * cfg.batch_size / seconds, 1))
            rows.append(row)
            if stage_epoch == epochs:              # stage end: keep the maps for plots.py
                snapshots.append(dict(stage=stage, **saliency_snapshot(
                    model, teacher if cfg.kd else None, sal_images, res, cfg.teacher_res)))
                save_atomic(dict(images=sal_images.cpu(), labels=d["test_y"][:8].cpu(), stages=snapshots),
                            sal_path)
            train_s += time.time() - t0               # training, validation and snapshots of this epoch
            # The checkpoint first, then the log line: a kill between the two loses only a log line
            # that the resumed run writes again.
            save_atomic(dict(model=model.state_dict(), optimizer=opt.state_dict(), stage=stage,
                             stage_epoch=stage_epoch, epoch=epoch, step=step, train_s=train_s,
                             sampler_rng=sampler.generator.get_state(), mix_rng=mix_gen.get_state(),
                             aug_rng=aug_gen.get_state(), torch_rng=torch.get_rng_state(),
                             config=dataclasses.asdict(cfg),
                             cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                             model_args=model_args(cfg), teacher_info=teacher_info),
                        os.path.join(run_dir, "checkpoint.pt"))
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{s[0]:.3f}", train=f"{s[4]:.1f}", val=f"{row['val_acc']:.1f}")
    bar.close()
    log.close()

    t_eval = time.time()
    by_head = evaluate_all(model, d["test_x"], d["test_y"], cfg.resolutions)
    head = main_head(by_head)
    results = dict(name=cfg.name, test_acc=by_head[head]["32"], test_head=head,
                   test_acc_by_res=by_head[head], heads=by_head, val_acc=rows[-1]["val_acc"],
                   params=count_params(model), wall_s=round(train_s + time.time() - t_eval, 1),
                   train_s=round(train_s, 1), device=device_name(device), seed=cfg.seed,
                   epochs=total_epochs, stages=stages, teacher=teacher_info,
                   test_images=len(d["test_x"]), train_images=len(d["train_x"]), quick=cfg.quick,
                   commit=git_commit(),
                   # which copy of the data: the official archive and the JPEG copy differ here
                   test_md5=hashlib.md5(d["test_x"].cpu().numpy().tobytes()).hexdigest())
    save_atomic(dict(model=model.state_dict(), model_args=model_args(cfg), config=dataclasses.asdict(cfg),
                     test_acc=results["test_acc"]), os.path.join(run_dir, "model.pt"))
    write_json(os.path.join(run_dir, "results.json"), results)
    return results


def git_commit() -> str:
    """The commit this code runs on ("-dirty" when files differ from it), or "unknown"."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout.strip()
        return run("rev-parse", "HEAD") + ("-dirty" if run("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# =============================================================================
# 6. Evaluation: every head at every resolution
# =============================================================================

def main_head(heads: dict) -> str:
    """The reported head: the average of cls and dist where there is a dist token (DeiT), else cls."""
    return "avg" if "avg" in heads else "cls"


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: int, batch_size: int = 500) -> dict:
    """Top-1 accuracy (%) at resolution `res` -> {"cls": ..} or {"cls", "dist", "avg"}.

    The test images go through the same normalise + antialiased resize as training.
    """
    was_training = model.training
    model.eval()
    correct = None
    autocast = dict(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda")
    for i in range(0, len(x), batch_size):
        with torch.autocast(**autocast):
            out = model(resize(normalize(x[i:i + batch_size]), res))
        yb = y[i:i + batch_size]
        if isinstance(out, tuple):
            cls, dist = out[0].float(), out[1].float()
            # "avg" averages the two heads' softmax outputs, as DeiT does at test time.
            avg = cls.softmax(-1) + dist.softmax(-1)
            hits = torch.stack([(o.argmax(-1) == yb).sum() for o in (cls, dist, avg)])
        else:
            hits = (out.argmax(-1) == yb).sum()[None]
        correct = hits if correct is None else correct + hits
    model.train(was_training)
    accs = (correct.float() * 100 / len(x)).tolist()
    return dict(zip(("cls", "dist", "avg"), [round(a, 2) for a in accs]))


def evaluate_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 resolutions=RESOLUTIONS) -> dict[str, dict[str, float]]:
    """{head: {"12": acc, ..., "32": acc}} on every resolution; 32 px always included."""
    resolutions = sorted(set(resolutions) | {32})
    per_res = {r: evaluate(model, x, y, r) for r in resolutions}
    return {h: {str(r): per_res[r][h] for r in resolutions} for h in per_res[32]}
