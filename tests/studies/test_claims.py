"""The claims API (``bnlab.studies.claims``, ``bnlab.studies.exact``) against scipy's oracles,
and the one wording rule on synthetic arms with known answers.

Tolerances: p values from the same formula (scipy's t distribution, exact enumeration) agree to
float rounding, 1e-12; the MDE's power is checked by simulation with 40,000 draws (standard
error of a proportion near 0.8: 0.002), so +-0.01 is five standard errors.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from bnlab.studies.claims import WORDS, Claim, judge, mde, tost, wording
from bnlab.studies.exact import exact_floor, exact_p
from bnlab.studies.stats import compare, holm_p

CLAIM = Claim("bn-helps", "BN improves test accuracy.", "Ioffe & Szegedy 2015", "test_acc",
              +1, 0.01, "no BN", "BN")


def _seeds(n: int, shift: float, spread: float, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    a = [0.80 + rng.gauss(0, 0.02) for _ in range(n)]
    return a, [x + shift + rng.gauss(0, spread) for x in a]


@pytest.mark.parametrize("n", [5, 8, 10])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_matches_scipy_permutation_test(n: int, alternative: str) -> None:
    a, b = _seeds(n, 0.004, 0.01, seed=n)
    d = np.subtract(b, a)
    ref = sps.permutation_test((d,), np.mean, permutation_type="samples",
                               n_resamples=math.inf, alternative=alternative)
    assert exact_p(a, b, paired=True, alternative=alternative) == pytest.approx(
        ref.pvalue, abs=1e-12)


@pytest.mark.parametrize(("na", "nb"), [(5, 5), (4, 6), (6, 8)])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_permutation_matches_scipy(na: int, nb: int, alternative: str) -> None:
    rng = random.Random(na * 31 + nb)
    a = [rng.gauss(0.8, 0.02) for _ in range(na)]
    b = [rng.gauss(0.815, 0.02) for _ in range(nb)]
    ref = sps.permutation_test((b, a), lambda x, y: np.mean(x) - np.mean(y),
                               permutation_type="independent", n_resamples=math.inf,
                               alternative=alternative)
    assert exact_p(a, b, paired=False, alternative=alternative) == pytest.approx(
        ref.pvalue, abs=1e-12)


def test_exact_floor_is_reached_by_complete_separation() -> None:
    a = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert exact_p(a, [x + 1 for x in a], paired=True) == exact_floor(5, 5, paired=True)
    assert exact_floor(5, 5, paired=True) == 0.0625
    assert exact_p(a, [x + 1 for x in a], paired=False) == exact_floor(5, 5, paired=False)
    assert exact_floor(5, 5, paired=False) == pytest.approx(2 / 252)


def test_exact_rejects_diverged_values_and_unequal_pairs() -> None:
    with pytest.raises(ValueError, match="finite"):
        exact_p([0.1, math.nan], [0.2, 0.3], paired=True)
    with pytest.raises(ValueError, match="one value per seed"):
        exact_p([0.1, 0.2], [0.2, 0.3, 0.4], paired=True)


@pytest.mark.parametrize("paired", [True, False])
def test_tost_matches_two_one_sided_scipy_t_tests(paired: bool) -> None:
    a, b = _seeds(10, 0.002, 0.006, seed=3)
    margin = 0.01
    if paired:
        d = np.subtract(b, a)
        lo = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
        hi = sps.ttest_1samp(d, margin, alternative="less").pvalue
    else:
        lo = sps.ttest_ind(np.add(b, margin), a, equal_var=False, alternative="greater").pvalue
        hi = sps.ttest_ind(np.subtract(b, margin), a, equal_var=False, alternative="less").pvalue
    assert tost(a, b, margin, paired=paired) == pytest.approx(max(lo, hi), rel=1e-10)


def test_tost_below_eight_seeds_needs_the_exact_tests_too() -> None:
    a, b = _seeds(5, 0.0, 0.001, seed=4)
    d = np.subtract(b, a)
    t_part = max(sps.ttest_1samp(d, -0.01, alternative="greater").pvalue,
                 sps.ttest_1samp(d, 0.01, alternative="less").pvalue)
    exact_part = max(exact_p(a, [x + 0.01 for x in b], paired=True, alternative="greater"),
                     exact_p(a, [x - 0.01 for x in b], paired=True, alternative="less"))
    assert exact_part == pytest.approx(1 / 32)  # every shifted difference on one side
    assert tost(a, b, 0.01, paired=True) == pytest.approx(max(t_part, exact_part))


@pytest.mark.parametrize(("n", "m"), [(10, 1), (10, 3), (20, 1)])
def test_mde_has_the_stated_power_by_simulation(n: int, m: int) -> None:
    sigma = 0.01
    se = sigma / math.sqrt(n)
    effect = mde(se, n - 1, m)
    rng = np.random.default_rng(n + m)
    draws = rng.normal(effect, sigma, size=(40_000, n))
    # the t-test with the spread known to be sigma: the noncentral t's power, simulated
    t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(n))
    crit = sps.t.ppf(1 - 0.05 / m / 2, n - 1)
    assert np.mean(np.abs(t) > crit) == pytest.approx(0.8, abs=0.01)


def test_issue_examples_five_identical_differences() -> None:
    """Five identical +0.01 differences: the t-test is degenerate; the exact test gives its
    floor 2/32 = 0.0625 and nothing is called at five paired seeds."""
    a = [0.80, 0.81, 0.82, 0.83, 0.84]
    (j,) = judge([(CLAIM, a, [x + 0.01 for x in a], True)])
    assert j.p_exact == pytest.approx(0.0625)
    assert j.comparison.p_holm == pytest.approx(0.0625)
    assert j.wording == "not shown"
    assert math.isinf(j.mde)  # five paired seeds cannot reach p < 0.05 exactly


def test_issue_examples_one_seed_shifted_by_one_test_image() -> None:
    """One seed's difference 1/10000 larger: the t-test says p ~ 1e-9, the sign-flip test
    still 0.0625, so the pair is not "clear" and the wording stays "not shown"."""
    a = [0.80, 0.81, 0.82, 0.83, 0.84]
    b = [x + 0.01 for x in a[:4]] + [a[4] + 0.0101]
    (j,) = judge([(CLAIM, a, b, True)])
    ref = sps.ttest_rel(b, a)
    assert j.comparison.p == pytest.approx(ref.pvalue, rel=1e-6)
    assert j.comparison.p < 1e-8
    assert j.p_exact == pytest.approx(0.0625)
    assert j.wording == "not shown (the exact test does not agree)"
    assert not j.comparison.clear and j.comparison.word == "no clear difference"


def test_wording_rule_on_synthetic_arms() -> None:
    helps = _seeds(10, 0.03, 0.005, seed=1)
    hurts = _seeds(10, -0.03, 0.005, seed=2)
    same = _seeds(10, 0.0, 0.002, seed=3)
    noisy = _seeds(10, 0.005, 0.05, seed=4)
    js = judge([(CLAIM, *helps, True),
                (Claim("b", "B hurts.", "X 2020", "test_acc", -1, 0.01), *helps, True),
                (Claim("c", "C helps.", "X 2020", "test_acc", +1, 0.01), *same, True),
                (Claim("d", "D helps.", "X 2020", "test_acc", +1, 0.01), *noisy, True),
                (Claim("e", "E hurts.", "X 2020", "test_acc", -1, 0.01), *hurts, True),
                (Claim("f", "F helps.", "X 2020", "test_acc", +1, 0.01),
                 helps[0][:5] + [math.nan] * 5, helps[1], True)])
    assert [j.wording for j in js[:5]] == ["reproduces", "contradicts", "does not reproduce",
                                          "not shown", "reproduces"]
    assert js[5].wording.startswith("not testable (")
    assert all(j.wording in WORDS for j in js[:5])
    noisy_j = js[3]
    assert abs(noisy_j.comparison.diff) < noisy_j.mde  # a null beside its MDE


def test_holm_is_over_the_primary_family_only() -> None:
    data = [_seeds(10, s, 0.01, seed=k) for k, s in enumerate((0.02, 0.005, 0.0))]
    claims = [Claim(f"k{i}", "s", "X", "test_acc", 1, 0.01) for i in range(3)]
    js = judge([(c, a, b, True) for c, (a, b) in zip(claims, data, strict=True)])
    raw = [sps.ttest_rel(b, a).pvalue for a, b in data]
    m = 3
    order = np.argsort(raw)
    expected = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[i]))
        expected[i] = running
    assert [j.comparison.p_holm for j in js] == pytest.approx(expected, rel=1e-9)
    exact = holm_p([exact_p(a, b, paired=True) for a, b in data])
    assert [j.p_exact for j in js] == pytest.approx(exact, rel=1e-12)


def test_below_eight_seeds_clear_needs_the_exact_test() -> None:
    c = compare([0.1] * 3, [0.2] * 3, metric="test_acc", label="x", paired=False)
    clear_t = c.__class__(**{**c.__dict__, "p_holm": 0.01})
    assert wording(clear_t, p_exact=0.2, p_tost=1.0, direction=1) == \
        "not shown (the exact test does not agree)"
    assert wording(clear_t, p_exact=0.01, p_tost=1.0, direction=1) == "reproduces"
    assert wording(clear_t, p_exact=0.01, p_tost=1.0, direction=-1) == "contradicts"


def test_record_recomputes_to_the_same_judgement() -> None:
    a, b = _seeds(6, 0.08, 0.004, seed=9)
    (j,) = judge([(CLAIM, a, b, False)])
    rec = j.record()
    (again,) = judge([(CLAIM, rec["a"], rec["b"], rec["paired"])])  # type: ignore[arg-type]
    assert again.record() == rec
    assert rec["wording"] == "reproduces" and "MDE" in j.text()


@pytest.mark.parametrize(("kw", "match"), [({"direction": 0}, "direction"),
                                          ({"margin": 0.0}, "margin"),
                                          ({"margin": math.inf}, "margin"),
                                          ({"key": ""}, "key")])
def test_claim_rejects_bad_declarations(kw: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"key": "k", "statement": "s", "source": "X", "metric": "test_acc",
                               "direction": 1, "margin": 0.01}
    with pytest.raises(ValueError, match=match):
        Claim(**{**base, **kw})  # type: ignore[arg-type]


def test_judge_rejects_duplicate_keys() -> None:
    a, b = _seeds(5, 0.0, 0.01)
    with pytest.raises(ValueError, match="distinct keys"):
        judge([(CLAIM, a, b, True), (CLAIM, a, b, True)])


def test_reviewer_case_not_shown_beyond_the_mde_says_why() -> None:
    """n = 6 paired, a = 0.5 each, b = 1.5 five times and 0.4 once: paired t p = 0.0067, exact
    p = 0.0625, effect 0.817 beyond the t-test's MDE 0.644; the word stays "not shown" (the
    exact test decides below 8 seeds) and says why beside it; the comparison is not clear and
    its word ("better"/"worse") agrees with the judgement."""
    a, b = [0.5] * 6, [1.5] * 5 + [0.4]
    (j,) = judge([(CLAIM, a, b, True)])
    assert j.comparison.p == pytest.approx(sps.ttest_rel(b, a).pvalue, rel=1e-9)
    assert j.comparison.p == pytest.approx(0.0067, abs=1e-4)
    assert j.p_exact == pytest.approx(4 / 64)  # all-positive and the one flipped sign, x2
    assert j.comparison.diff == pytest.approx(0.81667, abs=1e-5)
    assert j.mde == pytest.approx(0.644, abs=1e-3) and j.comparison.diff > j.mde
    assert j.wording == "not shown (the exact test does not agree)"
    assert not j.comparison.clear and j.comparison.word == "no clear difference"


def test_higher_is_better_follows_the_claims_direction() -> None:
    """'better' for a primary comparison is the paper's direction, whatever the metric's
    name says (a loss, a smoothness constant, a norm growth)."""
    a, b = _seeds(10, -0.05, 0.005, seed=6)
    for metric in ("train_loss", "log beta-smoothness", "pre-norm bias norm growth"):
        (j,) = judge([(Claim("l", "L drops.", "X 2020", metric, -1, 0.01), a, b, True)])
        assert j.comparison.higher_is_better is False and j.comparison.word == "better"
        assert j.wording == "reproduces"
    (j,) = judge([(Claim("g", "G grows.", "X 2020", "train_loss", +1, 0.01), a, b, True)])
    assert j.comparison.word == "worse" and j.wording == "contradicts"


def test_mde_uses_compares_no_spread_threshold() -> None:
    """Identical differences whose stdev is float rounding (~1e-17): no spread, MDE 0 (not
    8.7e-17); unpaired unequal arms that cannot be called name both counts."""
    a = [0.1, 0.2, 0.3, 0.7, 0.9, 0.11, 0.13, 0.17]
    (j,) = judge([(CLAIM, a, [x + 0.1 for x in a], True)])
    assert j.comparison.test.startswith("sign test") and j.mde == 0.0
    (u,) = judge([(CLAIM, [0.1, 0.2], [0.3, 0.4, 0.5], False)])
    assert math.isinf(u.mde) and u.mde_text() == "none at 2 + 3 seeds"


def _abs_share(null: list[float], observed: float) -> float:
    return sum(abs(v) >= abs(observed) - 1e-12 for v in null) / len(null)


def test_two_sided_is_the_abs_share_exactly_when_the_null_is_symmetric() -> None:
    """exact.py's docstring: twice the smaller tail = share of |stat| >= |observed| for the
    sign-flip null and the permutation null with equal arms; a skewed unequal split differs."""
    from itertools import combinations, product
    d = [0.3, -0.1, 0.5, 0.2, 0.7]
    flips = [sum(s * x for s, x in zip(signs, d, strict=True)) / len(d)
             for signs in product((1, -1), repeat=len(d))]
    assert exact_p([0.0] * 5, d, paired=True) == pytest.approx(
        _abs_share(flips, sum(d) / len(d)), rel=1e-12)

    def perm_null(a: list[float], b: list[float]) -> list[float]:
        pool = a + b
        out = []
        for pick in combinations(range(len(pool)), len(b)):
            bb = [pool[i] for i in pick]
            aa = [pool[i] for i in range(len(pool)) if i not in pick]
            out.append(sum(bb) / len(bb) - sum(aa) / len(aa))
        return out

    a, b = [0.1, 0.4, 0.2], [0.5, 0.3, 0.9]
    assert exact_p(a, b, paired=False) == pytest.approx(
        _abs_share(perm_null(a, b), sum(b) / 3 - sum(a) / 3), rel=1e-12)
    a, b = [0.0, 0.0, 0.0, 0.0, 10.0], [1.0]  # one big value: a skewed null
    obs = sum(b) - sum(a) / 5
    assert exact_p(a, b, paired=False) != pytest.approx(_abs_share(perm_null(a, b), obs))
