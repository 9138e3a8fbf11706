"""The analyses of reproduce, axes and inference-stats on synthetic results (no training):
a clear effect is worded from the Holm-corrected test, a reversed one flips it, equal arms
are "no clear difference", one seed is never clear, diverged seeds count as failed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bnlab.studies import axes, inference_stats, reproduce
from bnlab.studies.base import ArmResult
from bnlab.studies.claims import EXACT_DISAGREES, primary_table
from bnlab.studies.options import SHORT_STUDY_SEEDS, STUDY_SEEDS
from bnlab.studies.stats import ALPHA

# seed-to-seed variation shared by every arm (the first five: the studies' default seeds)
SPREAD = [0.00, 0.03, -0.02, 0.015, -0.025, 0.01, -0.005, 0.02, -0.015, 0.005]
JITTER = [0.001, -0.001, 0.0005, -0.0005, 0.0]  # per-arm noise, much smaller than an effect


class FakeDir:
    def read_done(self) -> dict[str, Any]:
        return {"device": "cpu"}


@dataclass
class FakeRun:
    config: Any
    final: dict[str, float]
    metrics: list[dict[str, float]] = field(default_factory=list)
    dir: FakeDir = field(default_factory=FakeDir)


def arm_result(arm, accs: list[float], *, losses: list[float] | None = None,
               precise: bool = True) -> ArmResult:
    runs = []
    for seed, acc in enumerate(accs):
        loss = 1.0 - acc if losses is None else losses[seed]
        final = {"test_acc": acc, "train_loss": loss, "train_acc": acc + 0.02,
                 "examples_per_sec": 1000.0, "wall_time": 1.0, "epoch": 2}
        if precise:
            final["test_acc_precise"] = acc  # the no-BN arms stand in with test_acc
        metrics = [{**final, "epoch": 1}, final]
        runs.append(FakeRun(replace(arm.config, seed=seed), final, metrics))
    return ArmResult(arm, runs)


def accs(mean: float, seeds: int = 5, jitter: int = 0) -> list[float]:
    return [mean + SPREAD[s] + JITTER[(s + jitter) % 5] for s in range(seeds)]


# --- reproduce -------------------------------------------------------------------------------

def repro(none: float, bn: float, torch: float, seeds: int, **kw: Any) -> Any:
    arms = {a.name: a for a in reproduce.arms(False)}
    return reproduce.analyze([
        arm_result(arms["no-bn"], accs(none, seeds, 1), precise=False, **kw),
        arm_result(arms["bnlab-bn"], accs(bn, seeds, 2)),
        arm_result(arms["torch-bn"], accs(torch, seeds, 3))])


def test_reproduce_one_seed_tests_nothing_and_reports_the_runs():
    f = repro(0.78, 0.86, 0.86, 1)
    assert f.comparisons and not any(c.testable or c.clear for c in f.comparisons)
    assert [j.wording for j in f.primary] == ["not testable (1 seed in the first arm)"]
    assert "better" not in f.verdict and "not testable" in f.verdict
    assert "no-bn: loss" in f.verdict and "bnlab-bn: loss" in f.verdict
    assert "Dive into Deep Learning" in f.literature and "not testable" in f.literature
    assert "0.860 vs 0.779 without BN" in f.headline and "(1 seed)" in f.headline
    # the page (the primary table, headline and verdict) says the claim is not testable
    assert "| not testable (1 seed in the first arm) |" in primary_table(f.primary)
    assert "(not testable)" in f.headline


def test_reproduce_bn_clearly_better_reproduces_the_textbook_at_eight_seeds():
    f = repro(0.78, 0.86, 0.86, 8)
    (j,) = f.primary
    assert j.comparison.test == "paired t" and j.comparison.metric == "test_acc"
    assert j.wording == "reproduces" and "reproduces" in f.literature
    twin = next(c for c in f.exploratory if "torch" in c.label and c.metric == "test_acc")
    assert twin.word == "no clear difference"
    assert {c.metric for c in f.exploratory if "no BN" in c.label} == {"train_loss",
                                                                      "test_acc_precise"}


def test_reproduce_five_paired_seeds_cannot_call_it():
    """The same clear effect at five paired seeds: the sign-flip test's floor is 0.0625, so
    the rule says "not shown", and the MDE says nothing was detectable."""
    (j,) = repro(0.78, 0.86, 0.86, 5).primary
    assert j.comparison.p_holm < ALPHA and j.p_exact == pytest.approx(0.0625)
    assert j.wording == EXACT_DISAGREES and math.isinf(j.mde)
    # the headline's word comes from the judgement: never "better" beside "not shown"
    f = repro(0.78, 0.86, 0.86, 5)
    assert not f.primary[0].comparison.clear
    assert ("(claim bn-beats-no-bn: not shown (the exact test does not agree); PreciseBN, "
            "exploratory: better)") in f.headline


def test_reproduce_reversed_effect_contradicts():
    (j,) = repro(0.86, 0.78, 0.78, 8).primary
    assert j.comparison.diff < 0 and j.wording == "contradicts"


def test_reproduce_equal_arms_do_not_reproduce_only_by_equivalence():
    f = repro(0.80, 0.80, 0.80, 8)
    (j,) = f.primary
    assert not j.comparison.clear and j.p_tost < ALPHA and j.wording == "does not reproduce"
    assert f.literature.startswith("Dive into Deep Learning (Zhang et al.), \"LeNet with BN")


def test_reproduce_diverged_seed_is_failed_and_untestable():
    f = repro(0.78, 0.86, 0.86, 5, losses=[math.nan, 0.5, 0.5, 0.5, 0.5])
    assert f.rows[0]["diverged"] >= 1 and f.rows[0]["failed"] >= 1
    loss = next(c for c in f.comparisons if c.metric == "train_loss")
    assert not loss.testable and not loss.clear


def test_reproduce_run_layout_keeps_the_documented_paths():
    assert reproduce.STUDY.seeds == 1
    assert reproduce.run_path("no-bn", 0, 1) == "no-bn"
    assert reproduce.run_path("no-bn", 3, 5) == "no-bn-s3"


# --- axes ------------------------------------------------------------------------------------

AXES = {"none": 0.70, "bnlab": 0.86, "per-activation": 0.84, "layer": 0.83, "group": 0.85,
        "instance-conv": 0.80}


def axes_findings(means: dict[str, float], seeds: int = 5) -> Any:
    arms = axes.arms(False)
    return axes.analyze([arm_result(a, accs(means[a.name], seeds, i),
                                    precise=a.name in ("bnlab", "per-activation"))
                         for i, a in enumerate(arms)])


def _word(f: Any, label_start: str) -> str:
    return next(c.word for c in f.comparisons if c.label.startswith(label_start)
                and c.metric == "test_acc")


def _wording(f: Any) -> dict[str, str]:
    return {j.claim.key: j.wording for j in f.primary}


def test_axes_other_layers_behind_bn_reproduce_wu_he_at_eight_seeds():
    f = axes_findings(AXES, seeds=8)
    assert _wording(f) == {"layer-behind-bn": "reproduces", "group-behind-bn": "reproduces",
                           "instance-conv-behind-bn": "reproduces"}
    assert len(f.comparisons) == 2 * (len(AXES) - 1)  # 3 primary + 7 exploratory
    assert len(f.primary) == 3 and len(f.exploratory) == 7
    assert all(c.test == "paired t" and not math.isnan(c.p_holm) for c in f.comparisons)
    assert _word(f, "no norm") == "worse"  # exploratory: worded as data, not a verdict
    assert f.literature.count("Wu & He 2018") == 3 and "reproduces" in f.literature


def test_axes_five_paired_seeds_call_nothing():
    f = axes_findings(AXES)
    assert set(_wording(f).values()) == {EXACT_DISAGREES}
    assert all(math.isinf(j.mde) for j in f.primary)


def test_axes_level_layers_are_not_shown_or_equivalent_never_does_not_reproduce_by_default():
    """LayerNorm clearly behind; GroupNorm level with BN within the 0.005 margin (TOST clear
    at 8 seeds): 'does not reproduce' comes only from that equivalence."""
    f = axes_findings({**AXES, "group": 0.86, "instance-conv": 0.855}, seeds=8)
    w = _wording(f)
    assert w["layer-behind-bn"] == "reproduces"
    assert w["group-behind-bn"] == "does not reproduce"
    j = next(j for j in f.primary if j.claim.key == "group-behind-bn")
    assert j.p_tost < ALPHA and not j.comparison.clear


def test_axes_reversed_effect_contradicts():
    f = axes_findings({**AXES, "layer": 0.89}, seeds=8)
    assert _wording(f)["layer-behind-bn"] == "contradicts"
    assert "LayerNorm behind BN: contradicts" in f.headline


def test_axes_precise_accuracy_stays_exploratory():
    """BN's running averages lag: the claims judge the running-average accuracy; the PreciseBN
    one is reported in the exploratory family and the headline."""
    arms = axes.arms(False)
    means = {**AXES, "layer": 0.845, "bnlab": 0.83}
    res = [arm_result(a, accs(means[a.name], 5, i),
                      precise=a.name in ("bnlab", "per-activation"))
           for i, a in enumerate(arms)]
    for run in next(r for r in res if r.arm.name == "bnlab").runs:
        run.final["test_acc_precise"] += 0.03
    f = axes.analyze(res)
    assert all(j.comparison.metric == "test_acc" for j in f.primary)
    assert any(c.metric == "test_acc_precise" and c.label.startswith("LayerNorm")
               for c in f.exploratory)
    assert "LayerNorm behind BN: not shown" in f.headline
    assert "exploratory, clearly worse: no norm, LayerNorm" in f.headline


def test_axes_one_seed_is_never_clear():
    f = axes_findings(AXES, seeds=1)
    assert not any(c.clear for c in f.comparisons)
    assert all(j.wording.startswith("not testable") for j in f.primary)


def test_axes_holm_is_stricter_than_the_raw_p():
    f = axes_findings({**AXES, "group": 0.8605})
    c = next(c for c in f.comparisons if c.label.startswith("GroupNorm"))
    assert c.p_holm >= c.p


# --- inference-stats -------------------------------------------------------------------------

def values(delta: dict[str, float], seeds: int = 5) -> dict[str, list[float]]:
    """Every method's accuracy on the same models: the models' own spread (shared) plus the
    method's effect."""
    names = ["EMA as trained (0.1)", "EMA 0.1, 200 batches", "PreciseBN 10^2",
             "PreciseBN 10^4", "test batch 256", "test batch 1"]
    out = {}
    for i, name in enumerate(names):
        out[name] = [0.80 + SPREAD[s] + delta.get(name, 0.0) + JITTER[(s + i) % 5] / 5
                     for s in range(seeds)]
    out["test batch 1"] = [math.nan] * seeds
    return out


def test_inference_precise_better_reproduces_wu_johnson_and_is_paired():
    """The issue's case: PreciseBN ahead of the EMA. With one primary comparison (the other
    methods exploratory), ten paired seeds call it; the near-duplicate methods no longer
    raise the bar."""
    rows, verdict, primary, tests, headline, lit = inference_stats.analyze_values(
        values({"PreciseBN 10^4": 0.01, "PreciseBN 10^2": -0.02}, seeds=10))
    (j,) = primary
    assert j.claim.key == "precise-beats-ema" and j.comparison.test == "paired t"
    # the models' spread (+-0.02) dwarfs the effect (0.01): only pairing makes it clear
    assert j.comparison.p_holm == j.comparison.p < ALPHA and j.wording == "reproduces"
    by = {c.label.split(" vs ")[0]: c for c in tests}
    assert "PreciseBN 10^4" not in by and by["PreciseBN 10^2"].word == "worse"
    assert all(c.test == "paired t" for c in tests)
    assert lit == ('Wu & Johnson 2021, "Population statistics (PreciseBN) evaluate better than '
                   'the EMA the model trained with": reproduces')
    assert "test batch 1" not in by and "Undefined" in verdict
    table = {r["arm"]: r["vs EMA as trained"] for r in rows}
    assert table["test batch 1"] == "undefined" and table["PreciseBN 10^4"] == "claim: reproduces"
    assert "PreciseBN 10^4 vs EMA as trained: reproduces" in headline


def test_inference_five_seeds_are_not_shown_with_the_mde():
    _, _, (j,), _, _, _ = inference_stats.analyze_values(values({"PreciseBN 10^4": 0.01}))
    assert j.wording == EXACT_DISAGREES and math.isinf(j.mde) and "MDE none at 5 seeds" in j.text()


def test_inference_reversed_effect_contradicts():
    _, _, (j,), _, _, lit = inference_stats.analyze_values(
        values({"PreciseBN 10^4": -0.01}, seeds=10))
    assert j.wording == "contradicts" and lit.endswith(": contradicts")


def test_inference_equal_methods_are_equivalent_not_a_failure_to_call():
    _, _, (j,), tests, _, _ = inference_stats.analyze_values(values({}, seeds=10))
    assert all(c.word == "no clear difference" for c in tests)
    assert j.p_tost < ALPHA and j.wording == "does not reproduce"


def test_inference_one_seed_is_not_testable():
    _, _, (j,), tests, _, lit = inference_stats.analyze_values(
        values({"PreciseBN 10^4": 0.05}, 1))
    assert tests and not any(c.testable or c.clear for c in tests)
    assert j.wording.startswith("not testable") and "not testable" in lit


def test_inference_a_nan_seed_is_not_testable():
    v = values({"PreciseBN 10^4": 0.05})
    v["PreciseBN 10^4"][2] = math.nan
    _, _, (j,), _, _, _ = inference_stats.analyze_values(v)
    assert not j.comparison.testable and j.wording.startswith("not testable")


def test_inference_stats_has_no_running_average_training_arm():
    assert [a.name for a in inference_stats.arms(False)] == ["bn"]
    assert "train-with-running-averages" in inference_stats.STUDY.setup
    assert (inference_stats.STUDY.seeds, axes.STUDY.seeds) == (SHORT_STUDY_SEEDS, STUDY_SEEDS)


def test_inference_ema_label_states_the_weight_left_on_the_reset_values():
    assert inference_stats.ema_name(0.01, 200) == (
        "EMA 0.01 from reset, 200 batches (13% of the weight still on the reset values)")
    assert inference_stats.ema_name(0.1, 200) == "EMA 0.1, 200 batches"  # 0.9^200 ~ 7e-10
    import torch

    from bnlab.data import BatchLoader

    tiny = BatchLoader(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                       2, shuffle=False)
    names = list(inference_stats.methods(tiny, tiny, 2))
    assert "EMA 0.01, 200 batches" not in names
    assert inference_stats.ema_name(0.01) in names and "EMA 0.1, 200 batches" in names
