"""CIFAR-10 on the device: loading, the split, the sampler, augmentation and the two views.

    load_cifar10      the official python files (downloaded, md5-checked, when missing)
    split_train_val   the paper's fixed 45,000 / 5,000 split
    prepare           subsets and every tensor moved to the training device once
    EpochSampler      every random draw of an epoch (order, crop offsets, flips)
    make_views        the student's view at `res` and the teacher's view of the same image
    teacher recipe    TrivialAugment, random erasing, mixup / cutmix (teachers only)

The whole dataset lives on the device as uint8; batches are augmented with tensor ops,
so no DataLoader workers are needed (cifar10-airbench's approach). Imports nothing of
the project.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F

# =============================================================================
# Loading
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


class DataError(OSError):
    """Missing, partial or corrupt data files; the message says what to do."""


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
    created = not os.path.exists(root)
    os.makedirs(root, exist_ok=True)
    try:
        _download_into(root, url, md5)
    except DataError:
        if created and not os.listdir(root):
            os.rmdir(root)                # a mistyped --data leaves no empty directory behind
        raise


def _download_into(root: str, url: str, md5: str) -> None:
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
            raise DataError(f"the downloaded archive has md5 {got}, expected {md5}: it is corrupt "
                            "or not the official file. Delete it and retry, or "
                            f"{_where_to_put(root)}")
        wanted = {f"{CIFAR_DIR}/{m}" for m in CIFAR_MEMBERS}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # Only the known member names: a hostile archive cannot write outside tmp.
                members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
                tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"the archive could not be unpacked ({e}). "
                            f"{_where_to_put(root)}") from e
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
                        f"Delete {os.path.join(root, CIFAR_DIR)} and run again to re-download it "
                        f"(this needs the internet), or {_where_to_put(root)}") from e
    if len(labels) == 0 or len(images) != len(labels) or labels.min() < 0 or labels.max() > 9:
        span = f"[{labels.min()}, {labels.max()}]" if len(labels) else "none"
        raise DataError(f"{path} has {len(images)} images, {len(labels)} labels and labels in "
                        f"{span}: not a CIFAR-10 batch. {_where_to_put(root)}")
    return images, labels


def load_cifar10(root: str = "data", download: bool = True) -> dict[str, torch.Tensor]:
    """CIFAR-10 as uint8 tensors: train_x (50000, 3, 32, 32), train_y, test_x, test_y.

    root holds cifar-10-batches-py/ (or is that folder itself). Missing entirely: the official
    archive is downloaded. Partial: the missing files are named, nothing is downloaded.
    """
    if os.path.basename(os.path.normpath(root)) == CIFAR_DIR and not os.path.isdir(
            os.path.join(root, CIFAR_DIR)):
        root = os.path.dirname(os.path.normpath(root)) or "."     # --data pointed one level deep
    folder = os.path.join(root, CIFAR_DIR)
    missing = [f for f in TRAIN_FILES + [TEST_FILE] if not os.path.isfile(os.path.join(folder, f))]
    if missing and (len(missing) < len(TRAIN_FILES) + 1 or not download):
        raise DataError(f"CIFAR-10 in {folder} is missing or partial: no {', '.join(missing)}. "
                        f"{_where_to_put(root)}")
    if missing:
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

def prepare(data: dict, *, train_size: int = 0, val_size: int = 0, test_size: int = 0,
            batch_size: int = 128, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The paper's split, optional subsets (0 = everything), every tensor moved to `device` once."""
    tx, ty, vx, vy = split_train_val(data["train_x"], data["train_y"])
    sx, sy = data["test_x"], data["test_y"]
    n = lambda size, t: size if 0 < size < len(t) else len(t)  # noqa: E731 (0 = everything)
    out = dict(train_x=tx[:n(train_size, tx)], train_y=ty[:n(train_size, tx)],
               val_x=vx[:n(val_size, vx)], val_y=vy[:n(val_size, vx)],
               test_x=sx[:n(test_size, sx)], test_y=sy[:n(test_size, sx)])
    if len(out["train_x"]) < batch_size:
        raise ValueError(f"{len(out['train_x'])} training images (after holding out 5,000 for "
                         f"validation) is fewer than one batch of {batch_size}")
    return {k: v.to(device) for k, v in out.items()}


# =============================================================================
# Views: normalise, crop + flip, resize
# =============================================================================



def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, 1, 1) mean and std on `device`, made once: building them from Python
    lists every step is a blocking host-to-device copy on CUDA (and illegal in a CUDA graph)."""
    if device not in _MEAN_STD:
        _MEAN_STD[device] = (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                             torch.tensor(STD, device=device).view(1, 3, 1, 1))
    return _MEAN_STD[device]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32, standardised by CIFAR-10's mean, std."""
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

    def epoch(self, crop: int = 32, pad: int = 4, augment: bool = True):
        """Yield (indices, crop offsets, flips) per batch. augment=False: the centre crop, no
        flip (the draws are still made, so the image order matches an augmented run's)."""
        g = self.generator
        perm = torch.randperm(self.n, generator=g)
        offsets = torch.randint(0, 32 + 2 * pad - crop + 1, (self.n, 2), generator=g)
        flips = torch.rand(self.n, generator=g) < 0.5
        if not augment:
            offsets, flips = (torch.full_like(offsets, (32 + 2 * pad - crop) // 2),
                              torch.zeros_like(flips))
        perm, offsets, flips = (t.to(self.device) for t in (perm, offsets, flips))
        # drop the ragged last batch
        for i in range(0, self.n - self.batch_size + 1, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield idx, offsets[idx], flips[idx]

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size


# The teacher recipe's stronger augmentation, as batch tensor ops on the device (no torchvision):

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
            raise ValueError("teacher_res='full' needs resize_mode='resize': "
                             "a crop has no 32-px view")
        return crop(res), None
    raise ValueError(f"unknown resize_mode {mode!r}; use 'resize' or 'crop'")


# =============================================================================
# The teacher recipe's augmentation (students do not use it)
# =============================================================================

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
    # autocontrast; a flat channel stays as it is
    stretched = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-3), x)  # (B, C, H, W)
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
    value_op = torch.where(op < _GEOMETRIC, op, 0)                # geometric: identity here
    out = values[value_op, torch.arange(B, device=x.device)]      # (B, C, H, W)
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


def mix_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, num_classes: int = 10,
              mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0):
    """Mixup or CutMix (half the batches each) for the teacher recipe -> (x, soft targets)."""
    B = x.shape[0]
    perm = torch.randperm(B, generator=generator)
    # pinned + non_blocking: a plain host-to-GPU copy would wait for the queued work (a sync
    # per step)
    perm = perm.pin_memory().to(x.device, non_blocking=True) if x.is_cuda else perm.to(x.device)
    use_cutmix = torch.rand(1, generator=generator).item() < 0.5
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    # Beta(alpha, alpha) from the same generator, so the run stays a function of its seed.
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
                .beta(alpha, alpha))
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


def recipe_extras(x: torch.Tensor, labels: torch.Tensor, *, aug_gen: torch.Generator,
                  erasing: float = 0.0,
                  mix_gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher recipe's extras on a normalised batch -> (x, the loss target).

    Random erasing with probability `erasing` per image, then mixup / cutmix when a
    mix_gen is given (the target becomes soft). With neither, x and the labels unchanged.
    """
    if erasing > 0:
        x = random_erase(x, aug_gen, erasing)
    if mix_gen is None:
        return x, labels
    return mix_batch(x, labels, mix_gen)
