"""The lr study's analysis on synthetic runs: each seed judged on its own curve, the usable
range, and BN vs no BN Holm-corrected where both train."""

import math

import pytest

from bnlab.studies import lr
from bnlab.studies.stats import holm
from tests.studies.fakes import results

STUCK = [2.31, 2.305]


@pytest.mark.parametrize(("losses", "acc", "state"), [
    (STUCK, 0.10, "stuck"),  # on the chance plateau after every epoch
    ([2.30, math.nan], 0.10, "diverged"),  # a NaN at any epoch
    ([math.inf, 1.0], 0.70, "diverged"),  # even if a later epoch looks fine
    ([2.5, 4.0], 0.10, "blew up"),  # finite but far above chance: not "diverged" (stats)
    ([2.30, 0.9], 0.70, "trains"),  # falling
    ([2.30, 2.25], 0.45, "trains"),  # leaving the plateau: accuracy already beats chance
])
def test_each_seed_is_judged_on_its_own_curve(losses, acc, state):
    assert lr.classify(losses, acc) == state


def sweep(bn_loss_shift=-0.2, none=None, seeds=5, nan_at=None, bad_seeds=None):
    """No BN: stuck at lr 0.03 and 0.1, trains at 0.3..3, blown up at 10 (unless `none` says
    otherwise); BN trains everywhere, its loss shifted by `bn_loss_shift` from no BN's."""
    none = none if none is not None else {0.03: "stuck", 0.1: "stuck", 10.0: "diverged"}

    def curve(arm, seed, noise):
        norm, rate = arm.tags["norm"], arm.tags["lr"]
        state = "trains" if norm == "bnlab" else none.get(rate, "trains")
        if bad_seeds is not None and seed not in bad_seeds:
            state = "trains"
        if state == "stuck":
            return [{"epoch": e, "train_loss": v, "test_acc": 0.10}
                    for e, v in enumerate(STUCK, 1)]
        if state == "diverged":
            return [{"epoch": 1, "train_loss": 3.0, "test_acc": 0.10},
                    {"epoch": 2, "train_loss": 5.0, "test_acc": 0.10}]
        loss = 0.6 + 0.02 * noise + (bn_loss_shift if norm == "bnlab" else 0.0)
        if nan_at == (norm, rate) and seed == 0:
            loss = math.nan
        acc = 0.80 - 0.01 * noise - (bn_loss_shift if norm == "bnlab" else 0.0) / 10
        row = {"epoch": 2, "train_loss": loss, "test_acc": acc}
        if norm == "bnlab":
            row["test_acc_precise"] = acc + 0.001
        return [{"epoch": 1, "train_loss": 1.2, "test_acc": 0.6}, row]

    return lr.analyze(results(lr.arms(False), seeds, curve))


def loss_tests(findings):
    return [c for c in findings.comparisons if c.metric == "train_loss"]


def test_usable_ranges_and_bn_lower_loss():
    f = sweep()
    assert "without BN 0.3 to 3; with BN 0.03 to 10" in f.verdict
    assert [c.label for c in loss_tests(f)] == [f"lr {v:g}: BN vs no BN" for v in (0.3, 1, 3)]
    assert all(c.word == "better" and c.test == "paired t" for c in loss_tests(f))
    assert all(not math.isnan(c.p_holm) for c in f.comparisons)
    assert f.literature.startswith("Agrees with") and "Bjorck" in f.literature
    shares = {c.label: c for c in f.comparisons if c.metric == lr.TRAINS}
    assert shares["lr 0.1: BN vs no BN"].word == "better"  # 5/5 vs 0/5, Fisher exact
    assert shares["lr 1: BN vs no BN"].word == "no clear difference"  # 5/5 vs 5/5
    assert "on clearly more at lr 0.03 to 0.1, 10" in f.literature
    assert "McNemar exact" in f.literature
    assert "clearly lower at 3 of 3 learning rates" in f.headline
    states = {r["arm"]: r["seed states (own curve)"] for r in f.rows}
    assert states["no BN, lr 0.1"] == "5 stuck" and states["no BN, lr 10"] == "5 blew up"
    # the table's diverged column (stats: a non-finite loss) agrees with the states
    assert next(r for r in f.rows if r["arm"] == "no BN, lr 10")["diverged"] == 0
    assert states["BN, lr 10"] == "5 trains"


def test_reversed_effect_flips_the_verdict():
    f = sweep(bn_loss_shift=+0.2)
    assert all(c.word == "worse" for c in loss_tests(f))
    assert all(c.word == "worse" for c in f.comparisons if c.metric == "test_acc")


def test_equal_arms_give_no_clear_difference():
    f = sweep(bn_loss_shift=0.0)
    assert all(c.word == "no clear difference" for c in loss_tests(f))
    assert "clearly lower at 0 of 3" in f.headline


def test_same_range_does_not_reproduce_the_claim():
    f = sweep(none={})  # no BN trains everywhere too
    assert f.literature.startswith("Does not show the claim")
    assert {c.word for c in f.comparisons if c.metric == lr.TRAINS} == {"no clear difference"}


def test_one_failing_seed_does_not_widen_the_range():
    """Without BN one seed of five blows up at lr 10: the usable ranges differ, but 4/5 vs 5/5
    is no clear difference (Fisher exact, Holm)."""
    f = sweep(none={10.0: "diverged"}, bad_seeds={0})
    assert "without BN 0.03 to 3; with BN 0.03 to 10" in f.verdict
    c = next(c for c in f.comparisons if c.metric == lr.TRAINS and c.label.startswith("lr 10:"))
    assert c.test == "Fisher exact" and c.word == "no clear difference"
    assert c.diff == pytest.approx(0.2) and c.low < 0 < c.high and not math.isnan(c.p_holm)
    assert "lr 10: 5/5 with BN vs 4/5 without" in f.verdict
    assert not f.literature.startswith("Agrees")
    assert f.literature.startswith("Does not show the claim")


def test_a_nan_seed_makes_its_learning_rate_unusable():
    f = sweep(nan_at=("bnlab", 1.0))
    assert "with BN 0.03 to 0.3, 3 to 10" in f.verdict
    row = next(r for r in f.rows if r["arm"] == "BN, lr 1")
    assert row["seed states (own curve)"] == "4 trains, 1 diverged" and row["diverged"] == 1
    assert [c.label for c in loss_tests(f)] == ["lr 0.3: BN vs no BN", "lr 3: BN vs no BN"]


def test_one_seed_is_never_clear():
    f = sweep(seeds=1)
    assert f.comparisons and all(not c.clear for c in f.comparisons)
    assert all(c.word.startswith("not testable") for c in f.comparisons)
    # one seed's states never decide "wider"
    assert not f.literature.startswith("Agrees")
    assert f.literature.startswith("Cannot test")


def test_the_pooled_paired_test_sees_what_each_learning_rate_alone_cannot():
    """BN trains at 6 of 6 rates on 5 seeds, no BN at 1: one Fisher test per rate cannot
    reach Holm p < 0.05 with 5 seeds, McNemar's over the 30 shared (rate, seed) pairs can."""
    from bnlab.studies.lr import pooled_trains_test

    stuck, ok = ["stuck"] * 5, ["trains"] * 5
    pairs = [(stuck, ok)] * 5 + [(ok, ok)]
    c = pooled_trains_test(pairs)
    assert c.test == "McNemar exact" and c.p == pytest.approx(2 * 0.5 ** 25)
    assert holm([c])[0].word == "better"
    assert holm([pooled_trains_test([(b, a) for a, b in pairs])])[0].word == "worse"
    assert holm([pooled_trains_test([(ok, ok)] * 6)])[0].word == "no clear difference"
    one = pooled_trains_test([(["stuck"], ["trains"])] * 6)
    assert not one.testable and not holm([one])[0].clear
