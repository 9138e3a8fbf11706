"""The placement study's analysis on synthetic runs: train loss and fair accuracy before vs
after, Holm-corrected, and the bias measurement in its own row."""

import math

from bnlab.studies import placement
from bnlab.studies.claims import EXACT_DISAGREES
from tests.studies.fakes import results


def study(loss_shift=-0.1, acc_shift=0.0, seeds=5, nan_after=False, precise_shift=None):
    """The after arm's train loss and accuracy shifted from the before arm's."""
    def curve(arm, seed, noise):
        after = arm.tags["placement"] == "after"
        loss = 0.5 + 0.01 * noise + (loss_shift if after else 0.0)
        if after and nan_after and seed == 0:
            loss = math.nan
        acc = 0.82 + 0.004 * noise + (acc_shift if after else 0.0)
        shift = acc_shift if precise_shift is None else precise_shift
        precise = 0.82 + 0.004 * noise + (shift if after else 0.0) + 0.001
        return [{"epoch": 1, "train_loss": loss, "test_acc": acc, "test_acc_precise": precise}]

    return placement.analyze(results(placement.arms(False), seeds, curve))


def by_metric(f):
    return {c.metric: c for c in f.comparisons}


def test_lower_train_loss_after_is_reported_with_accuracy():
    f = study(loss_shift=-0.1)
    c = by_metric(f)
    assert c["train_loss"].word == "better" and c["train_loss"].test == "paired t"
    assert c["test_acc_precise"].word == "no clear difference"
    assert "after lower (clear)" in f.verdict and "after lower (clear)" in f.headline
    assert ("test accuracy after vs before: does not reproduce (claim before-beats-after)"
            in f.headline)  # level within the margin, by the equivalence test
    assert f.literature.startswith("Ioffe & Szegedy 2015, \"BN placed before")
    assert all(not math.isnan(x.p_holm) for x in f.comparisons)


def test_the_claim_by_the_rule():
    """Lower accuracy after the sigmoid: 'reproduces' at ten seeds, 'not shown' at five (the
    exact floor); higher: 'contradicts'; level within the margin at ten: 'does not
    reproduce'."""
    def word(f):
        (j,) = f.primary
        return j.wording

    assert word(study(loss_shift=+0.1, acc_shift=-0.05, seeds=10)) == "reproduces"
    assert word(study(loss_shift=+0.1, acc_shift=-0.05)) == EXACT_DISAGREES
    assert word(study(acc_shift=+0.05, seeds=10)) == "contradicts"
    assert word(study(acc_shift=0.0, seeds=10)) == "does not reproduce"
    assert len(study().primary) == 1 and len(study().exploratory) == 2


def test_equal_arms_give_no_clear_difference():
    f = study(loss_shift=0.0)
    assert {c.word for c in f.comparisons} == {"no clear difference"}
    assert "(clear)" not in f.verdict


def test_the_bias_measurement_has_its_own_row():
    f = study()
    *arms, bias = f.rows
    assert bias["arm"] == placement.BIAS_ROW and bias["test_acc"] == ""
    assert bias["biases removed"] == "conv 1, conv 2, linear 1, linear 2"
    assert bias["parameters saved"] == 6 + 16 + 120 + 84
    assert float(bias["max output diff"]) < 1e-12
    assert all(r["biases removed"] == "" and isinstance(r["test_acc"], float) for r in arms)
    assert [r["placement"] for r in arms] == ["before", "after"]


def test_a_diverged_seed_is_not_tested_on_loss():
    f = study(nan_after=True)
    c = by_metric(f)
    assert c["train_loss"].word.startswith("not testable") and "diverged" in c["train_loss"].test
    assert f.rows[1]["diverged"] == 1


def test_one_seed_is_never_clear():
    f = study(loss_shift=-0.5, seeds=1)
    assert all(not c.clear for c in f.comparisons)
    assert "not testable" in f.literature


def test_the_verdict_says_which_accuracy_is_higher():
    f = study(acc_shift=-0.05)
    assert "before higher (clear)" in f.verdict  # PreciseBN, exploratory
    assert "after higher" not in f.verdict


def test_biases_are_redundant_only_below_rounding(monkeypatch):
    assert "redundant there" in study().verdict
    monkeypatch.setattr(placement, "bias_redundancy", lambda: {
        "layers": "conv 1", "parameters_saved": 6, "max_output_diff": 3e-4,
        "max_weight_grad_diff": 1e-5})
    f = study()
    assert "redundant there" not in f.verdict
    assert "NOT redundant: the output changes by 3.0e-04" in f.verdict
    assert "biases before BN are not redundant" in f.headline


def test_lower_on_a_primary_comparison_follows_its_judgement():
    """The reviewer's case: paired t p = 0.0067, exact p = 0.0625 at 6 seeds: the claim is
    "not shown", so the comparison's own words must not say "clear"/"better" beside it."""
    from bnlab.studies.claims import EXACT_DISAGREES, judge
    (j,) = judge([(placement.CLAIM, [0.5] * 6, [1.5] * 5 + [0.4], True)])
    assert j.wording == EXACT_DISAGREES and j.comparison.p_holm < 0.05
    assert placement.lower(j.comparison, "before", "after", "higher") == \
        "after higher (not clear)"
    assert j.comparison.word == "no clear difference"
