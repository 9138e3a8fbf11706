"""The statistics every verdict rests on (bnlab.studies.stats), against scipy and by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from bnlab.studies.stats import ALPHA, compare, fmt, holm, summary

A = [0.80, 0.82, 0.79, 0.81, 0.83]
B = [0.84, 0.85, 0.83, 0.86, 0.88]


def test_sample_std_uses_ddof_1():
    s = summary([1.0, 2.0, 3.0])
    assert s.std == pytest.approx(1.0, rel=1e-15)  # population std would be 0.816
    assert math.isnan(summary([1.0]).std)


@pytest.mark.parametrize("paired", [True, False])
def test_p_value_and_interval_match_scipy(paired):
    c = compare(A, B, metric="test_acc", label="x", paired=paired)
    ref = sps.ttest_rel(B, A) if paired else sps.ttest_ind(B, A, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (c.low, c.high) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    assert c.test == ("paired t" if paired else "Welch t")
    assert c.diff == pytest.approx(sum(B) / 5 - sum(A) / 5, rel=1e-12)


def test_a_reversed_effect_flips_the_word():
    up = holm([compare(A, B, metric="test_acc", label="x", paired=True)])[0]
    down = holm([compare(B, A, metric="test_acc", label="x", paired=True)])[0]
    assert (up.word, down.word) == ("better", "worse")
    loss = holm([compare(A, B, metric="train_loss", label="x", paired=True,
                         higher_is_better=False)])[0]
    assert loss.word == "worse"  # a higher loss is worse
    # a metric without a good direction (a drift against its noise floor) says which way only
    neutral = holm([compare(A, B, metric="drift", label="x", paired=True,
                            higher_is_better=None), compare(B, A, metric="drift", label="x",
                                                            paired=True, higher_is_better=None)])
    assert [c.word for c in neutral] == ["higher", "lower"]
    assert neutral[0].record()["higher_is_better"] is None


def test_equal_arms_are_no_difference():
    c = holm([compare(A, list(A), metric="test_acc", label="x", paired=True)])[0]
    assert c.p == 1.0 and not c.clear and c.word == "no clear difference"
    noisy = holm([compare(A, [a + d for a, d in zip(A, [0.01, -0.01, 0.0, 0.005, -0.005],
                                                        strict=True)],
                          metric="test_acc", label="x", paired=False)])[0]
    assert noisy.word == "no clear difference"


def test_one_seed_is_never_clear():
    c = holm([compare([0.1], [0.9], metric="test_acc", label="x", paired=True)])[0]
    assert not c.testable and not c.clear and "1 seed" in c.word


def test_diverged_seeds_make_a_metric_untestable_not_noise():
    c = holm([compare(A, [0.3, math.nan, 0.3, 0.3, 0.3], metric="train_loss", label="x",
                      paired=True, higher_is_better=False)])[0]
    assert not c.clear and c.word.startswith("not testable") and "diverged" in c.word
    assert summary([1.0, math.inf]).text() == "diverged 1/2"
    assert math.isnan(summary([1.0, math.nan, 2.0]).mean)  # no order-dependent max/mean


def test_no_spread_uses_the_exact_test_never_an_infinite_t():
    # two arms completely separated: permutation p = 2 / C(6, 3) = 0.1, not 0
    c = compare([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], metric="m", label="x", paired=False)
    assert c.p == pytest.approx(0.1) and (c.low, c.high) == (1.0, 1.0)
    # paired differences that all agree (one test image of 5000 per seed): sign test
    two = compare([0.8, 0.81], [0.8002, 0.8102], metric="m", label="x", paired=True)
    assert two.p == pytest.approx(0.5) and not holm([two])[0].clear
    five = compare(A, [a + 0.0002 for a in A], metric="m", label="x", paired=True)
    assert five.p == pytest.approx(2 ** -4) and five.test.startswith("sign test")
    assert compare(A, list(A), metric="m", label="x", paired=False).p == 1.0


def test_holm_matches_a_hand_computation():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01, 0.03, 0.04 ->
    # 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06
    base = compare(A, B, metric="m", label="x", paired=True)
    from dataclasses import replace
    comps = [replace(base, p=p) for p in (0.01, 0.04, 0.03, 0.005)]
    assert [c.p_holm for c in holm(comps)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [c.clear for c in holm(comps)] == [True, False, False, True]
    untestable = compare([1.0], [2.0], metric="m", label="y", paired=True)
    out = holm([*comps, untestable])
    assert math.isnan(out[-1].p_holm) and out[0].p_holm == pytest.approx(0.03)  # m stays 4


def test_holm_makes_a_marginal_difference_not_clear_in_a_family():
    shifts = [0.01, 0.03, 0.002, 0.02, 0.015]  # paired t = 3.25, p = 0.03 alone
    single = compare(A, [a + d for a, d in zip(A, shifts, strict=True)], metric="m",
                     label="x", paired=True)
    assert single.p < ALPHA and holm([single])[0].clear
    family = holm([single] + [compare(A, list(A), metric="m", label=str(i), paired=True)
                              for i in range(20)])
    assert family[0].p_holm == pytest.approx(min(1.0, 21 * single.p)) and not family[0].clear


@pytest.mark.parametrize(("mean", "std", "text"), [
    (0.8249, 0.02187, "0.825 +- 0.022"),
    (2.30259, 7.211e-05, "2.302590 +- 0.000072"),
    (0.336, 0.005038, "0.3360 +- 0.0050"),
    (12.3, 1.7, "12.3 +- 1.7"),
    (0.5, math.nan, "0.500"),
])
def test_fmt_rounds_to_the_spread(mean, std, text):
    assert fmt(mean, std) == text


def test_run_study_refuses_comparisons_split_into_two_holm_families(tmp_path, monkeypatch):
    """Two holm calls give each family a smaller m: run_study recomputes and refuses it."""
    from bnlab.studies import base

    comps = [compare(A, B, metric="m", label=str(i), paired=True) for i in range(4)]
    split = holm(comps[:2]) + holm(comps[2:])
    one = holm(comps)
    assert base.same_family(one) and not base.same_family(split)


def test_an_arm_that_varies_only_by_rounding_does_not_set_the_digits():
    # the bias before BN cannot move (its growth is 0 up to float rounding), the other arm's
    # varies by about 1: the difference is known to about 0.1, not to 1e-6
    flat = [1e-10 * (i % 3) for i in range(8)]
    moving = [2.4, 0.9, 4.1, 1.7, 3.3, 2.2, 0.6, 4.0]
    c = holm([compare(flat, moving, metric="growth", label="x", paired=True)])[0]
    assert c.digits() == 1
    assert c.diff_text() == f"{c.diff:+.1f} (95% CI {c.low:+.1f} to {c.high:+.1f})"
    # two arms that both vary keep the smaller spread's two significant figures
    both = holm([compare([0.80, 0.82, 0.79, 0.81], [0.90, 0.95, 0.85, 0.99], metric="acc",
                         label="x", paired=True)])[0]
    assert both.digits() == 3
