"""data.py, the teacher recipe's augmentation section: apply_ops / trivial_augment
(TrivialAugment), random_erase, make_views with aug_gen, and recipe_extras. (The Config checks
on the recipe are in test_training.py, teacher_config in test_teacher.py, and the bit-identical
resume of a recipe run in test_runs.py.)

Oracles, one per test as the comment above it says: magnitude 0 is the identity; hand-written
per-image formulas for the value ops (brightness, solarize, posterize); whole-pixel shifts and
a rotated constant image for the geometric ops; each image alone through apply_ops for the
batched call; the same generator seed for trivial_augment; conftest.crop_flip_oracle then
trivial_augment then normalize for make_views(aug_gen); a full axis-aligned rectangle per
image for random_erase; one generator drawn in order for recipe_extras.

AutoAugment (auto_augment, apply_aa_ops, equalize): the policy table and magnitude bins
copied here from torchvision's source (the test is the oracle); a loop written from PIL's
equalize; hand formulas for invert / solarize / posterize at a bin and for whole-pixel
translations and top-left shears; Pillow itself, called as torchvision's PIL path calls it,
for every (op, bin, sign) of the policy; counts over many images for the probabilities and
signs; per-image sums of trivial_augment pinned from data.py before AutoAugment was added.
"""
import numpy as np
import pytest
import torch

import data as data_lib
import train as train_lib
from conftest import crop_flip_oracle, small_cfg, tiny_vit

OPS = {name: i for i, name in enumerate(data_lib.AUG_OPS)}


def quantized(*shape, seed=0):
    """Float images on the 8-bit grid k/255, as the pipeline feeds them (uint8 crop / 255)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255


def one(x, name, m):
    """apply_ops with the same op and magnitude for every image of x."""
    B = len(x)
    return data_lib.apply_ops(x, torch.full((B,), OPS[name]), torch.full((B,), float(m)))


# Oracle: magnitude 0 leaves the image unchanged (every op but autocontrast, which has no
# strength); autocontrast stretches each image-channel to exactly [0, 1].
def test_magnitude_zero_is_identity_and_autocontrast_stretches():
    x = quantized(3, 3, 8, 10)
    for name in data_lib.AUG_OPS:
        if name != "autocontrast":
            torch.testing.assert_close(one(x, name, 0.0), x, atol=1e-6, rtol=0, msg=name)
    x = 0.2 + 0.5 * torch.rand(3, 3, 8, 10)
    y = one(x, "autocontrast", 0.7)
    torch.testing.assert_close(y.amin((2, 3)), torch.zeros(3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.amax((2, 3)), torch.ones(3, 3), atol=1e-6, rtol=0)
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    torch.testing.assert_close(y, (x - lo) / (hi - lo), atol=1e-5, rtol=0)


# Oracles: hand-written per-image formulas for the value ops at a chosen magnitude.
def test_value_op_oracles():
    x = quantized(2, 3, 8, 8)
    for m in (0.5, -0.5):
        torch.testing.assert_close(one(x, "brightness", m), (x * (1 + 0.9 * m)).clamp(0, 1),
                                   atol=1e-6, rtol=0)
        # solarize: pixels above 1 - |m| = 0.5 are inverted, the rest untouched
        torch.testing.assert_close(one(x, "solarize", m), torch.where(x > 0.5, 1 - x, x),
                                   atol=1e-6, rtol=0)
    assert (one(x, "brightness", 1.0) == 1).any()                     # x * 1.9 clips at 1
    for m in (1.0, -1.0):                                # |m| = 1: drop 4 bits, 16 levels
        y = one(x, "posterize", m)
        levels = y * 255 / 16
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
        assert len(torch.unique(levels.round())) <= 16
        assert (y <= x + 1e-6).all() and (x - y < 16 / 255).all()
        torch.testing.assert_close(y, torch.floor(x * 255 / 16 + 1e-4) * 16 / 255,
                                   atol=1e-6, rtol=0)


# Oracles: translate_x by a whole pixel = the image rolled one column with a zero column;
# rotating a constant image keeps the centre pixel and empties the corners.
def test_geometric_op_oracles():
    x = quantized(2, 3, 6, 10)            # normalised width 2 = 10 px: 0.6 / 3 = 0.2 = 1 px
    shifted_left = torch.cat([x[..., 1:], torch.zeros(2, 3, 6, 1)], -1)
    shifted_right = torch.cat([torch.zeros(2, 3, 6, 1), x[..., :-1]], -1)
    torch.testing.assert_close(one(x, "translate_x", 1 / 3), shifted_left, atol=1e-5, rtol=0)
    torch.testing.assert_close(one(x, "translate_x", -1 / 3), shifted_right, atol=1e-5, rtol=0)
    xt = quantized(2, 3, 10, 6)                                       # height 10: 1 px down
    up = torch.cat([xt[..., 1:, :], torch.zeros(2, 3, 1, 6)], -2)
    torch.testing.assert_close(one(xt, "translate_y", 1 / 3), up, atol=1e-5, rtol=0)
    const = torch.full((1, 3, 9, 9), 0.6)
    y = one(const, "rotate", 1.0)                                   # 30 degrees
    torch.testing.assert_close(y[0, :, 4, 4], torch.full((3,), 0.6), atol=1e-6, rtol=0)
    assert (y[0, :, [0, 0, 8, 8], [0, 8, 0, 8]] == 0).all()         # the corners rotate out of view
    assert not torch.allclose(one(const, "shear_x", 1.0), const)


# Oracle: the batched call equals apply_ops on each image alone (each image gets its own op);
# values stay in [0, 1] and the shape is kept.
def test_each_image_gets_its_own_op():
    n = len(data_lib.AUG_OPS)
    x = quantized(n, 3, 8, 8, seed=1)
    op = torch.arange(n)
    mag = torch.tensor([(0.4 + 0.04 * i) * (-1) ** i for i in range(n)])   # no zero, both signs
    y = data_lib.apply_ops(x, op, mag)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    for b in range(n):
        alone = data_lib.apply_ops(x[b:b + 1], op[b:b + 1], mag[b:b + 1])
        torch.testing.assert_close(y[b:b + 1], alone, atol=1e-6, rtol=0)
    for b, name in enumerate(data_lib.AUG_OPS[1:], 1):       # every op but identity acts here
        assert name == "autocontrast" or not torch.allclose(y[b], x[b], atol=1e-3), name


# Oracle: same generator seed -> same output; another seed -> another output.
def test_trivial_augment_seeded():
    x = quantized(8, 3, 8, 8)
    run = lambda seed: data_lib.trivial_augment(  # noqa: E731
        x, torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


# Oracle: make_views with aug_gen = the crop/flip oracle, trivial_augment with the same seed,
# normalize; normalize of a float in [0, 1] equals normalize of the uint8 image.
def test_make_views_with_aug_gen_and_float_normalize():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(data_lib.normalize(x.float() / 255), data_lib.normalize(x),
                               atol=1e-6, rtol=0)
    offsets, flips = torch.randint(0, 9, (4, 2)), torch.tensor([True, False, True, False])
    xs, xt = data_lib.make_views(x, offsets, flips, 16, "resize", full_view=True,
                                 aug_gen=torch.Generator().manual_seed(5))
    crop = crop_flip_oracle(x, offsets, flips, 32).float() / 255
    want = data_lib.normalize(data_lib.trivial_augment(crop, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(xt, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(xs, data_lib.resize(want, 16), atol=1e-6, rtol=0)
    assert not torch.allclose(xt, data_lib.normalize(crop), atol=1e-3)


# Oracle: p=0 is the identity; p=1 zeroes exactly one full axis-aligned rectangle per image
# (same in every channel) of 1 .. 0.33*H*W (+ rounding slack) pixels and nothing else.
def test_random_erase():
    H, W = 16, 20
    x = torch.rand(6, 3, H, W) + 1                                    # no zeros to begin with
    assert torch.equal(data_lib.random_erase(x, torch.Generator().manual_seed(0), 0.0), x)
    for seed in range(5):
        y = data_lib.random_erase(x, torch.Generator().manual_seed(seed), 1.0)
        zero = y == 0
        assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same rectangle, all channels
        assert torch.equal(y[~zero], x[~zero])
        for b in range(len(x)):
            rows, cols = zero[b, 0].nonzero(as_tuple=True)
            area = len(rows)
            assert 1 <= area <= 0.33 * H * W + 0.5 * (H + W) + 1
            box = zero[b, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all() and box.numel() == area                   # a full rectangle


# Oracle: torchvision's area draw, uniform in [0.02, max_area] of the image (P_2_KD_ONLY:
# scale=(0.02, 0.2)); the default 0.33 draws exactly what the fixed 0.02 + 0.31 u drew.
def test_random_erase_area_bound():
    H = W = 32
    x = torch.rand(400, 3, H, W) + 1
    small = data_lib.random_erase(x, torch.Generator().manual_seed(0), 1.0, max_area=0.2)
    areas = (small[:, 0] == 0).flatten(1).sum(1).float() / (H * W)
    assert areas.max() <= 0.2 + (H + W) / (H * W) and areas.min() > 0
    assert areas.max() > 0.15                    # the whole range is used
    default = data_lib.random_erase(x, torch.Generator().manual_seed(0), 1.0)
    assert ((default[:, 0] == 0).flatten(1).sum(1).float() / (H * W)).max() > 0.25
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 400, generator=g)
    assert torch.equal(0.02 + 0.31 * u[0], 0.02 + (0.33 - 0.02) * u[0])


# Oracle: the loop feeds the student make_views(aug_gen) then random_erase, drawn from one
# generator in that order (recipe_extras); with erasing=0 and no mixing, the view unchanged.
def test_recipe_extras_erases_after_the_views_from_one_generator():
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4)
    offsets, flips = torch.randint(0, 9, (4, 2)), torch.tensor([True, False, True, False])
    g = torch.Generator().manual_seed(3)
    xs, _ = data_lib.make_views(x, offsets, flips, 32, "resize", False, aug_gen=g)
    got, target = data_lib.recipe_extras(xs, y, aug_gen=g, erasing=0.5)
    g = torch.Generator().manual_seed(3)
    view = data_lib.make_views(x, offsets, flips, 32, "resize", False, aug_gen=g)[0]
    want = data_lib.random_erase(view, g, 0.5)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.equal(target, y)
    plain = data_lib.make_views(x, offsets, flips, 32, "resize", False)[0]
    same, _ = data_lib.recipe_extras(plain, y, aug_gen=g, erasing=0.0)
    assert same is plain



# ----------------------------------------------------------------------------- AutoAugment

# Oracle: torchvision's AutoAugment._get_policies(AutoAugmentPolicy.CIFAR10), copied from
# pytorch/vision torchvision/transforms/autoaugment.py (and transforms/v2/_auto_augment.py).
TORCHVISION_CIFAR10 = [
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
]


def aa(x, name, m):
    """apply_aa_ops with the same op and (signed, torchvision) magnitude for every image."""
    B = len(x)
    return data_lib.apply_aa_ops(x, torch.full((B,), data_lib.AA_OPS.index(name)),
                                 torch.full((B,), float(m), dtype=x.dtype))


# Oracle: the table above; torchvision's bins by hand: shear 0.3 b/9, translate
# int(150/331 * 32 * b/9) px, rotate 30 b/9 degrees, enhance 0.9 b/9, posterize
# 8 - round(b / 2.25) bits, solarize threshold 255 (1 - b/9); signed exactly the first eight.
def test_policy_table_and_bins_are_torchvisions():
    assert [tuple(sub) for sub in data_lib.AA_CIFAR10] == TORCHVISION_CIFAR10
    mag = lambda name, b: data_lib.aa_magnitude(name, b, 32, 32)  # noqa: E731
    for b in range(10):
        assert mag("ShearY", b)[0] == pytest.approx(0.3 * b / 9, abs=1e-6)
        assert mag("TranslateX", b)[0] == int(150 / 331 * 32 * b / 9)
        assert mag("Rotate", b)[0] == pytest.approx(30 * b / 9, abs=1e-5)
        assert mag("Brightness", b)[0] == pytest.approx(0.1 * b, abs=1e-6)
        assert mag("Solarize", b)[0] == pytest.approx(255 * (1 - b / 9), abs=1e-4)
    assert [mag("TranslateY", b)[0] for b in (3, 8, 9)] == [4, 12, 14]
    assert data_lib.aa_magnitude("TranslateX", 9, 32, 20)[0] == int(150 / 331 * 20)  # width
    assert [mag("Posterize", b)[0] for b in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    signed = {name: mag(name, 1)[1] for name in data_lib.AA_OPS if name not in
              ("AutoContrast", "Equalize", "Invert")}
    assert [n for n, s in signed.items() if s] == list(data_lib.AA_OPS[:9])
    assert data_lib.aa_magnitude("Equalize", None, 32, 32) == (0.0, False)


def pil_equalize_loop(img):
    """PIL's ImageOps.equalize, one channel of uint8 values at a time, as written in PIL."""
    out = img.clone()
    for c in range(img.shape[0]):
        h = torch.bincount(img[c].flatten().long(), minlength=256).tolist()
        histo = [n for n in h if n]
        if len(histo) <= 1:
            continue
        step = (sum(histo) - histo[-1]) // 255
        if not step:
            continue
        lut, n = [], step // 2
        for i in range(256):
            lut.append(min(255, n // step))
            n += h[i]
        out[c] = torch.tensor(lut)[img[c].long()]
    return out


# Oracle: pil_equalize_loop, on noise, a narrow range, two values, one value (unchanged)
# and a 4x4 image (16 pixels: step 0, unchanged).
def test_equalize_matches_pil_algorithm():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 8, 8), generator=g),
            torch.randint(100, 120, (3, 8, 8), generator=g),
            torch.randint(0, 2, (3, 8, 8), generator=g) * 200 + 20,
            torch.full((3, 8, 8), 77)]
    for img in imgs + [torch.randint(0, 256, (3, 4, 4), generator=g)]:
        got = data_lib.equalize(img[None].float() / 255)[0] * 255
        torch.testing.assert_close(got, pil_equalize_loop(img).float(), atol=1e-4, rtol=0)
    for flat in (imgs[3], torch.randint(0, 256, (3, 4, 4), generator=g)):
        torch.testing.assert_close(data_lib.equalize(flat[None].float() / 255)[0] * 255,
                                   flat.float(), atol=1e-4, rtol=0)


# Oracles by hand at a bin: invert 255 - v; solarize bin 5 (threshold 113.3) inverts v >= 114,
# bin 0 (threshold 255) only 255; posterize bin 7 (5 bits) is v & 0b11111000.
def test_invert_solarize_posterize_at_a_bin():
    v = torch.arange(256.).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = v / 255
    level = lambda y: (y * 255).round()  # noqa: E731
    torch.testing.assert_close(level(aa(x, "Invert", 0)), 255 - v, atol=0, rtol=0)
    for b, first in ((5, 114), (0, 255), (9, 0)):
        t = data_lib.aa_magnitude("Solarize", b, 16, 16)[0]
        want = torch.where(v >= first, 255 - v, v)
        torch.testing.assert_close(level(aa(x, "Solarize", t)), want, atol=0, rtol=0)
    bits = data_lib.aa_magnitude("Posterize", 7, 16, 16)[0]
    assert bits == 5
    want = (v.long() & 0b11111000).float()
    torch.testing.assert_close(level(aa(x, "Posterize", bits)), want, atol=0, rtol=0)
    torch.testing.assert_close(aa(x, "Posterize", 8), x, atol=0, rtol=0)


# Oracles: TranslateX +3 moves the content 3 px right (zero columns on the left), TranslateY
# -2 two rows up; ShearX 0.25 about the top-left corner: row r reads column c + 0.25 (r + 1/2),
# nearest; Rotate 30 degrees keeps the centre of a constant image and empties its corners.
def test_aa_geometric_ops_by_hand():
    x = quantized(2, 3, 8, 12)
    right = torch.cat([torch.zeros(2, 3, 8, 3), x[..., :-3]], -1)
    torch.testing.assert_close(aa(x, "TranslateX", 3), right, atol=0, rtol=0)
    up = torch.cat([x[..., 2:, :], torch.zeros(2, 3, 2, 12)], -2)
    torch.testing.assert_close(aa(x, "TranslateY", -2), up, atol=0, rtol=0)
    sheared = aa(x, "ShearX", 0.25)
    for r in range(8):
        shift = int(np.floor(0.25 * (r + 0.5) + 0.5))        # floor of the sampled centre
        want = torch.cat([x[..., r, shift:], torch.zeros(2, 3, shift)], -1)
        torch.testing.assert_close(sheared[..., r, :], want, atol=0, rtol=0)
    const = torch.full((1, 3, 9, 9), 0.6)
    y = aa(const, "Rotate", 30.0)
    torch.testing.assert_close(y[0, :, 4, 4], torch.full((3,), 0.6), atol=1e-6, rtol=0)
    assert (y[0, :, [0, 0, 8, 8], [0, 8, 0, 8]] == 0).all()


def pil_op(img, name, m):
    """torchvision's _apply_op on a PIL image (its functional_pil calls), at magnitude m."""
    from PIL import Image, ImageEnhance, ImageOps
    size = img.size
    geometric = {"ShearX": (1, m, 0, 0, 1, 0), "ShearY": (1, 0, 0, m, 1, 0),
                 "TranslateX": (1, 0, -int(m), 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, -int(m))}
    if name in geometric:                   # F.affine: center [0, 0] for shears, atan(m)
        return img.transform(size, Image.AFFINE, geometric[name], Image.NEAREST)
    if name == "Rotate":
        return img.rotate(m, Image.NEAREST)
    enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
               "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return enhance[name](img).enhance(1 + m)
    return {"Posterize": lambda: ImageOps.posterize(img, int(m)),
            "Solarize": lambda: ImageOps.solarize(img, m),
            "AutoContrast": lambda: ImageOps.autocontrast(img),
            "Equalize": lambda: ImageOps.equalize(img),
            "Invert": lambda: ImageOps.invert(img)}[name]()


# Oracle: Pillow, as torchvision's PIL path (what the notebook ran) calls it, for every
# (op, bin) of the policy and both signs, on noise and on smooth images: the same 8-bit values,
# except colour / contrast / autocontrast (Pillow rounds its grey level; within one level)
# and brightness / sharpness (Pillow truncates a float32 blend; within one level).
def test_every_policy_op_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g) * 255,
                                             size=(32, 32), mode="bilinear")
    x8 = torch.cat([torch.randint(0, 256, (3, 3, 32, 32), generator=g).float(),
                    smooth]).round().to(torch.uint8)                       # (6, 3, 32, 32)
    x = x8.float() / 255
    cases = sorted({(name, b) for sub in data_lib.AA_CIFAR10 for name, _, b in sub},
                   key=str)
    approx = ("Color", "Contrast", "AutoContrast", "Brightness", "Sharpness")
    for name, b in cases:
        m, signed = data_lib.aa_magnitude(name, b, 32, 32)
        for sign in ((1, -1) if signed else (1,)):
            got = (aa(x, name, sign * m) * 255).round()
            want = torch.stack([torch.from_numpy(np.asarray(
                pil_op(Image.fromarray(img.permute(1, 2, 0).numpy()), name, sign * m)).copy())
                .permute(2, 0, 1) for img in x8]).float()
            torch.testing.assert_close(got, want, atol=1 if name in approx else 0, rtol=0,
                                       msg=f"{name} bin {b} sign {sign}")


def invert_rate(policy, n=4000, seed=0):
    """The fraction of n images that auto_augment(policy) leaves inverted (Invert-only
    policies: an image is inverted iff an odd number of its ops applied)."""
    x = torch.full((n, 3, 2, 2), 0.2)
    y = data_lib.auto_augment(x, torch.Generator().manual_seed(seed), policy=policy)
    inverted = (y - 0.8).abs().amax((1, 2, 3)) < 1e-6
    assert (inverted | ((y - 0.2).abs().amax((1, 2, 3)) < 1e-6)).all()
    return inverted.float().mean().item()


# Oracles: counts over 4,000 images (fixed seeds; 4 standard errors as tolerance): each op
# applies with its probability (0.3 alone; 0.3 then 0.6: odd count 0.3*0.4 + 0.7*0.6 = 0.54;
# probability 0 never, 1 always); sub-policies are drawn uniformly (one of two always
# inverts, the other never: 0.5); a signed op's sign is + or - with probability 1/2
# (TranslateX by 1 px of a 3-px image's bright middle column: half move right, half left).
def test_probabilities_and_signs():
    inv = lambda p: ("Invert", p, None)  # noqa: E731
    tol = 4 * (0.25 / 4000) ** 0.5
    assert abs(invert_rate(((inv(0.3), inv(0.0)),)) - 0.3) < tol
    assert abs(invert_rate(((inv(0.3), inv(0.6)),)) - 0.54) < tol
    assert invert_rate(((inv(0.0), inv(0.0)),)) == 0 and invert_rate(((inv(1.0), inv(0.0)),)) == 1
    assert abs(invert_rate(((inv(1.0), inv(0.0)), (inv(0.0), inv(0.0)))) - 0.5) < tol
    x = torch.zeros(4000, 3, 3, 3)
    x[..., 1] = 1                                                  # a bright middle column
    policy = ((("TranslateX", 1.0, 9), ("Invert", 0.0, None)),)  # int(150/331 * 3) = 1 px
    y = data_lib.auto_augment(x, torch.Generator().manual_seed(1), policy=policy)
    right, left = y[:, 0, 0, 2] == 1, y[:, 0, 0, 0] == 1
    assert (right ^ left).all() and abs(right.float().mean().item() - 0.5) < tol


# Oracle: same seed -> same output, another seed -> another; values stay on the 8-bit grid
# in [0, 1]; the shape is kept; the CIFAR-10 policy changes most images.
def test_auto_augment_seeded_range_shape():
    x = quantized(64, 3, 16, 16)
    run = lambda seed: data_lib.auto_augment(x, torch.Generator().manual_seed(seed))  # noqa
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a * 255, (a * 255).round(), atol=1e-4, rtol=0)
    changed = (a - x).abs().amax((1, 2, 3)) > 1e-6
    assert 0.5 < changed.float().mean() < 1


# Oracle: per-image sums of trivial_augment's output (seed 71 draws all 13 ops), computed with
# data.py as committed before AutoAugment was added (135f34b): TrivialAugment is unchanged.
def test_trivial_augment_unchanged():
    x = torch.randint(0, 256, (16, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 255
    y = data_lib.trivial_augment(x.float(), torch.Generator().manual_seed(71))
    want = [86.063, 91.741, 127.885, 91.152, 100.515, 93.117, 95.925, 90.662, 53.514, 94.724,
            94.533, 96.759, 129.153, 92.538, 77.008, 89.379]
    torch.testing.assert_close(y.sum((1, 2, 3)), torch.tensor(want), atol=2e-3, rtol=0)


# Oracle: make_views(policy="autoaugment") = the crop/flip oracle, auto_augment with the
# same seed, normalize (in "crop" mode: on the res-px crop); an unknown policy is refused.
def test_make_views_autoaugment_policy():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    offsets, flips = torch.randint(0, 9, (4, 2)), torch.tensor([True, False, True, False])
    xs, xt = data_lib.make_views(x, offsets, flips, 16, "resize", full_view=True,
                                 aug_gen=torch.Generator().manual_seed(5), policy="autoaugment")
    crop = crop_flip_oracle(x, offsets, flips, 32).float() / 255
    want = data_lib.normalize(data_lib.auto_augment(crop, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(xt, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(xs, data_lib.resize(want, 16), atol=1e-6, rtol=0)
    small, _ = data_lib.make_views(x, offsets.clamp(max=24), flips, 16, "crop", False,
                                   aug_gen=torch.Generator().manual_seed(5), policy="autoaugment")
    crop16 = crop_flip_oracle(x, offsets.clamp(max=24), flips, 16).float() / 255
    want16 = data_lib.auto_augment(crop16, torch.Generator().manual_seed(5))
    torch.testing.assert_close(small, data_lib.normalize(want16), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="policy"):
        data_lib.make_views(x, offsets, flips, 16, "resize", False, policy="randaugment")


# Oracle: a tiny KD run with augment="crop_flip_aa" (the Tiny p2 KD replay's switches, cropping
# curriculum) trains to finite numbers and feeds every training batch through auto_augment,
# at each stage's crop size; randaug together with it, or an unknown value, is refused.
def test_train_with_autoaugment(tmp_path, train_data, monkeypatch):
    sizes = []
    real = data_lib.auto_augment

    def spy(x, generator, **kw):
        sizes.append(x.shape[-1])
        return real(x, generator, **kw)
    monkeypatch.setattr(data_lib, "auto_augment", spy)
    cfg = small_cfg(tmp_path, kd=True, head="cls", augment="crop_flip_aa", erasing=0.2,
                    resize_mode="crop")
    r = train_lib.train(cfg, teacher=tiny_vit(patch_size=4), data=train_data)
    assert np.isfinite(r["test_acc"]) and sorted(set(sizes)) == [8, 16] and len(sizes) == 4
    with pytest.raises(ValueError, match="choose one"):
        train_lib.RunConfig(augment="crop_flip_aa", randaug=True).check()
    with pytest.raises(ValueError, match="crop_flip_aa"):
        train_lib.RunConfig(augment="autoaugment").check()
