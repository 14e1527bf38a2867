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
"""
import torch

import data as data_lib
from conftest import crop_flip_oracle

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

