"""experiments.py and teacher.py: the command line, override parsing, teacher checks.
Nothing here trains or reads data: every call fails or stops before that."""
import dataclasses
import json
import os

import pytest
import torch

import experiments
import data as data_lib
import irkd
import runs
import teacher as teacher_lib


@pytest.fixture(autouse=True)
def no_data_no_training(monkeypatch):
    """A CLI test that got past argument checking must not download or train."""
    def refuse(*a, **kw):
        raise AssertionError("this test should have stopped before loading data or training")
    monkeypatch.setattr(data_lib, "download_cifar10", refuse)
    monkeypatch.setattr(data_lib, "load_cifar10", refuse)
    monkeypatch.setattr(irkd, "train", refuse)
    monkeypatch.setattr(teacher_lib, "estimate_seconds", refuse)


def test_list_prints_every_name(capsys):
    assert experiments.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list(experiments.EXPERIMENTS) + list(experiments.GROUPS) + experiments.NAMED:
        assert name in out
    for name, *_ in experiments.TABLE:
        assert name in out
    assert "66.85" in out and "84.29" in out                 # the paper numbers beside the cells


def test_named_variants_match_the_design():
    E = experiments.EXPERIMENTS
    want = {  # name: (student, patch, kd, cl, sal)
        "exp1a": ("custom", 4, True, True, False),
        "exp1b": ("custom", 4, True, True, True),
        "saliency_p2": ("tiny", 2, True, True, True),
        "kdonly": ("tiny", 2, True, False, False),
    }
    for name, (model, patch, kd, cl, sal) in want.items():
        c = E[name]
        assert (c.model, c.patch_size, c.kd, c.cl, c.sal) == (model, patch, kd, cl, sal), name
        c.check()
    group = [E[n] for n in experiments.GROUPS["small_p4_all"]]
    assert {(c.kd, c.cl, c.sal) for c in group} == {(False, False, False), (False, True, False),
                                                   (True, False, False), (True, True, False),
                                                   (True, True, True)}
    assert all(c.model == "tiny" and c.patch_size == 4 for c in group)
    assert len(experiments.GROUPS["table"]) == 15             # 13 students + 2 teachers
    t = E["teacher_small_p4"]
    assert (t.model, t.patch_size, t.kd) == ("small", 4, False)


def test_unknown_experiment(capsys):
    assert experiments.main(["exp9z"]) == 2
    err = capsys.readouterr().err
    assert "exp9z" in err
    for name in ("exp1a", "exp1b", "saliency_p2", "small_p4_all", "kdonly", "table"):
        assert name in err


def test_no_arguments_prints_usage(capsys):
    assert experiments.main([]) == 2
    assert "experiments.py" in capsys.readouterr().out
    assert experiments.main(["--help"]) == 0


@pytest.mark.parametrize("arg,field", [
    ("--bogus=1", "bogus"),
    ("--epochs=abc", "epochs"),
    ("--kd=maybe", "kd"),
    ("--lr=fast", "lr"),
    ("--resolutions=12,x", "resolutions"),
])
def test_bad_override_names_the_field(capsys, arg, field):
    assert experiments.main(["exp1a", arg]) != 0
    err = capsys.readouterr().err
    assert field in err and "error" in err


def test_non_divisible_resolution_rejected(capsys):
    assert experiments.main(["exp1a", "--resolutions=12,18"]) != 0
    err = capsys.readouterr().err
    assert "18" in err and "patch_size=4" in err
    # patch 2 takes 18
    (cfg,) = experiments.configs_for("saliency_p2", runs.parse_overrides(["--resolutions=12,18"], irkd.Config))
    assert cfg.resolutions == (12, 18)


def test_parse_overrides_types():
    got = runs.parse_overrides(["--kd=false", "--cl", "--epochs=12", "--lr=1e-3",
                                       "--resolutions=12,16", "--teacher", "runs/t/model.pt",
                                       "--batch-size=64", "--sal=YES", "--alpha=0"], irkd.Config)
    assert got == dict(kd=False, cl=True, epochs=12, lr=1e-3, resolutions=(12, 16),
                       teacher="runs/t/model.pt", batch_size=64, sal=True, alpha=0.0)
    assert type(got["epochs"]) is int and type(got["lr"]) is float and type(got["alpha"]) is float
    assert runs.parse_overrides([], irkd.Config) == {}
    for bad in (["lr=1"], ["--epochs"], ["--epochs=1.5"], ["--quick=perhaps"]):
        with pytest.raises(ValueError):
            runs.parse_overrides(bad, irkd.Config)


def test_configs_for_applies_overrides_and_quick():
    (cfg,) = experiments.configs_for("exp1b", {"lr": 1e-3, "seed": 3})
    assert (cfg.name, cfg.lr, cfg.seed, cfg.kd, cfg.sal) == ("exp1b", 1e-3, 3, True, True)
    assert experiments.EXPERIMENTS["exp1b"].lr == 3e-4             # the table itself is untouched
    cfgs = experiments.configs_for("small_p4_all", {"quick": True, "out": "elsewhere"})
    assert [c.name for c in cfgs] == experiments.GROUPS["small_p4_all"]
    for c in cfgs:
        assert c.quick and c.out == "elsewhere/quick" and 0 < c.train_size < 45000
        assert c.epochs == len(c.resolutions)                      # one epoch per stage
        c.check()


# ----------------------------------------------------------------------------- teachers

def save_checkpoint(path, preset, patch_size, distill_token=False):
    """The dict layout train() writes to model.pt."""
    model = irkd.build_model(preset, patch_size=patch_size, distill_token=distill_token)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(model=model.state_dict(),
                    model_args=dict(preset=preset, patch_size=patch_size, distill_token=distill_token,
                                    dropout=0.0),
                    config=dataclasses.asdict(irkd.Config(model=preset, patch_size=patch_size)),
                    test_acc=12.5), path)
    return model


def test_ensure_teacher_refuses_wrong_preset(tmp_path):
    path = str(tmp_path / "t" / "model.pt")
    save_checkpoint(path, "custom", 4)
    cfg = irkd.Config(kd=True, patch_size=4, teacher=path, out=str(tmp_path))
    with pytest.raises(ValueError) as e:
        teacher_lib.ensure_teacher(cfg)
    msg = str(e.value)
    assert "custom" in msg and "small teacher with patch 4" in msg and path in msg


def test_ensure_teacher_refuses_wrong_patch(tmp_path):
    cfg = irkd.Config(kd=True, patch_size=4, quick=True, out=str(tmp_path))
    path = teacher_lib.default_path(cfg)                            # quick: a custom teacher is expected
    save_checkpoint(path, "custom", 2)
    with pytest.raises(ValueError) as e:
        teacher_lib.ensure_teacher(cfg)
    assert "patch 2" in str(e.value) and "patch 4" in str(e.value)
    save_checkpoint(path, "custom", 4, distill_token=True)
    with pytest.raises(ValueError, match="distillation token"):
        teacher_lib.ensure_teacher(cfg)


def test_ensure_teacher_loads_the_right_one(tmp_path):
    cfg = irkd.Config(kd=True, patch_size=4, quick=True, out=str(tmp_path))
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
    cfg = irkd.Config(kd=True, patch_size=4, teacher_model="custom", out=str(tmp_path))
    path = teacher_lib.default_path(cfg)
    save_checkpoint(path, "custom", 4)
    ckpt = torch.load(path, weights_only=False)
    for k in ("randaug", "erasing"):
        del ckpt["config"][k]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="recipe.*--teacher="):
        teacher_lib.ensure_teacher(cfg)
    _, info = teacher_lib.ensure_teacher(dataclasses.replace(cfg, teacher=path))
    assert info["randaug"] is False and info["erasing"] is False


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher"):
        irkd.load_model(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a usable IRKD checkpoint"):
        irkd.load_model(str(junk))


def test_teacher_config():
    t = teacher_lib.teacher_config(2)
    assert (t.name, t.model, t.patch_size, t.epochs, t.lr, t.weight_decay) == \
        ("teacher_small_p2", "small", 2, 135, 4e-4, 2e-4)
    assert t.mixup and t.label_smoothing == 0.01 and t.schedule == "onecycle" and not t.kd
    t.check()
    q = teacher_lib.teacher_config(4, quick=True)
    assert q.quick and q.model == "custom" and 0 < q.train_size < 45000
    q.check()


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

    monkeypatch.setattr(irkd, "train", fake_train)
    monkeypatch.setattr(teacher_lib, "estimate_seconds", lambda cfg: 0.0)
    assert teacher_lib.main(["--quick"] + extra) == 0
    t = seen["cfg"]
    (student,) = experiments.configs_for("exp1a", runs.parse_overrides(["--quick"] + extra, irkd.Config))
    assert os.path.join(t.out, t.name, "model.pt") == teacher_lib.default_path(student)


# ----------------------------------------------------------------------------- report

def write_result(root, dirname, name, seed, acc, quick=False):
    os.makedirs(root / dirname, exist_ok=True)
    by_res = {str(r): acc - (32 - r) / 4 for r in irkd.RESOLUTIONS}
    with open(root / dirname / "results.json", "w") as f:
        json.dump(dict(name=name, seed=seed, test_acc=acc, test_acc_by_res=by_res, quick=quick,
                       train_images=10000, test_images=10000, wall_s=100.0 + 2 * seed, device="cpu (test)"), f)


def test_report_mean_std_over_seeds_and_links(tmp_path):
    # Oracle: mean and sample std by hand. Seeds of one cell share a row; a directory that is a
    # link to another run's directory is that run (counted once, under the real name).
    write_result(tmp_path, "cpu_ce-seed0", "cpu_ce-seed0", 0, 50.0)
    write_result(tmp_path, "cpu_ce-seed1", "cpu_ce-seed1", 1, 54.0)
    write_result(tmp_path, "teacher_x_plain", "teacher_x_plain", 0, 57.7)
    os.symlink("teacher_x_plain", tmp_path / "teacher_x")
    groups = experiments.collect(str(tmp_path))
    assert sorted(groups) == ["cpu_ce", "teacher_x_plain"]
    rows = {line.split(" | ")[0].strip("| "): line for line in experiments.report(str(tmp_path)).splitlines()[2:]}
    ce = rows["cpu_ce"].split(" | ")
    assert ce[3] == "66.85"                                      # the paper's number for the CE cell
    assert ce[4] == "52.00 ± 2.83"                               # mean 52, std sqrt(8) = 2.83
    assert ce[5] == "47.00 ± 2.83"                               # 12 px: 5 points lower in both
    assert ce[-2] == "101" and ce[-3] == "10000 / 10000"          # mean wall time; data sizes
