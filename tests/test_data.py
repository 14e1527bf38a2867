"""data.py, loading and views: the CIFAR-10 python-format loader, the fixed train/val split,
clear DataErrors, the download path (on a local file:// archive, never the network), and the
per-batch pipeline (random_crop_flip, resize, normalize, EpochSampler, make_views). The teacher
recipe's augmentation section of data.py is documented in test_augment.py.

Oracles: batches written by the test in the official format (conftest.write_cifar) and read
back byte for byte, with one channel-major row built by hand; indices recovered through a
tagged tensor for the split; hostile tar members that must not be extracted; the loop oracle
conftest.crop_flip_oracle (pad, crop, flip one image at a time); constants and a one-pixel
checkerboard for the antialiased resize; MEAN / STD by hand for normalize.
"""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import data as data_lib
from conftest import CIFAR_DIR, crop_flip_oracle, write_cifar


# ----------------------------------------------------------------------------- loader

def test_load_cifar10_shapes_and_values(cifar_root):
    root, arrays = cifar_root
    d = data_lib.load_cifar10(root, download=False)
    assert set(d) == {"train_x", "train_y", "test_x", "test_y"}
    assert d["train_x"].shape == (200, 3, 32, 32) and d["train_x"].dtype == torch.uint8
    assert d["test_x"].shape == (40, 3, 32, 32) and d["test_x"].dtype == torch.uint8
    assert d["train_y"].shape == (200,) and d["train_y"].dtype == torch.int64
    assert torch.equal(d["train_x"], torch.from_numpy(arrays["train_x"]))    # batches 1..5 in order
    assert torch.equal(d["train_y"], torch.from_numpy(arrays["train_y"]))
    assert torch.equal(d["test_x"], torch.from_numpy(arrays["test_x"]))
    assert torch.equal(d["test_y"], torch.from_numpy(arrays["test_y"]))


def test_rows_are_channel_major(tmp_path):
    # The official layout: 1024 red values (row-major 32 x 32), then green, then blue.
    write_cifar(tmp_path, n_per_batch=2, n_test=2)
    row = np.zeros(3072, dtype=np.uint8)
    row[:1024], row[1024:2048], row[2048:] = 10, 20, 30
    row[1] = 200            # red, row 0, column 1
    row[1024 + 32] = 201    # green, row 1, column 0
    with open(tmp_path / CIFAR_DIR / "test_batch", "wb") as f:
        pickle.dump({"data": np.stack([row, row]), "labels": [3, 4]}, f)
    d = data_lib.load_cifar10(str(tmp_path), download=False)
    img = d["test_x"][0]
    assert img[0, 0, 1] == 200 and img[1, 1, 0] == 201
    assert img[0, 5, 5] == 10 and img[1, 5, 5] == 20 and img[2, 5, 5] == 30
    assert d["test_y"].tolist() == [3, 4]


def test_split_train_val_deterministic(cifar_root):
    root, _ = cifar_root
    d = data_lib.load_cifar10(root, download=False)
    x, y = d["train_x"], d["train_y"]
    tx, ty, vx, vy = data_lib.split_train_val(x, y, val_size=20, seed=42)
    assert tx.shape == (180, 3, 32, 32) and vx.shape == (20, 3, 32, 32)
    tx2, ty2, vx2, vy2 = data_lib.split_train_val(x, y, val_size=20, seed=42)
    assert torch.equal(tx, tx2) and torch.equal(vx, vx2)
    assert torch.equal(ty, ty2) and torch.equal(vy, vy2)
    # recover indices through a tagged tensor: disjoint, complete, seed-dependent
    idx = torch.arange(200)
    ti, _, vi, _ = data_lib.split_train_val(idx, idx, val_size=20, seed=42)
    assert set(ti.tolist()).isdisjoint(vi.tolist())
    assert sorted(ti.tolist() + vi.tolist()) == list(range(200))
    assert torch.equal(torch.cat([tx, vx]), x[torch.cat([ti, vi])])
    ti3, _, vi3, _ = data_lib.split_train_val(idx, idx, val_size=20, seed=43)
    assert set(vi3.tolist()) != set(vi.tolist())
    assert vi.tolist() != list(range(20))               # shuffled, not the first 20


def test_missing_data_raises_with_directory(tmp_path):
    root = str(tmp_path / "nowhere")
    with pytest.raises(data_lib.DataError) as e:
        data_lib.load_cifar10(root, download=False)
    assert os.path.join(root, CIFAR_DIR) in str(e.value)
    assert not os.path.exists(root)                     # download=False writes nothing


def test_partial_data_names_missing_files(cifar_root):
    root, _ = cifar_root
    os.remove(os.path.join(root, CIFAR_DIR, "data_batch_4"))
    with pytest.raises(data_lib.DataError, match="data_batch_4"):
        data_lib.load_cifar10(root, download=False)


def test_truncated_batch_raises(cifar_root):
    root, _ = cifar_root
    path = os.path.join(root, CIFAR_DIR, "data_batch_3")
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(data_lib.DataError) as e:
        data_lib.load_cifar10(root, download=False)
    assert "data_batch_3" in str(e.value)


@pytest.mark.parametrize("bad", [
    {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]},          # count mismatch
    {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},         # label out of range
    {"data": np.zeros((2, 1000), np.uint8), "labels": [0, 1]},          # wrong row size
    {"pixels": np.zeros((2, 3072), np.uint8), "labels": [0, 1]},        # wrong key
])
def test_malformed_batch_raises(cifar_root, bad):
    root, _ = cifar_root
    with open(os.path.join(root, CIFAR_DIR, "test_batch"), "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(data_lib.DataError, match="test_batch"):
        data_lib.load_cifar10(root, download=False)


def test_empty_batch_raises_data_error(cifar_root):
    root, _ = cifar_root
    with open(os.path.join(root, CIFAR_DIR, "test_batch"), "wb") as f:
        pickle.dump({"data": np.zeros((0, 3072), np.uint8), "labels": []}, f)
    with pytest.raises(data_lib.DataError, match="test_batch"):
        data_lib.load_cifar10(root, download=False)


# ----------------------------------------------------------------------------- download

def make_archive(tmp_path, extra_evil=True):
    """A tar.gz shaped like the official one (plus hostile members); returns (url, md5).
    The hostile members: a path escaping upwards, an absolute path (inside tmp_path),
    an unexpected file in the dataset folder, and a symlink under an expected name."""
    src = tmp_path / "src"
    write_cifar(src, n_per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(os.listdir(src / CIFAR_DIR)):
            tar.add(src / CIFAR_DIR / name, arcname=f"{CIFAR_DIR}/{name}")
        if extra_evil:
            for name in ("../evil.txt", f"{CIFAR_DIR}/extra.bin", str(tmp_path / "evil-abs.txt")):
                blob = b"evil"
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            link = tarfile.TarInfo(f"{CIFAR_DIR}/readme.html")   # an expected name, but a symlink
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return path.as_uri(), data_lib.md5sum(str(path))


def leftovers(root):
    """Temporary download folders left in root (none at all when root itself was removed)."""
    if not os.path.exists(root):
        return []
    return [n for n in os.listdir(root) if n.startswith(".cifar-download-")]


def test_download_wrong_md5(tmp_path, capsys):
    url, _ = make_archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(data_lib.DataError, match="md5"):
        data_lib.download_cifar10(str(root), url=url, md5="0" * 32)
    assert not (root / CIFAR_DIR).exists()
    assert leftovers(root) == []


def test_download_extracts_only_expected_members(tmp_path, capsys):
    url, md5 = make_archive(tmp_path)
    root = tmp_path / "deep" / "data"
    root.mkdir(parents=True)
    (root / CIFAR_DIR).mkdir()
    (root / CIFAR_DIR / "stale_partial").write_text("old")      # an earlier partial copy
    data_lib.download_cifar10(str(root), url=url, md5=md5)
    got = sorted(os.listdir(root / CIFAR_DIR))
    assert got == sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    assert not (root / CIFAR_DIR / "readme.html").is_symlink()
    assert not (root / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not (tmp_path / "evil-abs.txt").exists()
    assert leftovers(root) == []
    assert sorted(os.listdir(root)) == [CIFAR_DIR]
    d = data_lib.load_cifar10(str(root), download=False)
    assert d["train_x"].shape == (20, 3, 32, 32) and d["test_x"].shape == (4, 3, 32, 32)


def test_download_unreachable_url(tmp_path, capsys):
    root = tmp_path / "data"
    with pytest.raises(data_lib.DataError) as e:
        data_lib.download_cifar10(str(root), url=(tmp_path / "missing.tar.gz").as_uri(),
                                  md5="0" * 32)
    assert os.path.join(str(root), CIFAR_DIR) in str(e.value)  # says where to put the files
    assert leftovers(root) == []


def test_corrupt_archive_with_right_md5(tmp_path, capsys):
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(b"this is not a gzip file")
    root = tmp_path / "data"
    with pytest.raises(data_lib.DataError, match="unpacked"):
        data_lib.download_cifar10(str(root), url=path.as_uri(), md5=data_lib.md5sum(str(path)))
    assert leftovers(root) == []


def test_load_cifar10_downloads_when_missing(tmp_path, monkeypatch, capsys):
    url, md5 = make_archive(tmp_path, extra_evil=False)
    real = data_lib.download_cifar10
    calls = []

    def fake_download(root, url_=None, md5_=None):
        calls.append(root)
        real(root, url=url, md5=md5)

    monkeypatch.setattr(data_lib, "download_cifar10", fake_download)
    root = str(tmp_path / "fresh")
    d = data_lib.load_cifar10(root)
    assert calls == [root]
    assert d["train_x"].shape == (20, 3, 32, 32)
    data_lib.load_cifar10(root)
    assert calls == [root]                               # present now: no second download


# ----------------------------------------------------------------------------- views

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_flip_fixed_offsets(dtype):
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 32, 32) * 200 + 20).to(dtype)
    center = torch.tensor([[4, 4], [4, 4]])
    no = torch.tensor([False, False])
    yes = torch.tensor([True, True])
    assert torch.equal(data_lib.random_crop_flip(x, center, no), x)
    assert torch.equal(data_lib.random_crop_flip(x, center, yes), x.flip(-1))
    corner = data_lib.random_crop_flip(x, torch.zeros(2, 2, dtype=torch.long), no)
    assert (corner[:, :, :4, :] == 0).all() and (corner[:, :, :, :4] == 0).all()
    assert torch.equal(corner[:, :, 4:, 4:], x[:, :, :28, :28])
    far = data_lib.random_crop_flip(x, torch.full((2, 2), 8), no)
    assert (far[:, :, 28:, :] == 0).all() and torch.equal(far[:, :, :28, :28], x[:, :, 4:, 4:])


def test_random_crop_flip_matches_loop_oracle():
    torch.manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    for size in (32, 16, 12):
        offsets = torch.randint(0, 40 - size + 1, (6, 2))
        flips = torch.tensor([True, False, True, True, False, False])
        got = data_lib.random_crop_flip(x, offsets, flips, size=size)
        assert got.shape == (6, 3, size, size)
        assert torch.equal(got, crop_flip_oracle(x, offsets, flips, size))


def test_resize():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    assert data_lib.resize(x, 32) is x
    for res in (12, 16, 20, 24, 28):
        y = data_lib.resize(x, res)
        assert y.shape == (2, 3, res, res) and y.dtype == torch.float32
    const = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(data_lib.resize(const, 12), torch.full((1, 3, 12, 12), 0.7),
                               atol=1e-6, rtol=0)
    # antialiased: a one-pixel checkerboard averages out instead of aliasing
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2
    checker = checker.float().expand(1, 3, 32, 32)
    small = data_lib.resize(checker, 16)
    assert (small - 0.5).abs().max() < 0.15


def test_normalize():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[:, :, 1, 1] = 255
    n = data_lib.normalize(x)
    for c in range(3):
        assert abs(n[0, c, 0, 0].item() - (-data_lib.MEAN[c] / data_lib.STD[c])) < 1e-5
        assert abs(n[0, c, 1, 1].item() - (1 - data_lib.MEAN[c]) / data_lib.STD[c]) < 1e-5


def views_batch():
    """4 uint8 images, crop offsets in 0..8 and flips, from seed 0."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.randint(0, 9, (4, 2))
    flips = torch.tensor([True, False, False, True])
    return x, offsets, flips


def test_make_views_resize():
    x, offsets, flips = views_batch()
    full = data_lib.normalize(crop_flip_oracle(x, offsets, flips, 32))
    for res in (12, 16, 32):
        xs, xt = data_lib.make_views(x, offsets, flips, res, "resize", full_view=True)
        assert xs.shape == (4, 3, res, res) and xt.shape == (4, 3, 32, 32)
        torch.testing.assert_close(xt, full, atol=1e-6, rtol=0)
        torch.testing.assert_close(data_lib.resize(xt, res), xs, atol=1e-6, rtol=0)
        xs2, none = data_lib.make_views(x, offsets, flips, res, "resize", full_view=False)
        assert none is None and torch.equal(xs, xs2)


def test_make_views_crop_and_bad_modes():
    x, offsets, flips = views_batch()
    xs, none = data_lib.make_views(x, offsets.clamp(max=40 - 16), flips, 16, "crop",
                                   full_view=False)
    assert none is None and xs.shape == (4, 3, 16, 16)
    want = crop_flip_oracle(x, offsets.clamp(max=24), flips, 16)
    torch.testing.assert_close(xs, data_lib.normalize(want))
    with pytest.raises(ValueError, match="resize"):
        data_lib.make_views(x, offsets, flips, 16, "crop", full_view=True)
    with pytest.raises(ValueError, match="resize_mode"):
        data_lib.make_views(x, offsets, flips, 16, "stretch", full_view=False)


def test_epoch_sampler():
    s1 = data_lib.EpochSampler(100, 32, seed=3, device=torch.device("cpu"))
    s2 = data_lib.EpochSampler(100, 32, seed=3, device=torch.device("cpu"))
    assert s1.steps_per_epoch() == 3
    e1, e2 = list(s1.epoch()), list(s2.epoch())
    assert len(e1) == 3
    idx = torch.cat([b[0] for b in e1])
    assert len(set(idx.tolist())) == 96                 # no repeats; the ragged 4 dropped
    for (i1, o1, f1), (i2, o2, f2) in zip(e1, e2):
        assert torch.equal(i1, i2) and torch.equal(o1, o2) and torch.equal(f1, f2)
        assert o1.min() >= 0 and o1.max() <= 8 and f1.dtype == torch.bool
    second = list(s1.epoch())
    assert not torch.equal(second[0][0], e1[0][0])      # a new order every epoch
    crop = list(s1.epoch(crop=12))
    assert max(b[1].max().item() for b in crop) <= 28



# Oracle: augment=False is the centre crop of the padded image (the image itself at 32 px)
# with no flip, and the image order is the augmented sampler's (same generator draws).
def test_sampler_without_augmentation_is_the_centre_crop():
    plain = data_lib.EpochSampler(20, 4, seed=1, device=torch.device("cpu"))
    augmented = data_lib.EpochSampler(20, 4, seed=1, device=torch.device("cpu"))
    for (i, off, fl), (j, _, _) in zip(plain.epoch(crop=32, augment=False), augmented.epoch()):
        assert torch.equal(i, j) and (off == 4).all() and not fl.any()
    (_, off, _), *_ = list(data_lib.EpochSampler(8, 8, 0, torch.device("cpu")).epoch(
        crop=12, augment=False))
    assert (off == 14).all()                   # (40 - 12) / 2


def test_a_partial_copy_names_the_missing_file_and_downloads_nothing(cifar_root, monkeypatch):
    root, _ = cifar_root
    os.remove(os.path.join(root, CIFAR_DIR, "test_batch"))
    monkeypatch.setattr(data_lib, "download_cifar10", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(data_lib.DataError, match="partial: no test_batch"):
        data_lib.load_cifar10(root)


def test_data_pointing_at_the_batches_folder_itself_is_understood(cifar_root):
    root, arrays = cifar_root
    got = data_lib.load_cifar10(os.path.join(root, CIFAR_DIR))
    assert torch.equal(got["test_x"], torch.from_numpy(arrays["test_x"]))


def test_a_mistyped_data_directory_is_not_left_behind(tmp_path):
    typo = tmp_path / "dta"
    with pytest.raises(data_lib.DataError, match="could not download"):
        data_lib.download_cifar10(str(typo), url=(tmp_path / "nowhere.tar.gz").as_uri())
    assert not typo.exists()


# Oracle: torch's random_split itself, as the notebooks called it.
def test_notebooks_split_is_random_split():
    from torch.utils.data import random_split
    idx = torch.arange(50000)
    train, val = random_split(range(50000), [45000, 5000],
                              generator=torch.Generator().manual_seed(42))
    ti, _, vi, _ = data_lib.split_train_val(idx, idx, split="notebooks")
    assert ti.tolist() == list(train.indices) and vi.tolist() == list(val.indices)
    # this project's split validates on the first 5,000 of the same permutation
    _, _, pv, _ = data_lib.split_train_val(idx, idx)
    assert pv.tolist() == list(train.indices[:5000])
    with pytest.raises(ValueError, match="split"):
        data_lib.split_train_val(idx, idx, split="last")
