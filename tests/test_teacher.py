"""teacher.py: teacher_config (the recipe), default_path, ensure_teacher (which teacher a
student may use, and why not), and its command line (bad overrides; where --quick writes).
Nothing here trains or reads data: every call fails or stops before that (the fixture
conftest.no_data_no_training makes loading data or training an error).

Oracles: the recipe's hyper-parameters written out by hand (as measured, README "Teacher
recipe"), the CPU ablation's "_ta_re" teacher equal to the plain one but for TrivialAugment and
erasing; checkpoints saved by the test in train()'s model.pt layout, whose weights and md5 must
come back unchanged; the path `experiments.py exp1a --quick` looks for its teacher.
"""
import dataclasses
import os
import time

import pytest
import torch

import data as data_lib
import train as train_lib
import experiments
import irkd
import runs
import teacher as teacher_lib

pytestmark = pytest.mark.usefixtures("no_data_no_training")


def save_checkpoint(path, preset, patch_size, distill_token=False):
    """The dict layout train() writes to model.pt."""
    model = irkd.build_model(preset, patch_size=patch_size, distill_token=distill_token)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(model=model.state_dict(),
                    model_args=dict(preset=preset, patch_size=patch_size,
                                    distill_token=distill_token, dropout=0.0),
                    config=dataclasses.asdict(train_lib.RunConfig(model=preset, patch_size=patch_size)),
                    test_acc=12.5), path)
    return model


# ----------------------------------------------------------------------------- the recipe

def test_teacher_config():
    t = teacher_lib.teacher_config(2)
    assert (t.name, t.model, t.patch_size, t.epochs, t.lr, t.weight_decay) == \
        ("teacher_small_p2", "small", 2, 135, 4e-4, 2e-4)
    assert t.mixup and t.label_smoothing == 0.01 and t.schedule == "onecycle" and not t.kd
    t.check()
    q = teacher_lib.teacher_config(4, quick=True)
    assert q.quick and q.model == "custom" and 0 < q.train_size < 45000
    q.check()


# Oracle: the recipe in teacher.py (full teacher: on; quick teacher: off).
def test_teacher_config_recipe():
    # The recipe as measured (docs/reproducing.md, "Teacher recipe"): mixup/cutmix on, TA and
    # RE off by default, the paper's schedule, smoothing and weight decay.
    full, quick = teacher_lib.teacher_config(4), teacher_lib.teacher_config(4, quick=True)
    assert full.randaug is False and full.erasing == 0.0 and full.mixup is True
    assert (full.lr, full.weight_decay, full.label_smoothing, full.schedule, full.epochs) == \
        (4e-4, 2e-4, 0.01, "onecycle", 135)
    assert quick.randaug is False and quick.erasing == 0.0 and quick.mixup is False
    for c in (full, quick):
        c.check()


# Oracle: P_4_ALL.ipynb cell 5 (Soobiwan/IRKD 0a27c9f), read by hand: its teacher's train Subset
# read the dataset whose transform had been set to val_tf (ToTensor + Normalize), so it trained
# on mixup/cutmix alone; OneCycle peak at 0.6 of 135 epochs, dropout 0.1, best-val weights.
# The student's memory setting does not reach its teacher: the quick p4 teacher must be the
# same whether exp1a (whole batches) or small_p4_all (chunks of 16) trained it first.
def test_teacher_steps_are_never_chunked():
    for quick in (False, True):
        t = teacher_lib.teacher_config(4, quick=quick, base=train_lib.RunConfig(micro_batch=16))
        assert t.micro_batch == 0


# Both recipes share the quick teacher's cached file, so they must train the same teacher.
def test_quick_teacher_is_the_same_for_both_recipes():
    default, orig = (teacher_lib.teacher_config(4, quick=True, base=train_lib.RunConfig(teacher_recipe=r))
                     for r in ("default", "original"))
    assert dataclasses.replace(orig, teacher_recipe="default") == default


def test_teacher_config_original_recipe():
    default = teacher_lib.teacher_config(4)
    orig = teacher_lib.teacher_config(4, base=train_lib.RunConfig(teacher_recipe="original"))
    assert orig.name == "teacher_small_p4_orig" and default.augment == "crop_flip"
    assert orig.augment == "none" and orig.mixup is True and orig.randaug is False
    assert orig.erasing == 0.0 and orig.label_smoothing == 0.01
    assert (orig.dropout, orig.select, orig.warmup_epochs) == (0.1, "best", 81)
    # torch's OneCycleLR and HF's ViT with hidden and attention dropout 0.1 (P_4_ALL cell 5)
    assert (orig.schedule, orig.arch, orig.attn_dropout) == ("onecycle_torch", "notebook", 0.1)
    assert dataclasses.replace(orig, name=default.name, augment="crop_flip", dropout=0.0,
                               select="last", warmup_epochs=default.warmup_epochs,
                               teacher_recipe="default", schedule="onecycle", arch="irkd",
                               attn_dropout=0.0) == default   # nothing else differs
    assert experiments.EXPERIMENTS["orig_teacher_small_p4"].augment == "none"
    orig.check()


# ----------------------------------------------------------------------------- ensure_teacher

def test_ensure_teacher_refuses_wrong_preset(tmp_path):
    path = str(tmp_path / "t" / "model.pt")
    save_checkpoint(path, "custom", 4)
    cfg = train_lib.RunConfig(kd=True, patch_size=4, teacher=path, out=str(tmp_path))
    with pytest.raises(ValueError) as e:
        teacher_lib.ensure_teacher(cfg)
    msg = str(e.value)
    assert "custom" in msg and "small teacher with patch 4" in msg and path in msg


def test_ensure_teacher_refuses_wrong_patch(tmp_path):
    cfg = train_lib.RunConfig(kd=True, patch_size=4, quick=True, out=str(tmp_path))
    path = teacher_lib.default_path(cfg)              # quick: a custom teacher is expected
    save_checkpoint(path, "custom", 2)
    with pytest.raises(ValueError) as e:
        teacher_lib.ensure_teacher(cfg)
    assert "patch 2" in str(e.value) and "patch 4" in str(e.value)
    save_checkpoint(path, "custom", 4, distill_token=True)
    with pytest.raises(ValueError, match="distillation token"):
        teacher_lib.ensure_teacher(cfg)


def test_ensure_teacher_loads_the_right_one(tmp_path):
    cfg = train_lib.RunConfig(kd=True, patch_size=4, quick=True, out=str(tmp_path))
    path = teacher_lib.default_path(cfg)
    saved = save_checkpoint(path, "custom", 4)
    model, info = teacher_lib.ensure_teacher(cfg)
    assert info["preset"] == "custom" and info["patch_size"] == 4 and info["test_acc"] == 12.5
    assert info["md5"] == data_lib.md5sum(path)
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_ensure_teacher_refuses_a_stale_recipe(tmp_path):
    # A cached default teacher trained before TrivialAugment / random erasing joined the
    # recipe (its config has neither field) is refused; naming it with --teacher uses it.
    cfg = train_lib.RunConfig(kd=True, patch_size=4, teacher_model="custom", out=str(tmp_path))
    path = teacher_lib.default_path(cfg)
    save_checkpoint(path, "custom", 4)
    ckpt = torch.load(path, weights_only=False)
    for k in ("randaug", "erasing"):
        del ckpt["config"][k]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="recipe.*--teacher="):
        teacher_lib.ensure_teacher(cfg)
    _, info = teacher_lib.ensure_teacher(dataclasses.replace(cfg, teacher=path))
    assert info["randaug"] is False and info["erasing"] == 0


# A cached teacher of the original recipe (no per-image augmentation) is not the default
# recipe's (crop + flip), and the other way round: each is refused where the other is wanted.
def test_ensure_teacher_refuses_another_augmentation(tmp_path):
    cfg = train_lib.RunConfig(kd=True, patch_size=4, quick=True, out=str(tmp_path))
    path = teacher_lib.default_path(cfg)
    save_checkpoint(path, "custom", 4)
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"]["augment"] = "none"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="augment"):
        teacher_lib.ensure_teacher(cfg)
    del ckpt["config"]["augment"]                 # written before the field: crop + flip
    torch.save(ckpt, path)
    _, info = teacher_lib.ensure_teacher(cfg)
    assert info["augment"] == "crop_flip"


# ----------------------------------------------------------------------------- command line

def test_teacher_cli_bad_override(capsys):
    assert teacher_lib.main(["--bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--out=elsewhere"]])
def test_quick_teacher_is_where_quick_students_look(monkeypatch, capsys, extra):
    # `python teacher.py --quick` (make teacher QUICK=1) must write the checkpoint that
    # `python experiments.py exp1a --quick` then finds instead of training its own.
    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        return {"test_acc": 0.0}

    monkeypatch.setattr(train_lib, "train", fake_train)
    monkeypatch.setattr(teacher_lib, "estimate_seconds", lambda cfg: 0.0)
    assert teacher_lib.main(["--quick"] + extra) == 0
    t = seen["cfg"]
    overrides = runs.parse_overrides(["--quick"] + extra, train_lib.RunConfig)
    (student,) = experiments.configs_for("exp1a", overrides)
    assert os.path.join(t.out, t.name, "model.pt") == teacher_lib.default_path(student)


# Oracle: two students that need the same missing teacher at once: one trains it, the other
# waits on the lock and loads the file the first wrote (train_teacher runs exactly once).
def test_two_runs_share_one_teacher(tmp_path, monkeypatch):
    import threading
    cfg = train_lib.RunConfig(out=str(tmp_path), kd=True, teacher_model="custom", teacher_epochs=3)
    calls = []

    def slow_train(tcfg, data=None):
        calls.append(tcfg.name)
        time.sleep(0.5)                       # long enough for the other thread to arrive
        model = irkd.build_model("custom", patch_size=4)
        os.makedirs(os.path.join(tcfg.out, tcfg.name), exist_ok=True)
        torch.save(dict(model=model.state_dict(), model_args=train_lib.model_args(tcfg),
                        config=dataclasses.asdict(tcfg)),
                   os.path.join(tcfg.out, tcfg.name, "model.pt"))
    monkeypatch.setattr(teacher_lib, "train_teacher", slow_train)
    got = []
    threads = [threading.Thread(target=lambda: got.append(teacher_lib.ensure_teacher(cfg)))
               for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == ["teacher_custom_p4_3ep"] and len(got) == 2


def test_missing_teacher_path_says_what_to_pass(tmp_path):
    cfg = train_lib.RunConfig(out=str(tmp_path), kd=True, teacher=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="no such file.*leave --teacher out"):
        teacher_lib.ensure_teacher(cfg)


def test_a_file_that_is_not_a_checkpoint_gets_one_line(tmp_path):
    bogus = tmp_path / "README.md"
    bogus.write_text("# not a model\n" * 50)
    with pytest.raises(ValueError) as e:
        train_lib.load_model(str(bogus))
    assert "not a model.pt written by this project" in str(e.value)
    assert "delete" not in str(e.value) and len(str(e.value).splitlines()) == 1


# Oracle: P_2_KD_ONLY.ipynb erased the *student's* images only; its teacher is the shared p2
# teacher of the other p2 cells. A student's erasing / TrivialAugment must not reach the
# teacher recipe derived from it (else the replay trains, or refuses, the shared teacher).
def test_a_students_erasing_does_not_reach_its_teacher():
    student = experiments.EXPERIMENTS["orig_tiny_p2_kd"]
    assert student.erasing == 0.2
    t = teacher_lib.teacher_config(2, base=student)
    assert (t.erasing, t.randaug) == (0.0, False)
    assert t.name == teacher_lib.teacher_config(
        2, base=experiments.EXPERIMENTS["orig_tiny_p2_kd_cl"]).name == "teacher_small_p2_nbsplit"
    # nor the replays' student switches; the split stays (the teacher validates on the
    # student's validation images and is cached apart from the project-split teacher)
    assert (t.arch, t.attn_dropout, t.stop_epoch, t.erasing_area, t.split) == (
        "irkd", 0.0, 0, 0.33, "notebooks")
    assert teacher_lib.teacher_config(2, base=experiments.EXPERIMENTS["kdonly"]).name == \
        "teacher_small_p2"
