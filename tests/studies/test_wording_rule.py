"""The one wording rule of ``bnlab.studies.claims`` (equivalence first), on synthetic arms and
at its edges; the scale-free exact test; the declared Holm family of ``judge_keyed``."""

from __future__ import annotations

import math

import pytest

from bnlab.studies.claims import (
    EQUIVALENT_CLEAR,
    EXACT_DISAGREES,
    NOT_RUN,
    Claim,
    judge,
    judge_keyed,
    tost,
    wording,
)
from bnlab.studies.exact import exact_p
from bnlab.studies.stats import ALPHA, compare, holm_p

CLAIM = Claim("k", "B beats A.", "X 2020", "test_acc", +1, 0.02, a="A", b="B")
OTHER = Claim("k2", "B beats A too.", "X 2020", "test_acc", +1, 0.02, a="A", b="B")


def _word(a: list[float], b: list[float], claim: Claim = CLAIM, paired: bool = True) -> str:
    return judge([(claim, a, b, paired)])[0].wording


def test_reviewer_case_one_effect_one_word_whatever_the_exact_test_says() -> None:
    """A clear effect inside the margin: before, "reproduces (smaller than the margin)" when the
    exact test agreed and "does not reproduce" when not; now TOST decides first."""
    a = [0.0] * 6
    b1 = [0.010, 0.011, 0.012, 0.009, 0.010, 0.0105]
    b2 = [0.010, 0.011, 0.012, 0.009, 0.010, -0.001]
    assert _word(a, b1) == EQUIVALENT_CLEAR  # t and exact clear, TOST clear
    assert _word(a, b2) == "does not reproduce"  # exact not clear, TOST clear


def test_every_branch_on_synthetic_arms() -> None:
    a = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.78, 0.82]
    up = [x + 0.05 + 0.002 * (i % 3) for i, x in enumerate(a)]  # clear, beyond the margin
    down = [x - 0.05 - 0.002 * (i % 3) for i, x in enumerate(a)]
    tiny = [x + s for x, s in zip(a, [1e-3, -1e-3, 2e-3, -1.5e-3, 5e-4, -1e-3, 0.0, 5e-4],
                                  strict=True)]  # inside +-0.02, not clear
    noisy = [x + s for x, s in zip(a, [0.1, -0.1, 0.05, -0.04, 0.09, -0.08, 0.0, 0.01],
                                   strict=True)]
    assert _word(a, up) == "reproduces"
    assert _word(a, down) == "contradicts"
    assert _word(a, tiny) == "does not reproduce"
    assert _word(a, noisy) == "not shown"
    shifted = [x + 0.005 + 0.0001 * (i % 2) for i, x in enumerate(a)]  # clear, inside margin
    assert _word(a, shifted) == EQUIVALENT_CLEAR
    assert _word(shifted, a) == EQUIVALENT_CLEAR  # a clear effect the other way: the same


@pytest.mark.parametrize(("p_holm", "clear"), [(0.05, False), (0.0499999, True)])
def test_p_exactly_alpha_is_not_clear(p_holm: float, clear: bool) -> None:
    c = compare([0.1, 0.2] * 4, [0.3, 0.45] * 4, metric="test_acc", label="x", paired=True)
    c = c.__class__(**{**c.__dict__, "p_holm": p_holm})
    assert wording(c, 0.01, 1.0, +1) == ("reproduces" if clear else "not shown")
    assert wording(c, 0.01, ALPHA, +1) == ("reproduces" if clear else "not shown")  # TOST too
    assert wording(c, 0.01, 0.0499, +1) == (EQUIVALENT_CLEAR if clear else "does not reproduce")


def test_t_clear_exact_not_is_qualified_below_eight_seeds() -> None:
    c = compare([0.1] * 3, [0.2] * 3, metric="test_acc", label="x", paired=False)
    c = c.__class__(**{**c.__dict__, "p_holm": 0.01})
    assert wording(c, 0.2, 1.0, +1) == EXACT_DISAGREES
    assert wording(c, 0.2, 0.01, +1) == "does not reproduce"  # equivalence first


def test_zero_variance_and_ties() -> None:
    """No spread: the exact test without spread decides; a zero effect is "not shown" (never
    the removed "beyond the MDE" qualifier: MDE 0 <= |0|)."""
    same = [0.5] * 6
    (j,) = judge([(CLAIM, same, same, True)])
    assert j.mde == 0.0 and j.comparison.p == 1.0
    assert j.wording == "does not reproduce"  # exact TOST: 1/64 per side at 6 seeds
    assert _word([0.5] * 3, [0.5] * 3) == "not shown"  # 3 seeds: 1/8 cannot reach 0.05
    assert _word([0.5] * 6, [0.6] * 6) == "reproduces"  # sign test 2/64
    ties = [0.81, 0.81, 0.82, 0.82, 0.81, 0.82]  # accuracies that tie across arms
    assert _word(ties, ties) == "does not reproduce"


def test_two_seeds_can_never_be_called() -> None:
    assert _word([0.1, 0.2], [0.9, 1.0]) == "not shown"  # exact floor 0.5
    assert _word([0.1, 0.2], [0.1, 0.2]) == "not shown"


def test_margin_zero_is_refused_and_tost_at_zero_cannot_be_clear() -> None:
    with pytest.raises(ValueError, match="margin"):
        Claim("k", "s", "X", "test_acc", +1, 0.0)
    a, b = [0.1, 0.2, 0.3, 0.4] * 2, [0.1, 0.2, 0.3, 0.4001] * 2
    assert tost(a, b, 0.0, paired=True) >= 0.5


@pytest.mark.parametrize("df", [1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 20.0, 200.0])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_the_mde_lies_beyond_the_critical_t(df: float, m: int) -> None:
    """The proof's step: the power at nc = t_crit is below POWER, so the MDE > t_crit * se."""
    from scipy import stats as sps

    from bnlab.studies.power import POWER, mde
    crit = float(sps.t.ppf(1 - ALPHA / m / 2, df))
    assert float(sps.nct.sf(crit, df, crit)) < 0.7 < POWER
    assert mde(1.0, df, m) > crit


def test_beyond_the_mde_implies_clear() -> None:
    """The removed qualifier was unreachable (module docstring's proof): over many random
    families, |diff| >= MDE always comes with Holm p < ALPHA."""
    import random
    rng = random.Random(3)
    hits = 0
    for _ in range(300):
        n, m = rng.choice([3, 5, 8, 12]), rng.choice([1, 2, 3])
        fam = [(Claim(f"c{i}", "s", "X", "test_acc", +1, 0.01), [rng.gauss(0, 1) for _ in
                range(n)], [rng.gauss(rng.choice([0, 1, 2]), 1) for _ in range(n)], True)
               for i in range(m)]
        for j in judge(fam):
            if math.isfinite(j.mde) and abs(j.comparison.diff) >= j.mde:
                hits += 1
                assert j.comparison.p_holm < ALPHA
    assert hits > 20  # the property was exercised


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-10])
def test_exact_test_and_no_spread_are_scale_free(scale: float) -> None:
    d = [0.010, 0.011, 0.012, 0.009, 0.010]
    b = [x * scale for x in d]
    assert exact_p([0.0] * 5, b, paired=True) == pytest.approx(2 / 32)
    assert exact_p([0.0] * 5, b, paired=True, alternative="greater") == pytest.approx(1 / 32)
    assert exact_p([0.0] * 3, b[:3], paired=False) == pytest.approx(2 / 20)
    c = compare([0.0] * 5, b, metric="m", label="x", paired=True)
    assert c.test == "paired t" and c.p == pytest.approx(
        compare([0.0] * 5, d, metric="m", label="x", paired=True).p, rel=1e-6)


def test_judge_keyed_records_a_claim_that_did_not_run_and_keeps_m() -> None:
    a = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.78, 0.82]
    b = [x + 0.01 + 0.004 * (i % 3) for i, x in enumerate(a)]
    raw = {"one": compare(a, b, metric="test_acc", label="B vs A", paired=True)}
    primary, comps, missing = judge_keyed(raw, {"one": CLAIM, "two": OTHER})
    assert missing == {"k2": NOT_RUN} and list(comps) == ["one"]
    (j,) = primary
    assert j.comparison.p_holm == pytest.approx(holm_p([j.comparison.p, 1.0])[0])
    assert j.comparison.p_holm == pytest.approx(min(1.0, 2 * j.comparison.p))  # m = 2, not 1
    (alone,) = judge([(CLAIM, a, b, True)])
    assert alone.comparison.p_holm == pytest.approx(j.comparison.p_holm / 2)
    with pytest.raises(ValueError, match="family"):
        judge([(CLAIM, a, b, True)], family=0)


def test_the_documented_rule_is_the_coded_one() -> None:
    """The rule's two statements (claims' docstring, docs/studies.md's explanation) name the
    qualifiers the code gives, and no removed one."""
    from bnlab.report import studies_doc
    from bnlab.studies import claims
    for text in (claims.__doc__ or "", studies_doc.INTRO):
        flat = " ".join(text.split())
        assert EQUIVALENT_CLEAR in flat and EXACT_DISAGREES in flat
        assert "beyond the MDE" not in flat and "reproduces (smaller" not in flat
        assert flat.index("TOST") < flat.index("clear in the paper's direction")


def test_the_summary_lists_the_claims_not_judged() -> None:
    from bnlab.report.studies_doc import _claims
    meta = {"primary": [{"claim": {"key": "k"}, "wording": "reproduces"}],
            "not_judged": {"k2": NOT_RUN}}
    assert _claims(meta) == f"k: reproduces; k2: not judged ({NOT_RUN})"
