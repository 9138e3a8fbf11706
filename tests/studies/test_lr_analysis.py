"""The lr study's analysis on synthetic runs: each seed judged on its own curve, the sweep
split at the chapter's rate, the high end judged per seed against the claim (``claims``), the
low end exploratory."""

import math

import pytest
from scipy import stats as sps

from bnlab.studies import lr
from bnlab.studies.base import check_families
from bnlab.studies.recompute import differences
from tests.studies.fakes import record, results

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


# No BN in the committed record: stuck at the low end, trains at 1, fails at the high end.
RECORD = {0.03: "stuck", 0.1: "stuck", 0.3: "stuck", 3.0: "diverged", 10.0: "diverged"}


def sweep(none=None, bn=None, seeds=10, bn_loss_shift=-0.2, nan_at=None, bad_seeds=None):
    """States per (norm, rate) ('trains' unless `none`/`bn` say otherwise; a state may be
    (state, seeds): only those seeds take it; `bad_seeds`: the same for every state); BN's
    loss shifted by `bn_loss_shift`."""
    states = {"none": RECORD if none is None else none, "bnlab": bn or {}}

    def curve(arm, seed, noise):
        norm, rate = arm.tags["norm"], arm.tags["lr"]
        state = states[norm].get(rate, "trains")
        only = bad_seeds
        if isinstance(state, tuple):
            state, only = state
        if only is not None and seed not in only:
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


def low_end(f):
    return next(c for c in f.comparisons if c.metric == lr.LOW)


def test_the_sweep_splits_at_the_chapters_rate_and_the_setup_says_so():
    assert lr.ends(lr.LRS) == ([0.03, 0.1, 0.3], [3.0, 10.0])
    assert lr.ends(lr.QUICK_LRS) == ([0.1], [10.0])
    # the setup text states the rule the code applies, from the same constants
    assert "judged on the high end only, lr 3, 10" in lr.SETUP
    assert f"TOST against +-{lr.HIGH_END.margin:g}" in lr.SETUP
    assert f"{lr.SEEDS} seeds each" in lr.SETUP and lr.STUDY.seeds == lr.SEEDS
    assert "McNemar" not in lr.SETUP and "McNemar" not in lr.__doc__


def test_shares_are_per_seed_over_the_given_rates():
    per = {3.0: ["trains", "stuck", "trains"], 10.0: ["trains", "trains", "blew up"]}
    assert lr.shares(per, [3.0, 10.0]) == [1.0, 0.5, 0.5]
    assert lr.shares(per, [10.0]) == [1.0, 1.0, 0.0]


def test_bn_training_where_no_bn_fails_at_the_high_end_reproduces():
    f = sweep()
    (j,) = f.primary
    assert j.claim is lr.HIGH_END and j.wording == "reproduces"
    c = j.comparison
    assert list(c.a.values) == [0.0] * 10 and list(c.b.values) == [1.0] * 10
    assert c.diff == 1.0 and j.paired
    # no spread: the sign test (stats) and the exact sign-flip test, 2 / 2^10
    assert c.p == pytest.approx(2 * 0.5 ** 10) and j.p_exact == pytest.approx(2 / 2 ** 10)
    assert f.literature.startswith('Ioffe & Szegedy 2015; Bjorck et al. 2018, "With BN a '
                                   'network trains at higher learning rates than without it": '
                                   'reproduces')
    assert f.literature.split(" Claim judged")[0].endswith(": reproduces.")
    assert "judged on the high end only, lr 3, 10" in f.literature
    check_families("lr", f)  # the runner's check: one judge call, one exploratory family
    assert "without BN 1; with BN 0.03 to 10" in f.verdict
    # the low end is reported, exploratory, outside the primary family
    assert low_end(f).word == "better" and low_end(f).label.startswith("low end (lr 0.03")
    assert "Exploratory" in f.verdict and "no verdict on the claim" in f.verdict
    assert all(c.metric != lr.HIGH for c in f.comparisons if c is not j.comparison)
    assert all(not math.isnan(c.p_holm) for c in f.comparisons if c.testable)


def test_a_low_end_gap_alone_says_nothing_about_a_higher_rate():
    """No BN stuck at every low rate and training at every high one: the pooled test over
    (rate, seed) pairs called this 'agrees'; split, the high end shows equal shares, and with
    10 seeds the TOST against +-0.25 calls the claim not reproduced."""
    f = sweep(none={0.03: "stuck", 0.1: "stuck", 0.3: "stuck"})
    (j,) = f.primary
    assert j.comparison.diff == 0.0 and j.wording == "does not reproduce"
    assert j.p_tost < 0.05
    assert low_end(f).word == "better"  # the plateau gap is there, and exploratory
    assert ": does not reproduce. Claim judged on the high end only" in f.literature


def test_bn_failing_at_the_high_end_contradicts():
    f = sweep(none={}, bn={3.0: "diverged", 10.0: "diverged"})
    (j,) = f.primary
    assert j.comparison.diff == -1.0 and j.wording == "contradicts"


def test_the_seed_level_test_pairs_seeds():
    """No BN trains at 3 on seeds 0-4 only (as 2 of 5 did in the record); BN everywhere: per
    seed shares 0.5 / 0, paired by seed; the t-test and the sign-flip test agree (scipy)."""
    f = sweep(none={3.0: ("diverged", {5, 6, 7, 8, 9}), 10.0: "diverged"})
    (j,) = f.primary
    a, b = list(j.comparison.a.values), list(j.comparison.b.values)
    assert a == [0.5] * 5 + [0.0] * 5 and b == [1.0] * 10
    assert j.comparison.p == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert j.wording == "reproduces"


def test_five_seeds_cannot_reach_a_verdict_in_the_claims_direction():
    """At 5 paired seeds the exact sign-flip test's smallest p is 2 / 32 = 0.0625: nothing is
    clear, whatever the effect, and the MDE says so."""
    f = sweep(seeds=5)
    (j,) = f.primary
    assert j.comparison.diff == 1.0 and j.wording == "not shown"
    assert j.p_exact == pytest.approx(0.0625) and math.isinf(j.mde)
    assert "none at 5 seeds" in j.text()


def test_one_failing_seed_is_not_a_wider_range():
    """Without BN one seed of ten blows up at lr 10: the usable ranges differ, but the
    per-seed high-end shares differ by 0.05, inside the +-0.25 margin: not 'reproduces'."""
    f = sweep(none={10.0: "diverged"}, bad_seeds={0})
    assert "without BN 0.03 to 3; with BN 0.03 to 10" in f.verdict
    assert "lr 10: 10/10 with BN vs 9/10 without" in f.verdict  # counted, not tested
    (j,) = f.primary
    assert j.comparison.diff == pytest.approx(0.05) and j.wording == "does not reproduce"


def test_every_comparison_recomputes_from_its_per_seed_values():
    """What test_docs_fresh checks on the published record (``studies.recompute``)."""
    f = sweep(none={3.0: ("diverged", {5, 6, 7, 8, 9}), 10.0: "diverged"})
    assert differences(record("lr", f)) == []


def test_where_both_train_bn_is_compared_exploratory():
    f = sweep(none={}, bn_loss_shift=-0.2)
    losses = [c for c in f.comparisons if c.metric == "train_loss"]
    assert [c.label for c in losses] == [f"lr {v:g}: BN vs no BN" for v in lr.LRS]
    assert all(c.word == "better" and c.test == "paired t" for c in losses)
    assert "clearly lower at 6 of 6 learning rates" in f.headline
    assert all(c.word == "worse" for c in (
        c for c in sweep(none={}, bn_loss_shift=0.2).comparisons if c.metric == "train_loss"))


def test_a_nan_seed_makes_its_learning_rate_unusable():
    f = sweep(nan_at=("bnlab", 1.0))
    assert "with BN 0.03 to 0.3, 3 to 10" in f.verdict
    row = next(r for r in f.rows if r["arm"] == "BN, lr 1")
    assert row["seed states (own curve)"] == "9 trains, 1 diverged" and row["diverged"] == 1


def test_one_seed_is_never_clear():
    f = sweep(seeds=1)
    (j,) = f.primary
    assert j.wording.startswith("not testable")
    assert all(not c.clear for c in f.comparisons)
    assert ": reproduces" not in f.literature


def test_bn_only_on_a_users_network_is_not_tested():
    arms = [a for a in lr.arms(False) if a.tags["norm"] == "bnlab"]
    f = lr.analyze(results(arms, 3, lambda arm, seed, noise: [
        {"epoch": 1, "train_loss": 0.5, "test_acc": 0.8}]))
    assert f.primary == [] and f.literature.startswith("Not tested")
