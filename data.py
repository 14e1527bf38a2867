"""CIFAR-10 on the device: loading, the split, the sampler, augmentation and the two views.

    load_cifar10      the official python files (downloaded, md5-checked, when missing)
    split_train_val   the fixed 45,000 / 5,000 split (this project's, or the notebooks')
    prepare           subsets and every tensor moved to the training device once
    EpochSampler      every random draw of an epoch (order, crop offsets, flips)
    make_views        the student's view at `res` and the teacher's view of the same image
    teacher recipe    TrivialAugment, random erasing, mixup / cutmix (teachers only)
    auto_augment      AutoAugment's CIFAR-10 policy (the replay of the original p2 KD cell)

The whole dataset lives on the device as uint8; batches are augmented with tensor ops,
so no DataLoader workers are needed (cifar10-airbench's approach). Imports only irkd (the
normalisation and the resize, which evaluation shares with training).
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

# the method's own view of an image (normalise, antialiased resize) and its resolutions
from irkd import MEAN, RESOLUTIONS, STD, normalize, resize  # noqa: F401 (re-exported)

# =============================================================================
# Loading
# =============================================================================

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
CIFAR_MEMBERS = TRAIN_FILES + [TEST_FILE, "batches.meta", "readme.html"]


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


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int = 5000, seed: int = 42,
                    split: str = "project"):
    """The fixed split of the 50,000 training images into training and validation. Both
    readings draw one seed-42 permutation: split="project" (this project's; the study's runs
    depend on it) validates on its *first* `val_size` images, split="notebooks" on its *last*
    ones, as the notebooks' random_split(..., [45000, 5000], generator=manual_seed(42)) does."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    if split == "notebooks":
        train, val = perm[:len(x) - val_size], perm[len(x) - val_size:]
    elif split == "project":
        val, train = perm[:val_size], perm[val_size:]
    else:
        raise ValueError(f"split={split!r}: use 'project' or 'notebooks'")
    return x[train], y[train], x[val], y[val]


def prepare(data: dict, *, train_size: int = 0, val_size: int = 0, test_size: int = 0,
            batch_size: int = 128, device: torch.device | str = "cpu",
            split: str = "project") -> dict[str, torch.Tensor]:
    """The split (split_train_val), optional subsets (0 = everything), every tensor moved to
    `device` once."""
    tx, ty, vx, vy = split_train_val(data["train_x"], data["train_y"], split=split)
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
# Views: crop + flip, then irkd's normalise and resize
# =============================================================================

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
               aug_gen: torch.Generator | None = None, policy: str = "trivial"):
    """One augmented batch -> (student view at `res`, teacher's 32-px view or None).

    mode "resize": crop 32 of the padded image, flip, resize to res (the paper's idea).
    mode "crop":   crop res x res of the padded image directly (what the original code did).
    With full_view both views come from the *same* augmented 32-px image. With aug_gen, a
    per-image policy runs on the crop first, drawn from aug_gen: policy "trivial" is
    trivial_augment() (the teacher recipe), "autoaugment" is auto_augment() (AutoAugment's
    CIFAR-10 policy, what the original p2 KD notebook ran after its crop + flip).
    """
    augment = {"trivial": trivial_augment, "autoaugment": auto_augment}.get(policy)
    if augment is None:
        raise ValueError(f"unknown augmentation policy {policy!r}; use 'trivial' or 'autoaugment'")

    def crop(size):
        x = random_crop_flip(x_uint8, offsets, flips, size=size)
        return normalize(augment(x.float() / 255, aug_gen) if aug_gen is not None else x)
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


def random_erase(x: torch.Tensor, generator: torch.Generator, p: float,
                 max_area: float = 0.33) -> torch.Tensor:
    """With probability p per image, set a random rectangle (2 % to max_area of the area,
    aspect 0.3-3.3) to 0, the dataset mean once normalised. x: (B, C, H, W), normalised.
    max_area 0.33 is torchvision's default scale; the notebooks' P_2_KD_ONLY used 0.2."""
    B, _, H, W = x.shape
    u = torch.rand(5, B, generator=generator, device=x.device)
    area = (0.02 + (max_area - 0.02) * u[0]) * H * W
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
                  erasing: float = 0.0, erasing_area: float = 0.33,
                  mix_gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher recipe's extras on a normalised batch -> (x, the loss target).

    Random erasing with probability `erasing` per image (at most `erasing_area` of it), then
    mixup / cutmix when a mix_gen is given (the target becomes soft). With neither, x and the
    labels unchanged.
    """
    if erasing > 0:
        x = random_erase(x, aug_gen, erasing, erasing_area)
    if mix_gen is None:
        return x, labels
    return mix_batch(x, labels, mix_gen)


# =============================================================================
# AutoAugment's CIFAR-10 policy (the original p2 KD notebook's student augmentation)
# =============================================================================

# The 25 sub-policies of torchvision's AutoAugmentPolicy.CIFAR10 (Cubuk et al. 2019), each two
# (op, probability, magnitude bin of 10), as in pytorch/vision
# torchvision/transforms/autoaugment.py, AutoAugment._get_policies (read at 0352a47; the same
# table in transforms/v2/_auto_augment.py). P_2_KD_ONLY.ipynb ran
# AutoAugment(policy=AutoAugmentPolicy.CIFAR10) on the PIL image after RandomCrop(32, padding=4)
# and RandomHorizontalFlip, with the default nearest interpolation and black fill.
AA_CIFAR10 = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
# torchvision's AutoAugment op space, in its order
AA_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
# AutoAugment ops that apply_ops computes exactly, and their AUG_OPS names
_AA_SHARED = {"Brightness": "brightness", "Color": "color", "Contrast": "contrast",
              "Posterize": "posterize", "AutoContrast": "autocontrast"}


def aa_magnitude(name: str, bin: int | None, height: int, width: int) -> tuple[float, bool]:
    """torchvision's magnitude of op `name` at `bin` -> (unsigned value, whether it takes a
    random sign), from AutoAugment._augmentation_space(10, ...): shear linspace(0, 0.3);
    translate linspace(0, 150/331 * size) pixels, int() of the signed value (so truncated);
    rotate linspace(0, 30) degrees; brightness / color / contrast / sharpness linspace(0, 0.9),
    factor 1 + value; posterize 8 - round(bin / (9/4)) bits kept; solarize threshold
    linspace(255, 0) on 8-bit values (v2: linspace(1, 0) times 255). No bin: 0, unsigned."""
    if bin is None:
        return 0.0, False
    space = {"ShearX": (torch.linspace(0.0, 0.3, 10), True),
             "ShearY": (torch.linspace(0.0, 0.3, 10), True),
             "TranslateX": (torch.linspace(0.0, 150.0 / 331.0 * width, 10).trunc(), True),
             "TranslateY": (torch.linspace(0.0, 150.0 / 331.0 * height, 10).trunc(), True),
             "Rotate": (torch.linspace(0.0, 30.0, 10), True),
             "Posterize": (8 - (torch.arange(10) / ((10 - 1) / 4)).round(), False),
             "Solarize": (torch.linspace(255.0, 0.0, 10), False)}
    for enhance in ("Brightness", "Color", "Contrast", "Sharpness"):
        space[enhance] = (torch.linspace(0.0, 0.9, 10), True)
    values, signed = space[name]
    return float(values[bin]), signed


_AA_TABLES: dict[tuple, tuple[torch.Tensor, ...]] = {}

def _aa_tables(policy: tuple, device: torch.device, height: int,
               width: int) -> tuple[torch.Tensor, ...]:
    """A policy as (sub-policies, 2) tensors on `device` (op index, probability, unsigned
    magnitude, signed), made once per policy, device and image size: a host-to-device copy
    every step would block on CUDA."""
    key = (policy, device, height, width)
    if key not in _AA_TABLES:
        cells = [(AA_OPS.index(name), p, *aa_magnitude(name, bin, height, width))
                 for sub in policy for name, p, bin in sub]
        op, prob, mag, signed = zip(*cells)
        _AA_TABLES[key] = tuple(torch.tensor(v, device=device).view(len(policy), 2)
                                for v in (op, prob, mag, signed))
    return _AA_TABLES[key]


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image-channel's 8-bit values, as PIL's ImageOps.equalize
    (and torchvision's tensor equalize) do it: step = (pixels - count of the highest value
    present) // 255; step 0 (one value, or too few pixels): unchanged; otherwise value i ->
    min(255, (step // 2 + pixels below i) // step). x: float (B, C, H, W) in [0, 1]."""
    B, C, H, W = x.shape
    v = (x * 255).round().long().clamp(0, 255).view(B * C, H * W)          # 8-bit values
    hist = torch.zeros(B * C, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))                           # (B*C, 256)
    values = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, values, 0).amax(1, keepdim=True)         # (B*C, 1)
    step = (H * W - hist.gather(1, last)) // 255                          # (B*C, 1)
    below = hist.cumsum(1) - hist                                         # pixels below i
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp(max=255)       # (B*C, 256)
    out = torch.where(step > 0, lut.gather(1, v), v)                      # (B*C, H*W)
    return out.view(B, C, H, W).to(x.dtype) / 255


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness (torchvision's adjust_sharpness): blend with PIL's SMOOTH
    filter (3x3, centre 5, the rest 1, / 13, rounded to 8 bits), whose one-pixel border keeps
    the image's values. factor: (B,), 1 is the identity, 0 the smoothed image."""
    B, C, H, W = x.shape
    if H < 3 or W < 3:
        return x                                  # all border: the smoothed image is x
    kernel = torch.ones(C, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = x.clone()
    inner = F.conv2d(x, kernel / 13, groups=C)                            # (B, C, H-2, W-2)
    smooth[:, :, 1:-1, 1:-1] = (inner * 255).round() / 255
    f = factor.view(B, 1, 1, 1).to(x.dtype)
    return (smooth + f * (x - smooth)).clamp(0, 1)


def _aa_warp(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """AutoAugment's geometric ops as one nearest-neighbour warp with black fill, each image
    its own (theta is the identity where op is not geometric). As PIL's affine maps output
    to input in pixel coordinates: ShearX (u, v) <- (u + m v, v) and ShearY (u, v) <- (u, v +
    m u) about the top-left corner (torchvision passes center=[0, 0] and atan(m), so the
    matrix is (1, m, 0, 0, 1, 0)); TranslateX/Y u <- u - m (m whole pixels); Rotate m degrees
    counter-clockwise about the centre. theta is that map in grid units ([-1, 1] across
    the width and the height)."""
    B, C, H, W = x.shape
    zero = torch.zeros_like(m)
    is_op = lambda name: op == AA_OPS.index(name)  # noqa: E731
    sx, sy = torch.where(is_op("ShearX"), m, zero), torch.where(is_op("ShearY"), m, zero)
    tx = torch.where(is_op("TranslateX"), m, zero)
    ty = torch.where(is_op("TranslateY"), m, zero)
    rad = torch.where(is_op("Rotate"), m, zero) * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.stack([
        torch.stack([cos, (sx - sin) * H / W, sx * H / W - 2 * tx / W], -1),
        torch.stack([(sy + sin) * W / H, cos, sy * W / H - 2 * ty / H], -1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply_aa_ops(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """x: float (B, 3, H, W) in [0, 1] on the 8-bit grid; op: (B,) index into AA_OPS;
    magnitude: (B,) torchvision's signed magnitude (aa_magnitude). -> (B, 3, H, W), rounded
    to the 8-bit grid as PIL keeps an image between ops.

    Like apply_ops, every op is computed for the whole batch and each image keeps its own.
    Brightness, Color, Contrast, Posterize and AutoContrast are apply_ops' own ops at the
    magnitude that gives torchvision's (its factor 1 + 0.9 * m' with m' = m / 0.9; its
    posterize drops round(4 m') bits with m' = (8 - bits) / 4); Invert, Solarize (invert
    values >= the threshold, as PIL), Equalize, Sharpness and the geometric ops (nearest, as
    torchvision's default) are here. Left from PIL (the notebook's path): contrast / colour
    use the float grey level where PIL rounds it, a blend can land one level from PIL's
    float32 one, and a pixel centre mapped exactly onto a pixel boundary can take the other
    neighbour (tests/test_augment.py compares every policy op with Pillow).
    """
    B = x.shape[0]
    m = magnitude.to(x.dtype)
    is_op = {name: op == i for i, name in enumerate(AA_OPS)}
    shared_op = torch.zeros_like(op)                                  # AUG_OPS' identity
    for name, ta_name in _AA_SHARED.items():
        shared_op = torch.where(is_op[name], AUG_OPS.index(ta_name), shared_op)
    enhance = is_op["Brightness"] | is_op["Color"] | is_op["Contrast"]
    shared_m = torch.where(enhance, m / 0.9, torch.where(is_op["Posterize"], (8 - m) / 4, 0.0))
    out = apply_ops(x, shared_op, shared_m)
    mask = {name: v.view(B, 1, 1, 1) for name, v in is_op.items()}
    out = torch.where(mask["Invert"], 1 - x, out)
    solarized = torch.where((x * 255).round() >= m.view(B, 1, 1, 1), 1 - x, x)
    out = torch.where(mask["Solarize"], solarized, out)
    out = torch.where(mask["Equalize"], equalize(x), out)
    out = torch.where(mask["Sharpness"], _sharpness(x, 1 + m), out)
    geometric = op <= AA_OPS.index("Rotate")                          # AA_OPS[:5] move pixels
    out = torch.where(geometric.view(B, 1, 1, 1), _aa_warp(x, op, m), out)
    # back to 8 bits as PIL: its blends (the enhance ops) and autocontrast truncate (+1e-3:
    # float error must not drop a whole level), everything else is on the grid already
    truncated = enhance | is_op["Sharpness"] | is_op["AutoContrast"]
    out = out * 255
    return torch.where(truncated.view(B, 1, 1, 1), (out + 1e-3).floor(), out.round()) / 255


def auto_augment(x: torch.Tensor, generator: torch.Generator,
                 policy: tuple = AA_CIFAR10) -> torch.Tensor:
    """AutoAugment, per image, drawn on x's device: one of the policy's sub-policies
    uniformly (AA_CIFAR10: 25), then each of its two ops in turn with its probability
    (applied when a uniform draw is <= p, as torchvision), a signed op's magnitude negated
    with probability 1/2. x: float (B, 3, H, W) in [0, 1] on the 8-bit grid (uint8 / 255)."""
    B, _, H, W = x.shape
    ops, probs, mags, signed = _aa_tables(policy, x.device, H, W)
    sub = torch.randint(len(policy), (B,), generator=generator, device=x.device)
    u = torch.rand(2, 2, B, generator=generator, device=x.device)   # (op slot, apply / sign, B)
    for i in range(2):
        m = mags[sub, i]
        m = torch.where(signed[sub, i] & (u[i, 1] < 0.5), -m, m)
        applied = (u[i, 0] <= probs[sub, i]).view(B, 1, 1, 1)
        x = torch.where(applied, apply_aa_ops(x, ops[sub, i], m), x)
    return x
