"""The ics analysis on synthetic runs: the two primary claims (BN against no BN on the
relative drift; noisy BN against no BN on test accuracy), the manipulation check and the
train-loss penalty as an effect size, exploratory."""

import math
from dataclasses import replace

import pytest
from scipy import stats as sps

from bnlab.studies import ics
from bnlab.studies.base import Arm, ArmResult, check_families
from bnlab.studies.recompute import differences
from tests.studies.fakes import FinalRun as FakeRun
from tests.studies.fakes import record

# per seed, shared by the arms (paired), and per seed differing between arms
JITTER = (0.011, -0.017, 0.004, 0.013, -0.009, 0.006, -0.012, 0.008, -0.003, -0.001)
WOBBLE = (0.002, -0.001, 0.0015, -0.002, 0.0005, -0.0015, 0.001, -0.0005, 0.0025, -0.002)
SEEDS = ics.SEEDS


def ics_results(drift: dict[str, float], acc: dict[str, float], seeds: int = SEEDS,
                loss: dict[str, float] | None = None, nan_arm: str | None = None,
                spread: dict[str, tuple[float, ...]] | None = None) -> list[ArmResult]:
    """Drift per arm (noise floor 0.05), accuracy per arm, train loss per arm (default
    1 - accuracy), each plus a per-seed jitter shared by the arms and a wobble of its own."""
    out = []
    for k, arm in enumerate(ics.arms(False)):
        def make(s: int, arm: Arm = arm, k: int = k):
            wobble = WOBBLE[(s + k) % len(WOBBLE)]
            d = drift[arm.name] + 0.1 * (JITTER[s] + wobble)
            nan = arm.name == nan_arm and s == 1
            probes = [{"step": 50 * i, "test_acc": acc[arm.name], "noise": 0.05,
                       "drift": None if i == 0 else (math.nan if nan and i == 3 else d),
                       "width": 1.0, "p15": -1.0, "p50": 0.0, "p85": 1.0} for i in range(6)]
            a = acc[arm.name] + JITTER[s] + wobble + (spread or {}).get(arm.name, (0.0,) * 10)[s]
            lo = (loss or {}).get(arm.name, 1.0 - acc[arm.name]) - JITTER[s] + wobble
            final = {"train_loss": math.nan if nan else lo, "test_acc": a}
            if arm.name != "none":
                final["test_acc_precise"] = a + 0.001
            return final, probes
        out.append(ArmResult(arm, [FakeRun(replace(arm.config, seed=s), *make(s))
                                   for s in range(seeds)]))  # type: ignore[misc]
    return out


PICTURE = {"none": 0.3, "bnlab": 0.1, "noisy-bn": 0.9}  # drift: BN less, noisy BN far more
GOOD = {"none": 0.70, "bnlab": 0.85, "noisy-bn": 0.85}


def judged(f):
    return {j.claim.key: j for j in f.primary}


def explored(f, label, metric):
    return next(c for c in f.comparisons if c.label == label and c.metric == metric)


def test_less_drift_with_bn_and_noisy_bn_beating_none_reproduce_both_papers():
    f = ics.analyze(ics_results(PICTURE, GOOD))
    j = judged(f)
    less, noisy = j[ics.LESS_SHIFT.key], j[ics.NOISY_BEATS_NONE.key]
    assert less.wording == "reproduces" and noisy.wording == "reproduces"
    assert less.comparison.diff < 0 and noisy.comparison.diff == pytest.approx(0.15, abs=0.01)
    a, b = noisy.comparison.a.values, noisy.comparison.b.values
    assert noisy.comparison.p == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert f.literature.startswith('Ioffe & Szegedy 2015, "BN reduces internal covariate shift')
    assert f.literature.count(": reproduces") == 2 and "Santurkar et al. 2018, " in f.literature
    check_families("ics", f)  # the runner's check
    assert "the manipulation check, forced by the noise" in f.literature
    check = explored(f, "drift: noisy BN vs BN (manipulation check)", ics.RELATIVE)
    assert check.word == "higher"  # a check has no good direction: it says which way
    # the manipulation check and the floors are exploratory, never primary
    assert {j.claim.key for j in f.primary} == {ics.LESS_SHIFT.key, ics.NOISY_BEATS_NONE.key}
    assert all(not math.isnan(c.p_holm) for c in f.comparisons if c.testable)
    assert "clearly above its floor" in f.verdict


def test_a_small_clear_train_loss_penalty_sits_inside_the_margin():
    """The committed record's case: noisy BN's train loss clearly above BN's, but by 7.6% of
    BN's gain over no BN: inside +-0.25 of the gain (TOST), so not against Santurkar et al."""
    loss = {"none": 0.60, "bnlab": 0.375, "noisy-bn": 0.375 + 0.076 * 0.225}
    f = ics.analyze(ics_results(PICTURE, GOOD, loss=loss))
    assert explored(f, "noisy BN vs BN", "train_loss").word == "worse"
    shares = ics.penalty_shares({r.arm.name: r for r in ics_results(PICTURE, GOOD, loss=loss)})
    assert sum(shares) / len(shares) == pytest.approx(0.076, abs=0.01)
    assert "inside +-0.25 (TOST p < 0.001, exploratory)" in f.literature
    assert judged(f)[ics.NOISY_BEATS_NONE.key].wording == "reproduces"


def test_a_penalty_as_large_as_the_gain_is_not_inside_the_margin():
    loss = {"none": 0.60, "bnlab": 0.375, "noisy-bn": 0.60}
    f = ics.analyze(ics_results(PICTURE, GOOD, loss=loss))
    assert "not shown inside +-0.25" in f.literature


def test_reversed_effects_contradict_both_papers():
    drift = {"none": 0.1, "bnlab": 0.3, "noisy-bn": 0.9}
    acc = {"none": 0.80, "bnlab": 0.85, "noisy-bn": 0.60}  # noisy BN below no BN
    f = ics.analyze(ics_results(drift, acc))
    assert {j.wording for j in f.primary} == {"contradicts"}
    assert f.literature.count(": contradicts") == 2


def test_equal_arms_do_not_reproduce_and_the_failed_check_is_said():
    same = {"none": 0.3, "bnlab": 0.3, "noisy-bn": 0.3}
    f = ics.analyze(ics_results(same, {k: 0.8 for k in same}))
    assert {j.wording for j in f.primary} == {"does not reproduce"}
    assert "The manipulation check did not pass" in f.literature
    assert "does not test Santurkar et al.'s argument" in f.literature


def test_a_large_but_noisy_gain_is_not_shown():
    acc = {**GOOD, "noisy-bn": 0.75}
    f = ics.analyze(ics_results(PICTURE, acc, spread={"noisy-bn": (0.3, -0.3) * 5}))
    noisy = judged(f)[ics.NOISY_BEATS_NONE.key]
    assert noisy.wording == "not shown" and noisy.mde > noisy.comparison.diff > 0


def test_nan_seed_is_failed_and_untestable():
    results = ics_results(PICTURE, GOOD, nan_arm="bnlab")
    assert results[1].diverged == 1 and results[1].failed == 1
    f = ics.analyze(results)
    less = judged(f)[ics.LESS_SHIFT.key]
    assert less.wording.startswith("not testable") and math.isnan(f.rows[1]["drift"])
    assert "not testable" in f.literature
    assert "not testable (fewer than two seeds" in ics.penalty_text(
        ics.penalty_shares({r.arm.name: r for r in results}))


def test_one_seed_is_never_clear():
    f = ics.analyze(ics_results(PICTURE, GOOD, seeds=1))
    assert all(j.wording.startswith("not testable") for j in f.primary)
    assert not any(c.clear for c in f.comparisons)


def test_drift_ignores_the_first_probe_and_propagates_nan():
    probes = [{"drift": None, "noise": 0.1}, {"drift": 0.3, "noise": 0.1},
              {"drift": 0.5, "noise": 0.3}]
    assert ics.drift_and_noise(probes) == pytest.approx((0.4, 0.5 / 3))
    probes[1]["noise"] = math.inf
    assert math.isnan(ics.drift_and_noise(probes)[1])


def test_setup_states_the_design_and_the_figure_draws(tmp_path):
    assert ics.STUDY.seeds == SEEDS == 10 and f"{SEEDS} seeds" in ics.STUDY.setup
    assert "noisy BN against no BN on test accuracy" in ics.STUDY.setup
    f = ics.analyze(ics_results(PICTURE, GOOD))
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_every_comparison_recomputes_from_its_per_seed_values():
    """What test_docs_fresh checks on the published record (``studies.recompute``); arms at
    chance included."""
    assert differences(record("ics", ics.analyze(ics_results(PICTURE, GOOD)))) == []


def test_the_figure_draws_with_a_resumed_gap_and_a_failed_seed(tmp_path):
    """A resumed run's first probe has no drift (None, a gap) and a failed seed has a NaN:
    the bands leave those points out instead of failing (``report.figures.band``)."""
    results = ics_results(PICTURE, GOOD, nan_arm="noisy-bn")
    results[0].runs[2].probes[3]["drift"] = None  # resumed before this probe
    f = ics.analyze(results)
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_band_leaves_out_points_missing_in_any_seed():
    from bnlab.report.figures import band, new_figure

    _fig, ax = new_figure()
    band(ax, [0, 1, 2, 3], [[1.0, 2.0, math.nan, 4.0], [3.0, 4.0, 5.0, 8.0]], "x")
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [0, 1, 3] and list(ys) == [2.0, 3.0, 6.0]
    band_ys = ax.collections[0].get_paths()[0].vertices[:, 1]  # the +-std band's outline
    assert band_ys.min() == pytest.approx(2.0 - math.sqrt(2.0), rel=1e-12)
    assert band_ys.max() == pytest.approx(6.0 + math.sqrt(8.0), rel=1e-12)
    _fig2, ax2 = new_figure()
    band(ax2, [0, 1], [[math.nan, math.nan]], "all missing")
    assert not ax2.lines  # nothing finite: nothing drawn
