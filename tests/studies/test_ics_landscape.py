"""The ics and landscape analyses on synthetic runs: a reversed effect flips the verdict, equal
arms give no clear difference, NaN seeds are failed and untestable, one seed is never clear."""

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bnlab.studies import ics, landscape
from bnlab.studies.base import Arm, ArmResult
from bnlab.train import TrainConfig

# per seed, shared by the arms (paired); the first five: the studies' default seeds
JITTER = (0.011, -0.017, 0.004, 0.013, -0.009, 0.006, -0.012, 0.015, -0.003, -0.008)
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


# ---- ics ----------------------------------------------------------------------------------------

def ics_results(drift: dict[str, float], acc: dict[str, float], seeds: int = 5,
                nan_arm: str | None = None, noise: dict[str, float] | None = None,
                spread: dict[str, tuple[float, ...]] | None = None) -> list[ArmResult]:
    """Drift per arm (plus jitter), noise floor 0.05 unless `noise` says, accuracy per arm
    plus jitter (and plus spread[arm][seed])."""
    out = []
    for k, arm in enumerate(ics.arms(False)):
        def make(s: int, arm: Arm = arm, k: int = k):
            d = drift[arm.name] + JITTER[s] * 0.1 + WOBBLE[(s + k) % 5] * 0.1
            nan = arm.name == nan_arm and s == 1
            floor = (noise or {}).get(arm.name, 0.05)
            probes = [{"step": 50 * i, "test_acc": acc[arm.name], "noise": floor,
                       "drift": None if i == 0 else (math.nan if nan and i == 3 else d),
                       "width": 1.0, "p15": -1.0, "p50": 0.0, "p85": 1.0} for i in range(6)]
            a = acc[arm.name] + JITTER[s] + WOBBLE[(s + k) % 5] + \
                (spread or {}).get(arm.name, (0.0,) * 5)[s]
            final = {"train_loss": math.nan if nan else 1.0 - a, "test_acc": a}
            if arm.name != "none":
                final["test_acc_precise"] = a + 0.001
            return final, probes
        out.append(result(arm, seeds, make))
    return out


PICTURE = {"none": 0.3, "bnlab": 0.1, "noisy-bn": 0.9}  # drift: BN less, noisy BN far more
GOOD = {"none": 0.70, "bnlab": 0.85, "noisy-bn": 0.85}


REL = ics.RELATIVE
CHECK = "drift: noisy BN vs BN (manipulation check)"


def test_ics_bn_reducing_drift_and_noisy_bn_training_well_is_consistent_with_both_papers():
    f = ics.analyze(ics_results(PICTURE, GOOD))
    t = {c.label + c.metric: c for c in f.comparisons}
    assert t["drift: BN vs none" + REL].word == "better"
    assert t[CHECK + REL].word == "worse"
    assert t["noisy BN vs BNtest_acc"].word == "no clear difference"
    assert f.literature.startswith("agrees with Ioffe & Szegedy")
    # not clearly worse is not shown equal: consistent with, never "agrees"
    assert "agrees with Santurkar" not in f.literature
    assert "consistent with Santurkar et al. (2018), not a confirmation" in f.literature
    assert "no equivalence test: absence of evidence" in f.literature
    assert all(not math.isnan(c.p_holm) for c in f.comparisons)  # all went through holm
    assert "manipulation check" in f.verdict
    assert "0.694 +- 0.012 with BN (better)" in f.headline
    assert "clearly above its floor" in f.verdict


def test_ics_noisy_bn_far_worse_but_not_clear_is_not_agreement():
    """Noisy BN 9.8 points worse on average with a huge spread: not clear, and not 'agrees'."""
    acc = {**GOOD, "noisy-bn": 0.752}
    f = ics.analyze(ics_results(PICTURE, acc, spread={"noisy-bn": (0.3, -0.3, 0.25, -0.25, 0)}))
    t = {c.label + c.metric: c for c in f.comparisons}
    assert t["noisy BN vs BNtest_acc"].word == "no clear difference"
    assert "agrees with Santurkar" not in f.literature
    assert "not clearly worse than BN" in f.literature and "not shown equal" in f.literature


def test_ics_drift_is_compared_scale_free():
    """Without BN the inputs are 20x smaller: its absolute drift above the floor (0.045) is
    below BN's (0.05), but relative to its own floor (0.005) it moves 10x, BN 2x."""
    drift = {"none": 0.05, "bnlab": 0.1, "noisy-bn": 0.9}
    f = ics.analyze(ics_results(drift, GOOD, noise={"none": 0.005}))
    t = {c.label + c.metric: c for c in f.comparisons}
    assert t["drift: BN vs none" + REL].word == "better"
    assert f.literature.startswith("agrees with Ioffe & Szegedy")


def test_ics_reversed_effects_flip_both_verdicts():
    drift = {"none": 0.1, "bnlab": 0.3, "noisy-bn": 0.9}
    acc = {"none": 0.70, "bnlab": 0.85, "noisy-bn": 0.60}  # noisy BN now trains clearly worse
    f = ics.analyze(ics_results(drift, acc))
    t = {c.label + c.metric: c for c in f.comparisons}
    assert t["drift: BN vs none" + REL].word == "worse"
    assert t["noisy BN vs BNtest_acc"].word == "worse"
    assert "does not reproduce Ioffe & Szegedy" in f.literature
    assert "BN clearly increases the relative drift" in f.literature
    assert "does not reproduce Santurkar et al." in f.literature


def test_ics_equal_arms_give_no_clear_difference():
    same = {"none": 0.3, "bnlab": 0.3, "noisy-bn": 0.3}
    f = ics.analyze(ics_results(same, {k: 0.8 for k in same}))
    drift = [c for c in f.comparisons if c.metric == REL]
    assert [c.word for c in drift] == ["no clear difference"] * 2
    assert "does not clearly reduce" in f.literature and "inconclusive" in f.literature


def test_ics_nan_seed_is_failed_and_untestable():
    results = ics_results(PICTURE, GOOD, nan_arm="bnlab")
    bn = results[1]
    assert bn.diverged == 1 and bn.failed == 1
    f = ics.analyze(results)
    t = {c.label + c.metric: c for c in f.comparisons}
    assert t["drift: BN vs none" + REL].word.startswith("not testable")
    assert not t["drift: BN vs none" + REL].clear
    assert math.isnan(f.rows[1]["drift"])
    assert "Ioffe & Szegedy (2015, Figure 1) cannot be tested" in f.literature
    assert "Santurkar et al. (2018)'s test cannot be tested" in f.literature
    assert "could not" not in f.literature


def test_ics_one_seed_is_never_clear():
    f = ics.analyze(ics_results(PICTURE, GOOD, seeds=1))
    assert not any(c.clear for c in f.comparisons)
    assert all(c.word.startswith("not testable") for c in f.comparisons)


def test_ics_drift_ignores_the_first_probe_and_propagates_nan():
    probes = [{"drift": None, "noise": 0.1}, {"drift": 0.3, "noise": 0.1},
              {"drift": 0.5, "noise": 0.3}]
    assert ics.drift_and_noise(probes) == pytest.approx((0.4, 0.5 / 3))
    probes[1]["noise"] = math.inf
    assert math.isnan(ics.drift_and_noise(probes)[1])
    assert all(math.isnan(v) for v in ics.drift_and_noise(probes[:1]))


def test_ics_figure_draws_from_synthetic_runs(tmp_path):
    f = ics.analyze(ics_results(PICTURE, GOOD))
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


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
    assert set(_claims(landscape.analyze(land_results(0.5))).values()) == {"not shown"}


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
