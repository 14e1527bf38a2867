"""study.py: the statistics behind the study's verdicts, against textbook values.

Oracles: Student's t table (t(0.975, df) for df 1..10), the Cauchy distribution (t with one
degree of freedom), the closed form of t with two degrees of freedom, the normal approximation
of a t-test's power at many degrees of freedom, and Holm's procedure worked by hand.
"""
import json
import math

import pytest

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
