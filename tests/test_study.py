"""study.py: the report tables and the statistics behind the study's verdicts.

Oracles: Student's t table (t(0.975, df) for df 1..10), the Cauchy distribution (t with one
degree of freedom), the closed form of t with two degrees of freedom, the normal approximation
of a t-test's power at many degrees of freedom, Holm's procedure, the exact binomial of
McNemar's test, means and standard deviations over seeds and paired differences, all by hand.
"""
import json
import math
import os

import pytest

import irkd
import study

# t(0.975, df), df = 1..10, from a printed table of Student's t
T_TABLE = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


@pytest.mark.parametrize("df", range(1, 11))
def test_t_quantile_matches_the_printed_table(df):
    assert abs(study.t_quantile(0.975, df) - T_TABLE[df - 1]) < 2e-3


def test_t_cdf_cauchy_and_symmetry():
    # df 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 0.75
    assert abs(study.t_cdf(1.0, 1) - 0.75) < 1e-4
    assert abs(study.t_cdf(0.0, 7) - 0.5) < 1e-6
    assert abs(study.t_cdf(-1.3, 4) + study.t_cdf(1.3, 4) - 1) < 1e-6


# Oracle: with df = 2, P(|T| > t) = 1 - t / sqrt(2 + t^2) in closed form.
def test_paired_t_p_closed_form_df2():
    diffs = [3.02, 2.31, 3.47]
    m = sum(diffs) / 3
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 2)
    t = m / (sd / math.sqrt(3))
    assert abs(study.paired_t_p(diffs) - (1 - t / math.sqrt(2 + t * t))) < 1e-4


# Oracle: at many degrees of freedom the t-test is the z-test: power = Phi(lam - 1.96) +
# Phi(-lam - 1.96); lam = 2.8 gives 0.80.
def test_power_tends_to_the_normal_approximation():
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    for lam in (1.0, 2.8, 4.0):
        want = phi(lam - 1.95996) + phi(-lam - 1.95996)
        assert abs(study.t_power(lam, 2000) - want) < 2e-3
    assert abs(study.t_power(0.0, 5) - 0.05) < 1e-3          # no difference: the test's level


def test_detectable_and_seeds_needed_are_consistent():
    # the smallest difference detected with 80 % power has power 0.8, exactly
    se, n = 0.345, 3
    delta = study.detectable(se, n)
    assert abs(study.t_power(delta / se, n - 1) - 0.8) < 1e-3
    # seeds_needed is the first n with power >= 0.8; one seed fewer falls short
    need = study.seeds_needed(0.5, 0.6)
    assert study.t_power(0.5 / (0.6 / math.sqrt(need)), need - 1) >= 0.8
    assert study.t_power(0.5 / (0.6 / math.sqrt(need - 1)), need - 2) < 0.8


# Oracle: Holm by hand. Sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept
# monotone at 0.06; back in the given order.
def test_holm_by_hand():
    assert study.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert study.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_dirty_start_shows_in_the_commit_column(tmp_path):
    d = tmp_path / "study_ce"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(commit="1234567abc-dirty")))
    r = dict(commit="89abcdef00", _dir=str(d))
    assert study.commits(r) == {"1234567-dirty", "89abcde"}
    r = dict(commit="89abcdef00", _dir=str(d),
             starts=[dict(commit="1111111aa", after_epoch=0), dict(commit="2222222bb-dirty",
                                                                  after_epoch=5)])
    assert study.commits(r) == {"1111111", "2222222-dirty", "89abcde"}


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
    # seed by seed: KD+CL ran seed 0 only
    assert "| study_kd | 70.00 (1) | 80.00 (1) |" in text
    assert "| study_kd_cl | 90.00 (1) | – |" in text


# Oracle: by hand. The conv teacher predicts class 1 on all 10 images; KD's seed 0 does on 7
# of them, seed 1 on 9 -> 70 % and 90 % equal, 80.00 ± 14.14; the last epoch's KD term 0.2 and
# 0.4 -> 0.300 ± 0.141 (the first epoch's 0.5 is not read); CE has no KD term.
def test_teacher_fit_reads_the_last_kd_term_and_agreement_with_the_conv_teacher(tmp_path):
    fake_study_run(tmp_path, study.STUDY_CONV_TEACHER.name, 0, 10)
    for seed, (right, kd) in enumerate([(7, 0.2), (9, 0.4)]):
        fake_study_run(tmp_path, "study_kd", seed, right)
        log = tmp_path / ("study_kd" if seed == 0 else f"study_kd-seed{seed}") / "log.jsonl"
        log.write_text(json.dumps(dict(epoch=1, kd=0.5)) + "\n" + json.dumps(dict(epoch=2, kd=kd)))
    fake_study_run(tmp_path, "study_ce", 0, 5)
    text = study.teacher_fit_table(study.collect(str(tmp_path)))
    assert "| study_kd (KD) | 0,1 | 0.300 ± 0.141 | 80.00 ± 14.14 |" in text
    assert "| study_ce (CE) | 0 | – | 50.00 |" in text


# Oracle: the accuracy each flip run recorded, written by the test; the row comes right after
# the conv teacher's own, and not at all without a flip run.
def test_the_flip_averaged_teacher_row_reads_what_the_flip_runs_measured(tmp_path):
    fake_study_run(tmp_path, study.STUDY_CONV_TEACHER.name, 0, 9)
    fake_study_run(tmp_path, "study_kd_conv", 0, 6)
    assert "flip-averaged: teacher.FlipAveraged" not in study.study_report(str(tmp_path))
    fake_study_run(tmp_path, "study_kd_convflip", 0, 7)
    path = tmp_path / "study_kd_convflip" / "results.json"
    r = json.loads(path.read_text())
    path.write_text(json.dumps(r | dict(teacher=dict(flip=True, test_acc_flip=91.25))))
    lines = study.study_report(str(tmp_path)).splitlines()
    i = next(i for i, line in enumerate(lines)
             if line.startswith("| teacher_conv_12ep (teacher (conv)) "))
    assert lines[i + 1].startswith("| teacher_conv_12ep (teacher (conv), flip-averaged: "
                                   "teacher.FlipAveraged) | – | 91.25 |")
    assert len(lines[i + 1].split("|")) == len(lines[i].split("|"))     # as many columns


# Oracle: a textbook t-table, two-sided 95 % (t(0.975, df) for df = 1..10, to 3 decimals).
# Differences with mean 100 and sample sd 100 sqrt(n) have standard error 100, so verdict's
# interval is [100 - 100 t, 100 + 100 t]: its printed ends give t to 0.0006 (the table's own
# rounding, 0.0005, included).
T_TEXTBOOK = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


@pytest.mark.parametrize("df", range(1, 11))
def test_verdict_uses_the_textbook_t_table(df):
    n = df + 1
    centred = [i - (n - 1) / 2 for i in range(n)]               # mean 0, sample sd s
    s = (sum(c * c for c in centred) / (n - 1)) ** 0.5
    diffs = [100 + c * 100 * n ** 0.5 / s for c in centred]     # mean 100, sd 100 sqrt(n)
    interval, word = study.verdict(diffs, None)
    lo, hi = (float(v) for v in interval.strip("[]").split(", "))
    t = T_TEXTBOOK[df - 1]
    assert lo == pytest.approx(100 - 100 * t, abs=0.06)
    assert hi == pytest.approx(100 + 100 * t, abs=0.06)


# Oracle: the rule written above CLAIMS, worked by hand on chosen differences, with the
# interval mean -+ t(0.975, n-1) * sd / sqrt(n) computed by hand (sd: the sample sd):
#   [1, 1.2, 0.9]:  mean 1.0333, sd 0.15275, t 4.303 -> half 0.3795 -> [+0.65, +1.41]
#   [0.2, -0.2, 0.1]: mean 0.0333, sd 0.20817 -> half 0.5172 -> [-0.48, +0.55]; +0.55 < 8 / 5
#   [2, -1, 1]:  mean 0.6667, sd 1.52753 -> half 3.7949 -> [-3.13, +4.46]
#   [1, 3]:      mean 2, sd 1.41421, t 12.706 -> half 12.706 -> [-10.71, +14.71]
#   [1 .. 6]:    mean 3.5, sd 1.87083, t 2.571 -> half 1.9636 -> [+1.54, +5.46]
#   [0 .. 10]:   mean 5, sd sqrt(11), t 2.228 -> half 2.228 -> [+2.77, +7.23]
@pytest.mark.parametrize("diffs, paper, interval, expected", [
    ([1.0, 1.2, 0.9], 8.0, "[+0.65, +1.41]", "holds"),
    ([-1.0, -1.2, -0.9], 8.0, "[-1.41, -0.65]", "does not hold: the other way round"),
    ([0.2, -0.2, 0.1], 8.0, "[-0.48, +0.55]", "does not hold at the paper's size: at most +0.55"),
    ([2.0, -1.0, 1.0], 1.0, "[-3.13, +4.46]", "not resolved at this power"),
    ([1.0, 3.0], 8.0, "[-10.71, +14.71]", "not resolved at this power"),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 8.0, "[+1.54, +5.46]", "holds"),
    ([float(v) for v in range(11)], 8.0, "[+2.77, +7.23]", "holds"),
    ([3.0], 8.0, "one seed: none", "not resolved: one seed"),
])
def test_verdict_rule(diffs, paper, interval, expected):
    got_interval, word = study.verdict(diffs, paper)
    assert word.startswith(expected)
    assert got_interval == interval


# The paper's size beside the verdict: [+0.65, +1.41] lies entirely below 8 ("holds", and
# smaller than the paper's) but not below 1; [-3.13, +4.46] includes 0 and lies below 8
# (not resolved, smaller than the paper's) but not below 4; with no size given nothing is added.
def test_verdict_says_when_the_interval_lies_below_the_papers_size():
    assert study.verdict([1.0, 1.2, 0.9], 8.0)[1] == "holds; smaller than the paper's +8.00"
    assert study.verdict([1.0, 1.2, 0.9], 1.0)[1] == "holds"
    assert study.verdict([1.0, 1.2, 0.9], None)[1] == "holds"
    assert study.verdict([2.0, -1.0, 1.0], 8.0)[1].endswith("; smaller than the paper's +8.00")
    assert "smaller" not in study.verdict([2.0, -1.0, 1.0], 4.0)[1]


def test_cell_report_puts_paper_replay_and_default_side_by_side(tmp_path):
    for name, acc, quick in (("orig_custom_p2_ce", 30.0, True), ("custom_p2_ce", 61.0, False)):
        d = tmp_path / ("quick" if quick else "") / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(dict(
            name=name, seed=0, test_acc=acc, quick=quick, select="best", best_epoch=4,
            epochs=6, test_head="cls")))
    row = study.cell_report(str(tmp_path)).splitlines()[2]
    assert row == ("| orig_custom_p2_ce | custom_p2_ce | 66.85 | 30.00 (quick) | best (ep 4), cls "
                   "| 61.00 | best (ep 4), cls |")


# Oracle: the notebooks' own records: P_2_OUR_STUDENT_SAL_MAP's 78.72 is the validation accuracy
# after epoch 54 (no test ran); P_4_ALL's Markdown printed 73.58 / 79.80 (the table: 74.00 / 79.67)
def test_cell_report_compares_what_the_paper_printed(tmp_path):
    for name, extra in (("orig_custom_p2_kd_cl_sal", dict(val_acc=70.5, epochs=54)),
                        ("orig_tiny_p4_cl", dict(select="last_stage_best", selected_epoch=63))):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(dict(
            dict(name=name, seed=0, test_acc=40.0, quick=False, test_head="cls"), **extra)))
    rows = {line.split(" | ")[0][2:]: line for line in study.cell_report(str(tmp_path)).splitlines()}
    assert rows["orig_custom_p2_kd_cl_sal"].startswith(
        "| orig_custom_p2_kd_cl_sal | custom_p2_kd_cl_sal | 78.72 | 70.50 | last (ep 54), cls; "
        "validation accuracy after epoch 54")
    assert rows["orig_tiny_p4_cl"].startswith(
        "| orig_tiny_p4_cl | tiny_p4_cl | 79.67 (79.80) | 40.00 | last_stage_best (ep 63), cls |")
    assert "| tiny_p4_ce | 74.00 (73.58) | – |" in rows["orig_tiny_p4_ce"]
