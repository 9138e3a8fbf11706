"""The landscape analysis on synthetic runs (ics: test_ics_analysis.py): a reversed effect flips
the verdict, equal arms give no clear difference, NaN seeds are failed and untestable, one seed
is never clear."""

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bnlab.studies import landscape
from bnlab.studies.base import Arm, ArmResult
from bnlab.train import TrainConfig

JITTER = (0.011, -0.017, 0.004, 0.013, -0.009)  # per seed, shared by the arms (paired)
WOBBLE = (0.002, -0.001, 0.0015, -0.002, 0.0005)  # per seed, differs between arms


@dataclass
class FakeRun:
    """What the analyses read from a Run: final metrics, config, metrics and probes."""

    config: TrainConfig
    final: dict[str, float]
    probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> list[dict[str, float]]:
        return [self.final]

    def has(self, key: str) -> bool:
        return key in self.final


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


def test_landscape_smoother_with_bn_agrees_with_santurkar():
    f = landscape.analyze(land_results(0.5))
    tests = ratio_tests(f)
    assert len(tests) == 9 and all(c.word == "better" for c in tests)
    assert all(c.diff == pytest.approx(math.log(0.5), abs=0.02) for c in tests)
    assert f.literature.startswith("agrees with Santurkar et al.")
    assert "0.5x" in f.verdict and "BN smoother" in f.verdict


def test_landscape_reversed_ratio_flips_the_verdict():
    f = landscape.analyze(land_results(2.0))
    assert all(c.word == "worse" for c in ratio_tests(f))
    assert f.literature.startswith("does not reproduce Santurkar et al.")
    assert "BN rougher" in f.verdict


def test_landscape_equal_arms_give_no_clear_difference():
    f = landscape.analyze(land_results(1.0))
    assert all(c.word == "no clear difference" for c in ratio_tests(f))
    assert "no clear smoothing" in f.literature


def test_landscape_nan_seed_is_failed_and_untestable():
    results = land_results(0.5, nan_seed=3)
    assert results[1].diverged == 1 and results[1].failed == 1
    f = landscape.analyze(results)
    assert all(c.word.startswith("not testable") for c in ratio_tests(f))
    assert "none was testable" in f.literature


def test_landscape_one_seed_is_never_clear():
    f = landscape.analyze(land_results(0.5, seeds=1))
    assert not any(c.clear for c in f.comparisons)


def test_landscape_pairs_by_step_and_plots(tmp_path):
    # a step only the BN arm probed is left out of the ratio: still exactly the 0.5 picture
    f = landscape.analyze(land_results(0.5, extra_step=True))
    assert all(c.word == "better" for c in ratio_tests(f))
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
