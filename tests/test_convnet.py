"""convnet.py and the conv teacher: the ConvNet's shapes and memory format, conv_flops, the
"conv" preset wherever a model is built (train.make_model, load_model, a teacher's run, KD into
a ViT student, ensure_teacher), its recipe (teacher.teacher_config) and the study's conv arms.

Oracles: conv_flops of a tiny config worked out by hand, and the same count from forward hooks
on every convolution and the head; channels-last logits against the same weights run in the
default (contiguous) layout; chance level (10 %) against > 40 % after a few epochs on the easy
synthetic task; a reloaded checkpoint reproduces the run's test accuracies; the study arms
equal the study's KD arms but for the three teacher fields.
"""
import copy
import dataclasses
import os

import pytest
import torch
import torch.nn as nn

import convnet
import experiments
import irkd
import teacher as teacher_lib
import train as train_lib
from conftest import read_log, small_cfg, tiny_vit

TINY = dict(widths=(8, 16, 32, 64))     # a few thousand parameters: every test runs in seconds


@pytest.fixture
def tiny_preset(monkeypatch):
    """The "conv" preset shrunk to TINY for the test (make_model reads it at every call)."""
    monkeypatch.setitem(convnet.CONV_PRESETS, "conv", TINY)


def tiny_convnet(seed=0):
    torch.manual_seed(seed)
    return convnet.ConvNet(**TINY)


# ----------------------------------------------------------------------------- the network

def test_shapes_at_32_px_and_below():
    m = tiny_convnet().eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    assert m.features(x).shape == (2, 64, 4, 4)               # three halvings: 32 -> 4
    assert m.features(torch.randn(2, 3, 16, 16)).shape == (2, 64, 2, 2)
    assert m(torch.randn(2, 3, 12, 12)).shape == (2, 10)      # the curriculum's smallest view


def test_channels_last_gives_the_same_logits():
    m = tiny_convnet().eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in m.parameters() if p.ndim == 4)
    x = torch.randn(4, 3, 32, 32)                             # a plain NCHW batch comes in
    assert m.features(x).is_contiguous(memory_format=torch.channels_last)
    # the same weights in the default layout, run without the conversion
    c = copy.deepcopy(m).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in c.parameters())
    contiguous = c.head(c.stages(c.stem(x)).amax(dim=(2, 3))) * c.logit_scale
    torch.testing.assert_close(m(x), contiguous, rtol=1e-4, atol=1e-5)


def test_widths_must_be_four():
    with pytest.raises(ValueError, match="four numbers"):
        convnet.ConvNet(widths=(8, 16, 32))


# Oracle: by hand, widths (2, 3, 4, 5) at 8 px, 2 FLOPs per multiply-add:
#   stem 3->2 at 8x8: 2*64*2*3*9 = 6912
#   stage 1 (2->3): conv1 at 8x8 2*64*3*2*9 = 6912, conv2 at 4x4 2*16*3*3*9 = 2592
#   stage 2 (3->4): conv1 at 4x4 2*16*4*3*9 = 3456, conv2 at 2x2 2*4*4*4*9 = 1152
#   stage 3 (4->5): conv1 at 2x2 2*4*5*4*9 = 1440,  conv2 at 1x1 2*1*5*5*9 = 450
#   head 5->10: 2*5*10 = 100;  in all 23014
def test_conv_flops_by_hand():
    assert convnet.conv_flops((2, 3, 4, 5), res=8) == 23014


def hooked_flops(model, res):
    """The same count read off a forward pass: every conv's output elements x its fan-in."""
    total = []

    def conv(m, inp, out):
        total.append(2 * out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, inp, out):
        total.append(2 * out.numel() * m.in_features)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(conv)
        elif isinstance(mod, nn.Linear):
            mod.register_forward_hook(linear)
    model.eval()(torch.zeros(1, 3, res, res))
    return sum(total)


@pytest.mark.parametrize("widths,res", [((2, 3, 4, 5), 8), ((32, 64, 128, 256), 32)])
def test_conv_flops_match_a_forward_pass(widths, res):
    assert convnet.conv_flops(widths, res=res) == hooked_flops(convnet.ConvNet(widths=widths), res)


# ----------------------------------------------------------------------------- wiring

def test_make_model_dispatches_on_the_preset():
    assert isinstance(train_lib.make_model("conv", patch_size=4), convnet.ConvNet)
    torch.manual_seed(0)
    vit = train_lib.make_model("custom", patch_size=4, distill_token=True)
    torch.manual_seed(0)
    same = irkd.build_model("custom", patch_size=4, distill_token=True)
    assert all(torch.equal(a, b) for a, b in zip(vit.state_dict().values(),
                                                 same.state_dict().values()))
    with pytest.raises(ValueError, match="no distillation token"):
        train_lib.make_model("conv", patch_size=4, distill_token=True)


def test_config_accepts_conv_as_a_model_and_a_teacher():
    train_lib.RunConfig(model="conv").check()
    train_lib.RunConfig(kd=True, teacher_model="conv", teacher_res="full").check()
    with pytest.raises(ValueError, match="model='huge'; valid: custom, tiny, small, conv"):
        train_lib.RunConfig(model="huge").check()
    with pytest.raises(ValueError, match="not as a KD student"):
        train_lib.RunConfig(model="conv", kd=True).check()
    with pytest.raises(ValueError, match="attention"):
        train_lib.RunConfig(kd=True, sal=True, teacher_model="conv").check()
    with pytest.raises(ValueError, match="teacher_recipe='default'"):
        train_lib.RunConfig(kd=True, teacher_model="conv", teacher_recipe="original").check()


def test_predict_on_a_convnet_uses_batches_of_500():
    m = tiny_convnet()
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    preds = irkd.predict(m, x, 32)
    assert set(preds) == {"cls"} and preds["cls"].shape == (7,)
    assert torch.equal(preds["cls"], irkd.predict(m, x, 32, batch_size=3)["cls"])


def test_saliency_snapshot_skips_what_has_no_attention():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert train_lib.saliency_snapshot(tiny_convnet(), None, images, 32, "same") is None
    snap = train_lib.saliency_snapshot(tiny_vit(4, distill_token=True), tiny_convnet(), images,
                                       16, "full")
    assert set(snap) == {"res", "student"} and snap["student"].shape == (2, 4, 4)


# ----------------------------------------------------------------------------- runs

@pytest.fixture
def conv_teacher_run(tmp_path, train_data, tiny_preset):
    """A teacher's own run with model="conv" on the easy task: (results, run directory)."""
    cfg = small_cfg(tmp_path, name="tconv", model="conv", cl=False, epochs=3, batch_size=64,
                    lr=3e-3, train_size=0, val_size=64, test_size=200, schedule="onecycle",
                    warmup_epochs=1, label_smoothing=0.1)
    return train_lib.train(cfg, data=train_data), tmp_path / "tconv"


def test_a_conv_teacher_trains_end_to_end(conv_teacher_run):
    results, run_dir = conv_teacher_run
    assert results["test_acc"] > 40, results                  # chance is 10 %
    assert results["params"] == irkd.count_params(convnet.ConvNet(**TINY))
    rows = read_log(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    assert os.path.exists(run_dir / "model.pt")
    assert not os.path.exists(run_dir / "saliency.pt")         # no attention, no maps


def test_load_model_round_trips_a_conv_checkpoint(conv_teacher_run, train_data):
    results, run_dir = conv_teacher_run
    model, ckpt = train_lib.load_model(str(run_dir / "model.pt"))
    assert isinstance(model, convnet.ConvNet) and ckpt["model_args"]["preset"] == "conv"
    acc = irkd.evaluate(model, train_data["test_x"][:200], train_data["test_y"][:200], 32)
    assert acc["cls"] == results["test_acc"]


def test_kd_from_a_conv_teacher_into_a_vit_student():
    teacher, student = tiny_convnet(), tiny_vit(4, distill_token=True)
    loss_fn = irkd.IRKDLoss(teacher, alpha=0.5, temperature=4.0)
    x32 = torch.randn(8, 3, 32, 32)
    xs = irkd.resize(x32, 16)                                  # the student's view; teacher: 32 px
    y = torch.randint(0, 10, (8,))
    out, internals = loss_fn.student_forward(student, xs)
    loss, parts = loss_fn(out, y, teacher_input=x32, internals=internals, student=student)
    loss.backward()
    assert torch.isfinite(loss) and parts["kd"] > 0
    assert student.head_dist.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_a_kd_run_with_a_conv_teacher(tmp_path, train_data):
    cfg = small_cfg(tmp_path, name="kdconv", kd=True, teacher_model="conv", teacher_res="full")
    results = train_lib.train(cfg, teacher=tiny_convnet(), data=train_data)
    assert {"cls", "dist", "avg"} <= set(results["heads"])
    rows = read_log(tmp_path / "kdconv")
    assert all(r["kd"] > 0 for r in rows)
    snaps = torch.load(tmp_path / "kdconv" / "saliency.pt", weights_only=False)["stages"]
    assert all("student" in s and "teacher" not in s for s in snaps)


# ----------------------------------------------------------------------------- the teacher

def save_conv_checkpoint(path, preset="conv", patch_size=4):
    """A conv model.pt in train()'s layout (patch_size saved as a run saves it)."""
    model = train_lib.make_model(preset, patch_size=patch_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(model=model.state_dict(),
                    model_args=dict(preset=preset, patch_size=patch_size, distill_token=False,
                                    dropout=0.0),
                    config=dataclasses.asdict(train_lib.RunConfig(model=preset)),
                    test_acc=90.0), path)
    return model


def test_teacher_config_conv_recipe():
    base = train_lib.RunConfig(kd=True, teacher_model="conv", teacher_epochs=12,
                               teacher_res="full")
    t = teacher_lib.teacher_config(4, base=base)
    assert (t.name, t.model, t.epochs, t.batch_size, t.lr, t.weight_decay, t.label_smoothing) \
        == ("teacher_conv_12ep", "conv", 12, 128, 2e-3, 5e-2, 0.1)
    assert (t.schedule, t.warmup_epochs, t.augment, t.mixup, t.kd) == \
        ("onecycle", 1, "crop_flip", False, False)
    t.check()
    assert teacher_lib.teacher_config(2, base=base).name == t.name   # no patches, one teacher
    # quick: the one small stand-in, whichever recipe asked
    assert teacher_lib.teacher_config(4, quick=True, base=base) == dataclasses.replace(
        teacher_lib.teacher_config(4, quick=True), teacher_model="conv", teacher_epochs=12,
        teacher_res="full")


def test_ensure_teacher_takes_a_conv_checkpoint_whatever_its_patch(tmp_path):
    path = str(tmp_path / "t" / "model.pt")
    saved = save_conv_checkpoint(path, patch_size=2)          # patch_size means nothing here
    cfg = train_lib.RunConfig(kd=True, patch_size=4, teacher_model="conv", teacher_res="full",
                              teacher=path, out=str(tmp_path))
    model, info = teacher_lib.ensure_teacher(cfg)
    assert isinstance(model, convnet.ConvNet) and info["preset"] == "conv"
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_ensure_teacher_refuses_a_conv_vit_mismatch(tmp_path):
    conv_path = str(tmp_path / "conv" / "model.pt")
    save_conv_checkpoint(conv_path)
    vit_cfg = train_lib.RunConfig(kd=True, patch_size=4, teacher=conv_path, out=str(tmp_path))
    with pytest.raises(ValueError, match="is a conv model; this experiment needs a small teacher"):
        teacher_lib.ensure_teacher(vit_cfg)
    vit_path = str(tmp_path / "vit" / "model.pt")
    os.makedirs(os.path.dirname(vit_path))
    vit = irkd.build_model("custom", patch_size=4)
    torch.save(dict(model=vit.state_dict(), model_args=dict(preset="custom", patch_size=4,
                                                            distill_token=False, dropout=0.0)),
               vit_path)
    conv_cfg = dataclasses.replace(vit_cfg, teacher=vit_path, teacher_model="conv",
                                   teacher_res="full")
    with pytest.raises(ValueError, match="is a custom model; this experiment needs a conv teacher"):
        teacher_lib.ensure_teacher(conv_cfg)


def test_study_conv_arms_are_the_kd_arms_with_the_conv_teacher():
    E = experiments.EXPERIMENTS
    change = dict(teacher_model="conv", teacher_epochs=teacher_lib.CONV_EPOCHS, teacher_res="full")
    for arm, base in (("study_kd_conv", "study_kd"), ("study_kd_cl_conv", "study_kd_cl")):
        assert E[arm] == dataclasses.replace(E[base], name=arm, **change)
        assert arm in experiments.STUDY_ARMS
        E[arm].check()
        assert teacher_lib.default_path(E[arm]) == os.path.join(
            "results/study", experiments.STUDY_CONV_TEACHER.name, "model.pt")
    t = experiments.STUDY_CONV_TEACHER
    assert t.name == "teacher_conv_12ep" and E[t.name] is t and t.out == "results/study"
    assert experiments.STUDY_TEACHER.name == "teacher_custom_p4_30ep"       # unchanged
    assert experiments.GROUPS["study"][:2] == ["teacher_custom_p4_30ep", "teacher_conv_12ep"]


# ----------------------------------------------------------------------------- the flip average

def test_flip_averaged_teacher_is_the_mean_over_mirror_images():
    teacher = tiny_convnet().eval()
    teacher.logit_scale = 1e4             # untrained logits are ~1e-5: make them tell apart
    x = torch.randn(6, 3, 32, 32)
    mirror = x[..., torch.arange(31, -1, -1)]                  # columns reversed by indexing
    with torch.no_grad():
        want = (teacher(x) + teacher(mirror)) / 2               # two separate calls
        got = teacher_lib.FlipAveraged(teacher)(x)
        again = teacher_lib.FlipAveraged(teacher)(mirror)
    assert got.shape == (6, 10)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-3)
    assert torch.allclose(again, got, rtol=1e-5, atol=1e-3)    # a mirror image: the same logits
    assert (teacher(x) - want).abs().max() > 0.1 * want.abs().max()   # not one view's logits


def test_ensure_teacher_with_flip_records_the_averaged_accuracy(tmp_path, tiny_preset):
    path = str(tmp_path / "t" / "model.pt")
    saved = save_conv_checkpoint(path).eval()
    cfg = train_lib.RunConfig(kd=True, teacher_model="conv", teacher_res="full", teacher=path,
                              teacher_flip=True, test_size=40, out=str(tmp_path))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 32, 32), generator=g, dtype=torch.uint8)
    with torch.no_grad():                                      # the oracle: the first 40 images
        xs = irkd.normalize(x[:40].float() / 255)
        pred = (saved(xs) + saved(xs.flip(3))).argmax(1)
    y = pred.clone()
    y[:10] = (y[:10] + 1) % 10                                  # 30 of 40 right: 75 %
    data = dict(test_x=x, test_y=torch.cat([y, torch.zeros(10, dtype=torch.long)]))
    model, info = teacher_lib.ensure_teacher(cfg, data)
    assert isinstance(model, teacher_lib.FlipAveraged) and info["flip"]
    assert info["test_acc_flip"] == 75.0 and info["test_acc"] == 90.0     # the saved one alone
    _, plain = teacher_lib.ensure_teacher(dataclasses.replace(cfg, teacher_flip=False), data)
    assert "flip" not in plain and "test_acc_flip" not in plain


def test_a_kd_run_with_a_flip_averaged_teacher(tmp_path, train_data):
    # a ViT teacher wrapped: the run must not read attention maps from the average
    cfg = small_cfg(tmp_path, name="kdflip", kd=True, teacher_flip=True)
    teacher = teacher_lib.FlipAveraged(tiny_vit(4))
    results = train_lib.train(cfg, teacher=teacher, data=train_data)
    assert {"cls", "dist", "avg"} <= set(results["heads"])
    assert all(r["kd"] > 0 for r in read_log(tmp_path / "kdflip"))
    snaps = torch.load(tmp_path / "kdflip" / "saliency.pt", weights_only=False)["stages"]
    assert all("student" in s and "teacher" not in s for s in snaps)


def test_flip_and_saliency_are_refused_together():
    cfg = train_lib.RunConfig(kd=True, cl=True, sal=True, teacher_flip=True)
    with pytest.raises(ValueError, match="teacher_flip=True .* use sal=False"):
        cfg.check()


def test_study_flip_arms_are_the_conv_arms_with_the_flip():
    E = experiments.EXPERIMENTS
    for arm, base in (("study_kd_convflip", "study_kd_conv"),
                      ("study_kd_cl_convflip", "study_kd_cl_conv")):
        assert E[arm] == dataclasses.replace(E[base], name=arm, teacher_flip=True)
        assert arm in experiments.STUDY_ARMS
        assert teacher_lib.default_path(E[arm]) == teacher_lib.default_path(E[base])  # one teacher
