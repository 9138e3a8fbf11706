"""The landscape analysis on synthetic runs (ics: test_ics_analysis.py): a reversed effect flips
the verdict, equal arms give no clear difference, NaN seeds are failed and untestable, one seed
is never clear."""

import math
from dataclasses import replace

import pytest

from bnlab.studies import landscape
from bnlab.studies.base import Arm, ArmResult
from bnlab.studies.claims import EXACT_DISAGREES
from tests.studies.fakes import FinalRun as FakeRun

# per seed, shared by the arms (paired); the first five: the studies' default seeds
JITTER = (0.011, -0.017, 0.004, 0.013, -0.009, 0.006, -0.012, 0.015, -0.003, -0.008)
WOBBLE = (0.002, -0.001, 0.0015, -0.002, 0.0005)  # per seed, differs between arms


def result(arm: Arm, seeds: int, make) -> ArmResult:
    return ArmResult(arm, [FakeRun(replace(arm.config, seed=s), *make(s)) for s in range(seeds)])


# ---- landscape ----------------------------------------------------------------------------------

def land_results(ratio: float, seeds: int = 5, nan_seed: int | None = None,
                 extra_step: bool = False) -> list[ArmResult]:
    """Every measure of the BN arm is `ratio` times the no-BN arm's at the same step, up to a
    per-seed, per-step wobble."""
    out = []
    for arm in landscape.arms(False):
        bn = arm.tags["norm"] == "bnlab"

        def make(s: int, bn: bool = bn):
            probes = []
            for i in range(8 + (1 if extra_step and bn else 0)):
                base = 1.0 + 0.5 * math.sin(i + s)  # varies over steps and seeds: pairing
                w = 1.0 + (0.05 * math.cos(3 * i + 7 * s) if bn else 0.0)
                v = base * (ratio * w if bn else 1.0)
                if bn and s == nan_seed and i == 2:
                    v = math.nan
                probes.append({"step": 10 * i, **{k: v for k in landscape.MEASURES}})
            loss = math.nan if bn and s == nan_seed else 0.4
            final = {"train_loss": loss, "test_acc": 0.8 + JITTER[s]}
            if bn:
                final["test_acc_precise"] = 0.8 + JITTER[s]
            return final, probes
        out.append(result(arm, seeds, make))
    return out


def ratio_tests(f):
    return [c for c in f.comparisons if c.metric.startswith("log ")]


def _claims(f):
    return {j.claim.key: j.wording for j in f.primary}


def test_landscape_smoother_with_bn_reproduces_santurkar_at_ten_seeds():
    f = landscape.analyze(land_results(0.5, seeds=10))
    assert _claims(f) == {"bn-loss-smoother": "reproduces", "bn-gradient-smoother": "reproduces"}
    tests = ratio_tests(f)
    assert len(tests) == 9 and len(f.primary) == 2
    assert all(c.diff == pytest.approx(math.log(0.5), abs=0.02) for c in tests)
    exploratory = [c for c in f.exploratory if c.metric.startswith("log ")]
    assert len(exploratory) == 7 and all(c.word == "better" for c in exploratory)
    assert f.literature.count("reproduces") == 2
    assert "0.5x" in f.verdict and "BN smoother" in f.verdict
    assert "[claim bn-loss-smoother]" in f.verdict
    # five paired seeds: the exact floor calls neither claim
    assert set(_claims(landscape.analyze(land_results(0.5))).values()) == {EXACT_DISAGREES}


def test_landscape_reversed_ratio_contradicts():
    f = landscape.analyze(land_results(2.0, seeds=10))
    assert set(_claims(f).values()) == {"contradicts"}
    assert all(c.word == "worse" for c in f.exploratory if c.metric.startswith("log "))
    assert "BN rougher" in f.verdict


def test_landscape_equal_arms_do_not_reproduce_only_by_equivalence():
    f = landscape.analyze(land_results(1.0, seeds=10))
    assert all(c.word == "no clear difference" for c in f.exploratory
               if c.metric.startswith("log "))
    # the 5% per-step wobble is well inside the 0.1 log margin: equivalent
    assert set(_claims(f).values()) == {"does not reproduce"}


def test_landscape_nan_seed_is_failed_and_untestable():
    results = land_results(0.5, nan_seed=3)
    assert results[1].diverged == 1 and results[1].failed == 1
    f = landscape.analyze(results)
    assert all(c.word.startswith("not testable") for c in ratio_tests(f))
    assert all(j.wording.startswith("not testable") for j in f.primary)


def test_landscape_one_seed_is_never_clear():
    f = landscape.analyze(land_results(0.5, seeds=1))
    assert not any(c.clear for c in f.comparisons)


def test_landscape_pairs_by_step_and_plots(tmp_path):
    # a step only the BN arm probed is left out of the ratio: still exactly the 0.5 picture
    f = landscape.analyze(land_results(0.5, seeds=10, extra_step=True))
    assert all(c.word == "better" for c in f.exploratory if c.metric.startswith("log "))
    assert set(_claims(f).values()) == {"reproduces"}
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_landscape_figure_draws_with_a_failed_seed(tmp_path):
    """A NaN probe value (a diverged seed) leaves its steps out of the figure's bands."""
    f = landscape.analyze(land_results(0.5, nan_seed=3))
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
