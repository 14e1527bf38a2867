"""experiments.py: the command line (list, usage, unknown names, bad overrides), the named
variants and groups of the study, configs_for (overrides, --quick), and the report table.
Nothing here trains or reads data: every call fails or stops before that (the fixture
conftest.no_data_no_training makes loading data or training an error).

Oracles: the design of the named variants written out by hand (DESIGN below); the paper's
numbers printed beside the cells; the error text naming the bad field; mean and sample
standard deviation over seeds computed by hand for the report.
"""
import json
import statistics
import os

import pytest

import data as data_lib
import train as train_lib
import study
import experiments
import irkd
import runs
import teacher as teacher_lib
from conftest import make_data

pytestmark = pytest.mark.usefixtures("no_data_no_training")

# The named variants as designed: name -> (student preset, patch size, kd, cl, sal).
DESIGN = {
    "exp1a": ("custom", 4, True, True, False),
    "exp1b": ("custom", 4, True, True, True),
    "saliency_p2": ("tiny", 2, True, True, True),
    "kdonly": ("tiny", 2, True, False, False),
}

# The small_p4_all group: every (kd, cl, sal) setup of the study, once.
SMALL_P4_ALL_SETUPS = {(False, False, False), (False, True, False), (True, False, False),
                       (True, True, False), (True, True, True)}


def test_list_prints_every_name(capsys):
    assert experiments.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list(experiments.EXPERIMENTS) + list(experiments.GROUPS) + list(experiments.NAMED):
        assert name in out
    for name, *_ in experiments.TABLE:
        assert name in out
    assert "66.85" in out and "84.29" in out                 # the paper numbers beside the cells


def test_named_variants_match_the_design():
    E = experiments.EXPERIMENTS
    for name, (model, patch, kd, cl, sal) in DESIGN.items():
        c = E[name]
        assert (c.model, c.patch_size, c.kd, c.cl, c.sal) == (model, patch, kd, cl, sal), name
        c.check()


def test_groups_match_the_design():
    E = experiments.EXPERIMENTS
    group = [E[n] for n in experiments.GROUPS["small_p4_all"]]
    assert {(c.kd, c.cl, c.sal) for c in group} == SMALL_P4_ALL_SETUPS
    assert all(c.model == "tiny" and c.patch_size == 4 for c in group)
    # 13 students + 2 teachers, and the custom column again at the paper's patch 2
    assert len(experiments.GROUPS["table"]) == 20
    p2 = [E[n] for n in experiments.GROUPS["table"] if n.startswith("custom_p2_")]
    assert len(p2) == 5 and all(c.patch_size == 2 and c.model == "custom" for c in p2)
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
    overrides = runs.parse_overrides(["--resolutions=12,18"], train_lib.RunConfig)
    (cfg,) = experiments.configs_for("saliency_p2", overrides)
    assert cfg.resolutions == (12, 18)


def test_configs_for_applies_overrides_and_quick():
    (cfg,) = experiments.configs_for("exp1b", {"lr": 1e-3, "seed": 3})
    # another seed runs in its own directory: it never resumes or overwrites the seed-0 run
    assert (cfg.name, cfg.lr, cfg.seed, cfg.kd, cfg.sal) == ("exp1b-seed3", 1e-3, 3, True, True)
    assert experiments.EXPERIMENTS["exp1b"].lr == 3e-4             # the table itself is untouched
    cfgs = experiments.configs_for("small_p4_all", {"quick": True, "out": "elsewhere"})
    assert [c.name for c in cfgs] == experiments.GROUPS["small_p4_all"]
    for c in cfgs:
        assert c.quick and c.out == "elsewhere/quick" and 0 < c.train_size < 45000
        assert c.epochs == len(c.resolutions)                      # one epoch per stage
        c.check()


# ----------------------------------------------------------------------------- report

def write_result(root, dirname, name, seed, acc, quick=False):
    os.makedirs(root / dirname, exist_ok=True)
    by_res = {str(r): acc - (32 - r) / 4 for r in irkd.RESOLUTIONS}
    with open(root / dirname / "results.json", "w") as f:
        json.dump(dict(name=name, seed=seed, test_acc=acc, test_acc_by_res=by_res, quick=quick,
                       train_images=10000, test_images=10000, wall_s=100.0 + 2 * seed,
                       device="cpu (test)"), f)


def test_report_mean_std_over_seeds_and_links(tmp_path):
    # Oracle: mean and sample std by hand. Seeds of one cell share a row; a directory that is
    # a link to another run's directory is that run (counted once, under the real name).
    write_result(tmp_path, "custom_p4_ce-seed0", "custom_p4_ce-seed0", 0, 50.0)
    write_result(tmp_path, "custom_p4_ce-seed1", "custom_p4_ce-seed1", 1, 54.0)
    write_result(tmp_path, "teacher_x_plain", "teacher_x_plain", 0, 57.7)
    os.symlink("teacher_x_plain", tmp_path / "teacher_x")
    groups = study.collect(str(tmp_path))
    assert sorted(groups) == ["custom_p4_ce", "teacher_x_plain"]
    lines = study.report(str(tmp_path)).splitlines()[2:]
    rows = {line.split(" | ")[0].strip("| "): line for line in lines}
    ce = rows["custom_p4_ce"].split(" | ")
    assert ce[3] == "66.85"                              # the paper's number for the CE cell
    assert ce[4] == "52.00 ± 2.83"                               # mean 52, std sqrt(8) = 2.83
    assert ce[5] == "last, cls"                                  # how the number was selected
    assert ce[6] == "47.00 ± 2.83"                               # 12 px: 5 points lower in both
    assert ce[-2] == "101" and ce[-3] == "10000 / 10000"         # mean wall time; data sizes


def test_another_seed_gets_its_own_directory():
    cfg = experiments.EXPERIMENTS["exp1b"]
    assert experiments.seeded(cfg, 0).name == "exp1b"
    assert experiments.seeded(cfg, 2).name == "exp1b-seed2"
    assert experiments.seeded(experiments.seeded(cfg, 2), 1).name == "exp1b-seed1"
    teacher = experiments.EXPERIMENTS["teacher_small_p4"]
    assert experiments.seeded(teacher, 3) == teacher          # trained once


def test_too_few_images_is_refused_before_any_teacher_trains(monkeypatch, capsys):
    monkeypatch.setattr(data_lib, "load_cifar10", lambda root: make_data(5000 + 100, 20))
    monkeypatch.setattr(teacher_lib, "train_teacher", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(train_lib, "train", lambda *a, **k: pytest.fail("trained"))
    assert experiments.main(["exp1a", "--train_size=100", "--device=cpu"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


# Oracle: the exact binomial by hand. 10 discordant pairs all one way: p = 2 / 2**10;
# 5 against 2: p = 2 * (1 + 7 + 21) / 2**7.
def test_mcnemar_exact_p():
    assert study.mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 2 ** 10)
    a, b = [True] * 5 + [False] * 2, [False] * 5 + [True] * 2
    assert study.mcnemar_p(a, b) == pytest.approx(2 * 29 / 2 ** 7)
    assert study.mcnemar_p([True, False], [True, False]) == 1.0


def fake_study_run(out, name, seed, right):
    """A finished study run whose last-epoch cls predictions are right on `right` of 10 images."""
    d = out / (name if seed == 0 else f"{name}-seed{seed}")
    d.mkdir(parents=True)
    preds = "".join("1" if i < right else "0" for i in range(10))
    heads = {"cls": {str(r): 10.0 * right for r in irkd.RESOLUTIONS}}
    (d / "results.json").write_text(json.dumps(dict(
        name=d.name, seed=seed, heads=heads, heads_last=heads, heads_best=heads, train_s=1.0,
        test_acc=10.0 * right, quick=False, commit="abc")))
    (d / "predictions.json").write_text(json.dumps(dict(labels="1" * 10, last={"cls": preds})))


# Oracle: differences by hand. KD - CE per seed: +20, +40 -> mean +30; t(0.975, 1) = 12.706,
# sd 14.14, so the interval is 30 -+ 12.706 * 14.14 / sqrt(2) = [-97.06, +157.06].
def test_study_report_pairs_by_seed(tmp_path):
    for seed, (kd, ce) in enumerate([(7, 5), (8, 4)]):
        fake_study_run(tmp_path, "study_kd", seed, kd)
        fake_study_run(tmp_path, "study_ce", seed, ce)
    fake_study_run(tmp_path, "study_kd_cl", 0, 9)              # no seed-0 KD+CL+Sal: not run
    text = study.study_report(str(tmp_path))
    row = next(line for line in text.splitlines() if line.startswith("| KD - CE"))
    assert "| 0,1 | 75.00 | 45.00 | +30.00 | [-97.06, +157.06] |" in row
    assert "not run yet" in next(line for line in text.splitlines() if "Sal - KD+CL" in line)
    # the claims table reuses the comparison: KD > CE, interval across 0, half-width 127 points
    claim = next(line for line in text.splitlines() if line.startswith("| distillation beats"))
    assert "| +9.85 | +30.00 | [-97.06, +157.06] | 0,1 | not resolved at this power" in claim
    # every resolution: fake_study_run gives each the same accuracy, so +30.00 at all six
    row = [line for line in text.splitlines() if line.startswith("| KD - CE |")]
    assert row == ["| KD - CE | 0,1 | " + " | ".join(["+30.00"] * 6) + " |"]


# Oracle: the rule written above CLAIMS, worked by hand on chosen differences.
@pytest.mark.parametrize("diffs, paper, expected", [
    ([1.0, 1.2, 0.9], 8.0, "holds"),                           # interval [+0.65, +1.41]
    ([-1.0, -1.2, -0.9], 8.0, "does not hold: the other way round"),
    ([0.2, -0.2, 0.1], 8.0, "does not hold at the paper's size"),   # at most +0.55 < 8 / 5
    ([2.0, -1.0, 1.0], 1.0, "not resolved at this power"),
    ([3.0], 8.0, "not resolved: one seed"),
])
def test_verdict_rule(diffs, paper, expected):
    interval, word = study.verdict(diffs, paper)
    assert word.startswith(expected)
    if len(diffs) >= 2:           # the interval is the t-interval: mean -+ t * sd / sqrt(n)
        half = study.T975[len(diffs) - 2] * statistics.stdev(diffs) / len(diffs) ** 0.5
        m = statistics.mean(diffs)
        assert interval == f"[{m - half:+.2f}, {m + half:+.2f}]"


def test_the_replays_say_what_they_replay():
    for name, (cell, _, patch, setup, _) in experiments.REPLAY.items():
        cfg = experiments.EXPERIMENTS[name]
        assert experiments.PAPER[name] == experiments.PAPER[cell] and cfg.head == "cls"
        assert cfg.resize_mode == "crop" and cfg.patch_size == patch
        assert ((cfg.augment == "none") == (setup == "CE")
                and (cfg.patience > 0) == ("KD" not in setup))
    assert experiments.EXPERIMENTS["orig_teacher_small_p4"].name == "teacher_small_p4_orig"


def test_quick_mode_recomputes_heavy_students_only():
    quick = {n: experiments.configs_for(n, {"quick": True})[0] for n in
             ("exp1a", "saliency_p2", "kdonly", "orig_tiny_p2_kd_cl_sal")}
    assert not quick["exp1a"].checkpoint                      # the reference stays as it was
    assert quick["saliency_p2"].checkpoint and quick["kdonly"].checkpoint
    assert not quick["orig_tiny_p2_kd_cl_sal"].checkpoint    # probe: second order, refused
    # every heavy student runs in chunks of 16 images; the reference keeps the plain step
    assert quick["exp1a"].micro_batch == 0
    assert all(quick[n].micro_batch == 16 for n in ("saliency_p2", "kdonly",
                                                     "orig_tiny_p2_kd_cl_sal"))


def test_cell_report_puts_paper_replay_and_default_side_by_side(tmp_path):
    for name, acc, quick in (("orig_custom_p2_ce", 30.0, True), ("custom_p2_ce", 61.0, False)):
        d = tmp_path / ("quick" if quick else "") / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(dict(
            name=name, seed=0, test_acc=acc, quick=quick, select="best", best_epoch=4,
            epochs=6, test_head="cls")))
    row = study.cell_report(str(tmp_path)).splitlines()[2]
    assert row == ("| custom_p2_ce | 66.85 | 30.00 (quick) | best (ep 4), cls | 61.00 | "
                   "best (ep 4), cls |")


def test_a_finished_run_is_skipped_not_trained_again(tmp_path, capsys):
    done = tmp_path / "quick" / "exp1a"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")                # a fresh clone: no checkpoint.pt
    assert experiments.main(["exp1a", "--quick", f"--out={tmp_path}"]) == 0   # no data loaded
    assert "exp1a: finished" in capsys.readouterr().out
