"""experiments.py: the command line (list, usage, unknown names, bad overrides), the named
variants and groups of the study, configs_for (overrides, --quick), and the report table.
Nothing here trains or reads data: every call fails or stops before that (the fixture
conftest.no_data_no_training makes loading data or training an error).

Oracles: the design of the named variants written out by hand (DESIGN below); the catalogue
`list` prints, transcribed by hand (LISTED); the replays' settings transcribed per cell from
docs/reproducing.md (REPLAYED); a textbook t-table and t-intervals computed by hand for the
verdicts; the error text naming the bad field; mean and sample standard deviation over seeds
computed by hand for the report.
"""

import pytest

import data as data_lib
import irkd
import train as train_lib
import experiments
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


# Oracle: the catalogue written out by hand (README's experiment table, docs/reproducing.md's
# Table 1 cells): every row `list` prints, as name -> (student preset, patch, paper %), with
# "–" where a cell has no paper number; nothing more, nothing less.
LISTED = {
    "exp1a": ("custom", 4, "77.12"), "exp1b": ("custom", 4, "78.72"),
    "saliency_p2": ("tiny", 2, "81.67"), "kdonly": ("tiny", 2, "82.28"),
    "tiny_p4_ce": ("tiny", 4, "74.00"), "tiny_p4_cl": ("tiny", 4, "79.67"),
    "tiny_p4_kd": ("tiny", 4, "81.35"), "tiny_p4_kd_cl": ("tiny", 4, "83.29"),
    "tiny_p4_kd_cl_sal": ("tiny", 4, "84.29"),
    "custom_p2_ce": ("custom", 2, "66.85"), "custom_p2_cl": ("custom", 2, "74.89"),
    "custom_p2_kd": ("custom", 2, "76.70"), "custom_p2_kd_cl": ("custom", 2, "77.12"),
    "custom_p2_kd_cl_sal": ("custom", 2, "78.72"),
    "custom_p4_ce": ("custom", 4, "66.85"), "custom_p4_cl": ("custom", 4, "74.89"),
    "custom_p4_kd": ("custom", 4, "76.70"), "tiny_p2_kd_cl": ("tiny", 2, "79.92"),
    "teacher_small_p4": ("small", 4, "86.00"), "teacher_small_p2": ("small", 2, "82.95"),
    "orig_custom_p2_ce": ("custom", 2, "66.85"), "orig_custom_p2_cl": ("custom", 2, "74.89"),
    "orig_custom_p2_kd": ("custom", 2, "76.70"), "orig_custom_p2_kd_cl": ("custom", 2, "77.12"),
    "orig_custom_p2_kd_cl_sal": ("custom", 2, "78.72"),
    "orig_tiny_p2_kd": ("tiny", 2, "82.28"), "orig_tiny_p2_kd_cl": ("tiny", 2, "79.92"),
    "orig_tiny_p2_kd_cl_sal": ("tiny", 2, "81.67"),
    "orig_tiny_p4_ce": ("tiny", 4, "74.00"), "orig_tiny_p4_cl": ("tiny", 2, "79.67"),
    "orig_tiny_p4_cl_md": ("tiny", 4, "79.67"),
    "orig_tiny_p4_kd": ("tiny", 4, "81.35"), "orig_tiny_p4_kd_cl": ("tiny", 4, "83.29"),
    "orig_tiny_p4_kd_cl_sal": ("tiny", 4, "84.29"),
    "orig_teacher_small_p4": ("small", 4, "86.00"), "orig_teacher_small_p2": ("small", 2, "82.95"),
    "study_ce": ("custom", 4, "–"), "study_ce_noaug": ("custom", 4, "–"),
    "study_cl": ("custom", 4, "–"), "study_cl_crop": ("custom", 4, "–"),
    "study_kd": ("custom", 4, "–"), "study_kd_cl": ("custom", 4, "–"),
    "study_kd_cl_sal": ("custom", 4, "–"), "teacher_custom_p4_30ep": ("custom", 4, "–"),
    "study_kd_conv": ("custom", 4, "–"), "study_kd_cl_conv": ("custom", 4, "–"),
    "study_kd_convflip": ("custom", 4, "–"), "study_kd_cl_convflip": ("custom", 4, "–"),
    "teacher_conv_12ep": ("conv", 4, "–"),
    "tiny_p4_kd_cl_sal_fullres": ("tiny", 4, "–"), "tiny_p4_kd_cl_sal_carryopt": ("tiny", 4, "–"),
    "tiny_p4_kd_cl_sal_grad": ("tiny", 4, "–"),
}
LISTED_GROUPS = {"small_p4_all", "table", "beyond", "study", "original"}


def test_list_prints_the_catalogue_written_out_by_hand(capsys):
    assert experiments.main(["list"]) == 0
    out = capsys.readouterr().out
    head, groups, named = out.strip().split("\n\n")
    rows = {}
    for line in head.splitlines()[1:]:                 # after the header line
        name, student, patch, paper, *_ = line.split()
        rows[name] = (student, int(patch), paper)
    assert rows == LISTED
    assert {line.split(" = ")[0].strip() for line in groups.splitlines()} == LISTED_GROUPS
    assert named.strip() == "named variants: exp1a, exp1b, saliency_p2, kdonly, small_p4_all"


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


# Oracle: the ranges as the issue states them, one line each: each number is refused before
# any work, naming the field and its valid range, exit status 2, no run directory written.
@pytest.mark.parametrize("arg, message", [
    ("--temperature=0", "temperature=0.0 is out of range; valid: (0, inf)"),
    ("--alpha=2", "alpha=2.0 is out of range; valid: [0, 1]"),
    ("--gamma=-1", "gamma=-1.0 is out of range; valid: [0, inf)"),
    ("--dropout=1.5", "dropout=1.5 is out of range; valid: [0, 1)"),
    ("--resolutions=32,12", "resolutions=32,12: increasing, each between patch_size=4 and 32 px"),
    ("--lr=0", "lr=0.0 is out of range; valid: (0, inf)"),
    ("--weight_decay=-1", "weight_decay=-1.0 is out of range; valid: [0, inf)"),
    ("--train_size=-5", "train_size=-5 is out of range; valid: [0, inf)"),
    ("--label_smoothing=2", "label_smoothing=2.0 is out of range; valid: [0, 1)"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, arg, message):
    assert experiments.main(["exp1a", "--quick", arg, f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: config 'exp1a': {message}"
    assert not (tmp_path / "out").exists()


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


def test_another_seed_gets_its_own_directory():
    cfg = experiments.EXPERIMENTS["exp1b"]
    assert runs.seeded(cfg, 0).name == "exp1b"
    assert runs.seeded(cfg, 2).name == "exp1b-seed2"
    assert runs.seeded(runs.seeded(cfg, 2), 1).name == "exp1b-seed1"
    teacher = experiments.EXPERIMENTS["teacher_small_p4"]
    assert runs.seeded(teacher, 3) == teacher          # trained once


def test_too_few_images_is_refused_before_any_teacher_trains(monkeypatch, capsys):
    monkeypatch.setattr(data_lib, "load_cifar10", lambda root: make_data(5000 + 100, 20))
    monkeypatch.setattr(teacher_lib, "train_teacher", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(train_lib, "train", lambda *a, **k: pytest.fail("trained"))
    assert experiments.main(["exp1a", "--train_size=100", "--device=cpu"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


# Oracle: the notebooks (Soobiwan/IRKD 0a27c9f), transcribed by hand per cell from
# docs/reproducing.md "The notebooks, item by item", not from experiments.py. Per cell: paper %,
# notebook cell, student, patch, setup, augment, erasing p / largest area, AdamW fresh per stage,
# stopping (patience, reload of the stage's best, tested weights), epochs (per stage where
# uneven), the epoch it stopped at (0: ran to the end), saliency, hidden / attention dropout,
# teacher recipe. Shared by every replay: the class-token head, the cropping curriculum, lr 3e-4,
# wd 1e-4, batch 128, the notebooks' split, the notebooks' student (HF ViT, ViTWithDistillation).
NB = dict(fresh=True, aug="crop_flip", erase=(0.0, 0.33), stop=(0, False, "last"), epochs=60,
          stages=(), cut=0, sal="rollout", drop=(0.0, 0.0), recipe="default")
NOTEBOOKS = {
    # P_2_OUR_STUDENT cell 14: 60 epochs, no patience, best validation reloaded; no augmentation
    "orig_custom_p2_ce": NB | dict(paper=66.85, model=("custom", 2, "CE"), aug="none",
                                   stop=(0, False, "best")),
    # cell 8: patience 3 per stage, the stage's best reloaded, the 32-px stage's best tested
    "orig_custom_p2_cl": NB | dict(paper=74.89, model=("custom", 2, "CL"), fresh=False,
                                   stop=(3, True, "last_stage_best")),
    # cell 17: patience 5, last weights
    "orig_custom_p2_kd": NB | dict(paper=76.70, model=("custom", 2, "KD"), stop=(5, False, "last")),
    # cell 3: patience 3 per stage, fresh AdamW, no reload
    "orig_custom_p2_kd_cl": NB | dict(paper=77.12, model=("custom", 2, "KD+CL"),
                                      stop=(3, False, "last")),
    # P_2_OUR_STUDENT_SAL_MAP cell 1: probe saliency, one AdamW, crashed after epoch 54
    "orig_custom_p2_kd_cl_sal": NB | dict(paper=78.72, model=("custom", 2, "KD+CL+Sal"),
                                          fresh=False, cut=54, sal="probe"),
    # P_2_KD_ONLY cells 1-4: AutoAugment, RandomErasing(0.2, scale=(0.02, 0.2)), ~59.4 epochs
    "orig_tiny_p2_kd": NB | dict(paper=82.28, model=("tiny", 2, "KD"), aug="crop_flip_aa",
                                 erase=(0.2, 0.2), cut=59, drop=(0.1, 0.1)),
    # P_2_KD_CL cell 1: one AdamW, stopped by hand after 57 epochs
    "orig_tiny_p2_kd_cl": NB | dict(paper=79.92, model=("tiny", 2, "KD+CL"), fresh=False, cut=57,
                                    drop=(0.1, 0.1)),
    # P_2_SaliencyMap cell 1: probe saliency at 12 layers, one AdamW, no early stopping
    "orig_tiny_p2_kd_cl_sal": NB | dict(paper=81.67, model=("tiny", 2, "KD+CL+Sal"), fresh=False,
                                        sal="probe", drop=(0.1, 0.1)),
    # P_4_ALL cell 1: 60 epochs, no patience, best reloaded, no augmentation; attention dropout
    # not set (HF's 0)
    "orig_tiny_p4_ce": NB | dict(paper=74.00, model=("tiny", 4, "CE"), aug="none",
                                 stop=(0, False, "best"), drop=(0.1, 0.0), recipe="original"),
    # cell 3: the code is patch 2 with 15 epochs at 24 px; the CL stopping rule
    "orig_tiny_p4_cl": NB | dict(paper=79.67, model=("tiny", 2, "CL"), fresh=False,
                                 stop=(3, True, "last_stage_best"), epochs=65,
                                 stages=(10, 10, 10, 15, 10, 10), drop=(0.1, 0.0),
                                 recipe="original"),
    # cell 2's Markdown: patch 4, 6 x 10
    "orig_tiny_p4_cl_md": NB | dict(paper=79.67, model=("tiny", 4, "CL"), fresh=False,
                                    stop=(3, True, "last_stage_best"), drop=(0.1, 0.0),
                                    recipe="original"),
    # cell 8: its patience lines are commented out
    "orig_tiny_p4_kd": NB | dict(paper=81.35, model=("tiny", 4, "KD"), drop=(0.1, 0.0),
                                 recipe="original"),
    # cells 11 and 14: patience 3 per stage active, fresh AdamW, no reload; 14: attention saliency
    "orig_tiny_p4_kd_cl": NB | dict(paper=83.29, model=("tiny", 4, "KD+CL"),
                                    stop=(3, False, "last"), drop=(0.1, 0.0), recipe="original"),
    "orig_tiny_p4_kd_cl_sal": NB | dict(paper=84.29, model=("tiny", 4, "KD+CL+Sal"),
                                        stop=(3, False, "last"), sal="attn", drop=(0.1, 0.0),
                                        recipe="original"),
}


def test_every_replay_runs_what_its_notebook_ran():
    assert set(experiments.REPLAY) == set(NOTEBOOKS)
    for name, nb in NOTEBOOKS.items():
        c = experiments.EXPERIMENTS[name]
        flags = nb["model"][2].split("+")
        got = dict(paper=experiments.PAPER[name], model=(c.model, c.patch_size, nb["model"][2]),
                   fresh=c.fresh_optimizer, aug=c.augment, erase=(c.erasing, c.erasing_area),
                   stop=(c.patience, c.reload_best, c.select), epochs=c.epochs,
                   stages=c.stage_epochs, cut=c.stop_epoch, sal=c.saliency,
                   drop=(c.dropout, c.attn_dropout), recipe=c.teacher_recipe)
        assert got == nb, name
        assert (c.kd, c.cl, c.sal) == ("KD" in flags, "CL" in flags, "Sal" in flags), name
        assert (c.head, c.resize_mode, c.lr, c.weight_decay, c.batch_size, c.split, c.arch) == \
            ("cls", "crop", 3e-4, 1e-4, 128, "notebooks", "notebook"), name
        c.check()
        # the cut-short and uneven runs train the epochs that ran
        ran = sum(e for _, e in c.stages())
        assert (c.stop_epoch or ran) == (nb["cut"] or sum(nb["stages"]) or 60), name
    assert experiments.EXPERIMENTS["orig_teacher_small_p4"].name == "teacher_small_p4_nbsplit_orig"
    p4_teacher = experiments.EXPERIMENTS["orig_teacher_small_p4"]
    assert (p4_teacher.schedule, p4_teacher.arch, p4_teacher.dropout, p4_teacher.attn_dropout,
            p4_teacher.select, p4_teacher.split) == ("onecycle_torch", "notebook", 0.1, 0.1,
                                                     "best", "notebooks")


def test_every_replay_checks_in_quick_mode():
    for name in experiments.REPLAY:
        c = experiments.configs_for(name, {"quick": True})[0]
        c.check()
        assert c.stage_epochs == () and c.stop_epoch < c.epochs, name


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


def test_a_finished_run_is_skipped_not_trained_again(tmp_path, capsys):
    done = tmp_path / "quick" / "exp1a"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")                # a fresh clone: no checkpoint.pt
    assert experiments.main(["exp1a", "--quick", f"--out={tmp_path}"]) == 0   # no data loaded
    assert "exp1a: finished" in capsys.readouterr().out


# Oracle: probe saliency reads the teacher's blocks at the student's layers (all 12 for
# ViT-Tiny, saliency_variants.probe_layers); the quick teacher must have them, and every
# other quick cell keeps the one shared quick teacher.
def test_quick_probe_cells_get_a_teacher_as_deep_as_their_student():
    import saliency_variants
    for name in experiments.REPLAY:
        c = experiments.configs_for(name, {"quick": True})[0]
        if not c.kd:
            continue
        t = teacher_lib.teacher_config(c.teacher_patch or c.patch_size, quick=True, base=c)
        depth = irkd.PRESETS[t.model]["depth"]
        if c.sal and c.saliency == "probe":
            student_depth = irkd.PRESETS[c.model]["depth"]
            assert max(saliency_variants.probe_layers(student_depth)) < depth, name
        else:
            assert t.name == f"teacher_quick_p{c.patch_size}", name
    assert experiments.configs_for("orig_teacher_small_p4", {"quick": True})[0].name == \
        "teacher_quick_p4"
