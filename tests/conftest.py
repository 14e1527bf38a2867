"""Shared fixtures and helpers for every test module (no test module imports another).

Small synthetic CIFAR-10 data, in memory or written in the official format; a tiny ViT
(`tiny_vit`) and a small training Config (`small_cfg`); `read_log` for a run's log.jsonl;
`crop_flip_oracle`, the loop oracle for data.random_crop_flip; and `no_data_no_training`,
which makes any attempt to load data or train fail. Nothing here touches the network.

The "easy" task gives each class its own colour
and a bright stripe at a class-specific place, plus noise, so a tiny ViT learns it
in a few CPU seconds; the "random" task is noise with random labels (shapes only).
"""
from __future__ import annotations

import os
import pickle
import sys

# The CPU may be shared (CI runners, other jobs): with busy-waiting OpenMP threads two
# processes on two cores slow each other down tenfold or more. Passive waiting costs
# little when the machine is idle. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))

import data as data_lib  # noqa: E402
import train as train_lib  # noqa: E402
import irkd  # noqa: E402
import teacher as teacher_lib  # noqa: E402

CIFAR_DIR = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]

# Ten well separated colours (RGB, 0..255).
PALETTE = np.array([
    [230, 25, 25], [25, 230, 25], [25, 25, 230], [230, 230, 25], [230, 25, 230],
    [25, 230, 230], [240, 240, 240], [20, 20, 20], [240, 140, 20], [120, 60, 200],
], dtype=np.float32)


def make_images(n: int, kind: str = "easy", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic images -> (uint8 (n, 3, 32, 32), int64 labels (n,)), labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    if kind == "random":
        return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), labels
    if kind != "easy":
        raise ValueError(kind)
    img = np.broadcast_to(PALETTE[labels][:, :, None, None], (n, 3, 32, 32)).copy()
    img *= 0.7                                    # leave room for the stripe
    for c in range(10):                           # a bright horizontal stripe, per-class row band
        rows = slice(3 * c + 1, 3 * c + 4)
        img[labels == c, :, rows, :] = 255.0
    img += rng.normal(0.0, 20.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def make_data(n_train: int, n_test: int, kind: str = "easy",
              seed: int = 0) -> dict[str, torch.Tensor]:
    """The dict load_cifar10() returns, synthetic: train_x, train_y, test_x, test_y."""
    tx, ty = make_images(n_train, kind, seed)
    sx, sy = make_images(n_test, kind, seed + 1)
    return dict(train_x=torch.from_numpy(tx), train_y=torch.from_numpy(ty),
                test_x=torch.from_numpy(sx), test_y=torch.from_numpy(sy))


def write_batch(path: str, images: np.ndarray, labels) -> None:
    """One CIFAR python batch: {"data": uint8 (N, 3072) in CHW row order, "labels": [int]}."""
    d = {"batch_label": os.path.basename(path),
         "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072),
         "labels": [int(v) for v in labels],
         "filenames": [f"img_{i}.png" for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar(root, n_per_batch: int = 40, n_test: int = 40, kind: str = "easy",
                seed: int = 0) -> dict:
    """Write cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} under root.

    Returns the arrays written: {"train_x", "train_y", "test_x", "test_y"} (numpy, train
    in file order data_batch_1..5).
    """
    folder = os.path.join(str(root), CIFAR_DIR)
    os.makedirs(folder, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = make_images(n_per_batch, kind, seed + i)
        write_batch(os.path.join(folder, f"data_batch_{i}"), x, y)
        xs.append(x)
        ys.append(y)
    tx, ty = make_images(n_test, kind, seed + 100)
    write_batch(os.path.join(folder, "test_batch"), tx, ty)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": n_per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return dict(train_x=np.concatenate(xs), train_y=np.concatenate(ys), test_x=tx, test_y=ty)


@pytest.fixture
def cifar_root(tmp_path):
    """A tmp dir holding a small synthetic CIFAR-10 (40 images per batch); yields (root, arrays)."""
    arrays = write_cifar(tmp_path / "data")
    return str(tmp_path / "data"), arrays


@pytest.fixture(scope="session")
def train_data():
    """In-memory data for train(): split_train_val always holds out 5,000 images for
    validation, so 5,000 + 512 training images leave 512 for training; easy task."""
    return make_data(5000 + 512, 200, kind="easy", seed=0)


@pytest.fixture
def no_data_no_training(monkeypatch):
    """A CLI test that got past argument checking must not download or train."""
    def refuse(*a, **kw):
        raise AssertionError("this test should have stopped before loading data or training")
    monkeypatch.setattr(data_lib, "download_cifar10", refuse)
    monkeypatch.setattr(data_lib, "load_cifar10", refuse)
    monkeypatch.setattr(train_lib, "train", refuse)
    monkeypatch.setattr(teacher_lib, "estimate_seconds", refuse)


# ----------------------------------------------------------------------------- models, configs

def tiny_vit(patch_size=4, distill_token=False, **kw):
    """A 2-block, 32-dim ViT: fast enough to build in every test."""
    return irkd.ViT(dim=32, depth=2, heads=2, mlp_dim=64, patch_size=patch_size,
                    distill_token=distill_token, **kw)


def small_cfg(tmp_path, **kw):
    """A two-stage curriculum (8 then 16 px), 2 epochs, 64 training images: 2 steps/epoch."""
    base = dict(name="t", model="custom", cl=True, resolutions=(8, 16), epochs=2, batch_size=32,
                train_size=64, val_size=32, test_size=64, out=str(tmp_path), device="cpu", seed=0)
    return train_lib.RunConfig(**(base | kw))


def read_log(run_dir):
    """The rows of a run's log.jsonl, one dict per epoch."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def crop_flip_oracle(x, offsets, flips, size):
    """data.random_crop_flip one image at a time: pad 4 zeros, crop at offsets, maybe flip."""
    out = []
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(len(x)):
        r, c = offsets[b].tolist()
        img = padded[b, :, r:r + size, c:c + size]
        out.append(img.flip(-1) if flips[b] else img)
    return torch.stack(out)
