"""momentum: the analysis on synthetic runs (no training)."""

import math
from dataclasses import replace

import pytest

from bnlab.studies import momentum as mo
from bnlab.studies.base import ArmResult
from bnlab.studies.claims import EXACT_DISAGREES
from bnlab.train import TrainConfig
from tests.studies.fakes import FakeRun

ZIGZAG = [0.6, 0.7, 0.5, 0.72, 0.52, 0.74, 0.55, 0.75]
SMOOTH = [0.6, 0.65, 0.68, 0.7, 0.72, 0.73, 0.74, 0.75]


def fake(running, precise, seeds=5, loss=lambda m, s: 0.4):
    """`running(m)` / `precise(m)`: per-epoch accuracy curves of each momentum's arm."""
    out = []
    for k, arm in enumerate(mo.arms(False)):
        m = arm.tags["bn_momentum"]
        runs = []
        for s in range(seeds):
            jitter = 0.004 * ((s + 2 * k) % 5 - 2)  # a permutation per arm: mean 0 over 5 seeds
            metrics = [{"epoch": e + 1, "train_loss": loss(m, s),
                        # seeds differ in how much each curve swings and where it sits (a
                        # per-seed amplitude and offset): paired differences have a spread
                        "test_acc": 0.7 + (1 + 0.03 * ((s + 2) % 5)) * (a - 0.7) + jitter,
                        "test_acc_precise": 0.7 + (1 + 0.05 * s) * (p - 0.7) + jitter
                        + 0.003 * ((3 * s + k) % 5 - 2)}
                       for e, (a, p) in enumerate(zip(running(m), precise(m), strict=True))]
            runs.append(FakeRun(replace(arm.config, seed=s), metrics))
        out.append(ArmResult(arm, runs))
    return out


def test_swing_and_gap_measures():
    assert mo.swing([0.5, 0.9, 0.6, 0.8]) == pytest.approx((0.3 + 0.2) / 2)  # second half
    assert math.isnan(mo.swing([0.5]))
    run = FakeRun(TrainConfig(), [{"test_acc": 0.5, "test_acc_precise": 0.7},
                                  {"test_acc": 0.8, "test_acc_precise": 0.7}])
    assert mo.gaps(run) == pytest.approx([0.2, -0.1])
    assert mo.mean_abs_gap(run) == pytest.approx(0.15)


def test_running_averages_swing_more_and_the_verdict_flips_when_reversed(tmp_path):
    results = fake(lambda m: ZIGZAG, lambda m: SMOOTH)
    tests = mo.comparisons(results)
    within = tests[(0.1, "swing within")]  # a primary comparison: judged, not worded
    # PreciseBN swings less by the t-test; below 8 seeds "clear" needs the exact test too
    assert within.diff < 0 and within.p_holm < 0.05 and not within.clear
    findings = mo.analyze(results)
    words = {j.claim.key: j.wording for j in findings.primary}
    assert words["precise-swings-less"] == EXACT_DISAGREES  # 5 paired seeds: the exact floor
    assert findings.literature.startswith("Wu & Johnson 2021")
    assert "0.1" in findings.headline and findings.verdict
    findings.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

    rev = fake(lambda m: SMOOTH, lambda m: ZIGZAG)
    assert mo.comparisons(rev)[(0.1, "swing within")].diff > 0
    ten = mo.analyze(fake(lambda m: ZIGZAG, lambda m: SMOOTH, seeds=10))
    assert {j.claim.key: j.wording for j in ten.primary}["precise-swings-less"] == "reproduces"
    rev10 = mo.analyze(fake(lambda m: SMOOTH, lambda m: ZIGZAG, seeds=10))
    assert {j.claim.key: j.wording for j in rev10.primary}["precise-swings-less"] == \
        "contradicts"
    assert "claim precise-swings-less: contradicts" in rev10.verdict


def test_a_smaller_momentum_that_lags_more_is_worse():
    def running(m):
        lag = 0.2 if m < 0.1 else 0.0
        return [a - lag for a in SMOOTH]

    tests = mo.comparisons(fake(running, lambda m: SMOOTH))
    assert tests[(0.01, "mean_abs_gap")].diff > 0 and tests[(0.03, "mean_abs_gap")].word == "worse"
    assert tests[(0.01, "test_acc")].word == "worse"
    assert tests[(0.3, "mean_abs_gap")].word == "no clear difference"
    primary, _ = mo.judged(fake(running, lambda m: SMOOTH, seeds=10))
    assert {j.claim.key: j.wording for j in primary}["small-momentum-lags"] == "reproduces"
    assert len(primary) == 2  # the primary family: the two claims only


def test_equal_arms_give_no_clear_difference():
    tests = mo.comparisons(fake(lambda m: SMOOTH, lambda m: SMOOTH))
    assert {c.word for c in tests.values()} == {"no clear difference"}


def test_diverged_seeds_fail_by_the_stats_rule_and_do_not_crash(tmp_path):
    def loss(m, s):
        return math.nan if m == 0.9 and s < 3 else 0.4

    results = fake(lambda m: ZIGZAG, lambda m: SMOOTH, loss=loss)  # 5 seeds
    findings = mo.analyze(results)
    row = next(r for r in findings.rows if r["bn_momentum"] == 0.9)
    assert row["diverged"] == 3 and row["failed"] == 3
    assert "3/5 seeds failed" in findings.verdict
    findings.plot(tmp_path / "f.png")


def test_one_seed_is_never_clear():
    findings = mo.analyze(fake(lambda m: ZIGZAG, lambda m: SMOOTH, seeds=1))
    assert findings.comparisons and not any(c.clear for c in findings.comparisons)
    assert "not testable" in findings.literature
