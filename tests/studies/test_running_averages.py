"""train-with-running-averages: the analysis on synthetic runs (no training)."""

import math
from dataclasses import replace

import pytest
import torch

from bnlab.models import build_model
from bnlab.studies import running_averages as ra
from bnlab.studies.base import ArmResult, lead_texts
from bnlab.studies.claims import EXACT_DISAGREES
from bnlab.studies.probes.running_averages import norm_weights
from tests.studies.fakes import FakeRun


def noise(seed: int, arm: int = 0) -> float:
    """Seed-to-seed scatter of +-0.02, a different pattern for each arm, mean 0 over 5 seeds."""
    return 0.01 * (((seed + 1) * (7 * arm + 1)) % 5 - 2)


def fake(acc, loss=None, bias=None, seeds=5, epochs=3):
    """Synthetic results for the study's arms: `acc(norm, lr)` the final test accuracy,
    `loss(norm, lr, seed)` the final train loss, `bias(norm, lr)` the final pre-norm bias norm."""
    loss = loss or (lambda norm, lr, seed: 0.5 + noise(seed))
    bias = bias or (lambda norm, lr: 1.0)
    out = []
    for k, arm in enumerate(ra.arms(False)):
        norm, lr = arm.tags["norm"], arm.tags["lr"]
        runs = []
        for s in range(seeds):
            a = acc(norm, lr) + noise(s, k)
            metrics = [{"epoch": e, "train_loss": loss(norm, lr, s) + (epochs - e) * 0.1,
                        "train_acc": a, "test_acc": a - 0.01 * (epochs - e),
                        "test_acc_precise": a + 0.01} for e in range(1, epochs + 1)]
            probes = [{"step": k * 10, "epoch": 1, "w_norm": 16.0, "b_norm": 0.7 + k *
                       (bias(norm, lr) - 0.7) / 3 + abs(noise(s)), "gamma_norm": 15.0,
                       "beta_norm": 0.1} for k in range(4)]
            runs.append(FakeRun(replace(arm.config, seed=s), metrics, probes))
        out.append(ArmResult(arm, runs))
    return out


def ioffe(norm, lr):
    """Ioffe & Szegedy's story: without the gradient, training fails at the larger rate."""
    if norm in ("batch-stats-detached", "running-stats") and lr == 1.0:
        return 0.12  # at chance: failed by the stats rule
    return 0.80


def test_missing_gradient_is_worse_and_the_verdict_flips_when_reversed(tmp_path):
    findings = ra.analyze(fake(ioffe, bias=lambda n, lr: 30.0 if n != "bnlab" else 1.0))
    tests = ra.comparisons(fake(ioffe, bias=lambda n, lr: 30.0 if n != "bnlab" else 1.0))
    assert tests[(1.0, "batch-stats-detached", 0.1, "test_acc")].word == "worse"
    assert tests[(1.0, "renorm-wide", 0.1, "test_acc")].word == "no clear difference"
    drift = tests[(1.0, "bias drift")]  # t-test clear; the exact test must agree below 8
    assert drift.diff > 0 and drift.p_holm < 0.05 and not drift.clear
    assert tests[(0.1, "batch-stats-detached", 0.1, "test_acc")].word == "no clear difference"
    # five paired seeds: the exact sign-flip floor (0.0625) calls neither claim
    assert {j.wording for j in findings.primary} == {EXACT_DISAGREES}
    assert findings.literature.startswith("Ioffe & Szegedy 2015 (section 2)")
    assert "Ioffe 2017" not in findings.literature  # Batch Renorm is exploratory
    assert "losing the gradient through the statistics is clearly worse" in findings.verdict
    assert all(not c.testable or not math.isnan(c.p_holm) for c in findings.comparisons)
    findings.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

    def reversed_(norm, lr):
        return 0.80 if norm in ("batch-stats-detached", "running-stats") else 0.5

    assert "not shown" in ra.analyze(fake(reversed_)).literature  # 5 seeds
    tests = ra.comparisons(fake(reversed_))
    assert tests[(1.0, "batch-stats-detached", 0.1, "test_acc")].word == "better"
    assert tests[(1.0, "renorm-wide", 0.1, "test_acc")].word == "no clear difference"
    rev10 = ra.analyze(fake(reversed_, seeds=10))
    assert {j.claim.key: j.wording for j in rev10.primary}[
        "running-averages-train-worse"] == "contradicts"


def test_the_issue_case_biases_grow_in_every_detached_seed_at_ten_seeds():
    """The detached biases grow in 10 of 10 seeds while BN's do not: with two claims in the
    primary family (not 24 comparisons), ten seeds call it."""
    findings = ra.analyze(fake(ioffe, bias=lambda n, lr: 30.0 if n != "bnlab" else 1.0,
                               seeds=10))
    words = {j.claim.key: j.wording for j in findings.primary}
    assert words == {"detached-biases-grow": "reproduces",
                     "running-averages-train-worse": "reproduces"}
    # 24 comparisons: the 2 claims, and 22 others less lr 1's stale-vs-fresh comparison, whose
    # two arms are both at chance (a floor)
    assert len(findings.primary) == 2 and len(findings.exploratory) == 21
    assert "claim running-averages-train-worse: reproduces" in findings.verdict


def test_attribution_needs_both_evaluations():
    """Detached at lr 1: at chance with the running averages, level with BN with PreciseBN
    statistics: not 'clearly worse', the disagreement is worded."""
    results = fake(ioffe, bias=lambda n, lr: 30.0 if n != "bnlab" else 1.0)
    for k, res in enumerate(results):
        if res.arm.name == "batch-stats-detached-lr1":
            for s, run in enumerate(res.runs):
                run.metrics[-1]["test_acc_precise"] = 0.81 + noise(s, k)
    findings = ra.analyze(results)
    assert "losing the gradient through the statistics is clearly worse" not in \
        findings.verdict
    assert ("losing the gradient through the statistics: the two evaluations disagree "
            "(running averages: worse; PreciseBN: no clear difference)") in findings.verdict


def test_equal_arms_give_no_clear_difference():
    tests = ra.comparisons(fake(lambda n, lr: 0.8))
    assert {c.word for c in tests.values()} == {"no clear difference"}
    # the seeds' scatter (+-0.02) is wider than the 0.01 margin: not shown, never "does not
    # reproduce" without the equivalence test
    words = {j.claim.key: j.wording for j in ra.analyze(fake(lambda n, lr: 0.8)).primary}
    assert words["running-averages-train-worse"] == "not shown"


def test_diverged_seeds_fail_by_the_stats_rule_and_do_not_crash(tmp_path):
    def loss(norm, lr, seed):
        return math.nan if norm == "running-stats" and lr == 1.0 and seed < 2 else 0.5

    def bias(norm, lr):
        return math.nan if norm == "batch-stats-detached" and lr == 1.0 else 1.0

    results = fake(lambda n, lr: 0.8, loss=loss, bias=bias)
    findings = ra.analyze(results)
    rows = {r["arm"]: r for r in findings.rows}
    bad = rows["running averages, lr 1, momentum 0.1"]
    assert bad["diverged"] == 2 and bad["failed"] == 2
    assert bad["broke at epoch (per seed)"] == "1, 1, -, -, -"  # NaN in every epoch
    assert rows["batch stats, detached, lr 1"]["final pre-norm bias norm"] == "diverged 5/5"
    tests = ra.comparisons(results)
    assert not tests[(1.0, "bias drift")].testable
    findings.plot(tmp_path / "f.png")


def test_at_chance_counts_as_failed_and_broke_at_reports_the_epoch():
    metrics = [{"epoch": 1, "train_loss": 1.0, "test_acc": 0.5},
               {"epoch": 2, "train_loss": 2.3, "test_acc": 0.1},
               {"epoch": 3, "train_loss": 2.3, "test_acc": 0.1}]
    assert ra.broke_at(metrics) == 2
    assert ra.broke_at(metrics[:1]) is None
    assert ra.broke_at([*metrics, {"epoch": 4, "train_loss": 0.9, "test_acc": 0.6}]) is None
    results = fake(lambda n, lr: 0.11 if n == "running-stats" else 0.8)
    assert all(r.failed == 5 for r in results if r.arm.tags["norm"] == "running-stats")


def test_one_seed_is_never_clear():
    findings = ra.analyze(fake(ioffe, seeds=1))
    assert findings.comparisons and not any(c.clear for c in findings.comparisons)
    assert "not testable" in findings.literature


def test_norm_weights_probe_reads_the_layers_feeding_each_norm():
    model = build_model("lenet-bn", "batch-stats-detached")
    got = norm_weights(model)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fed = convs[:4]  # the last linear layer feeds no norm layer
    expected = math.sqrt(sum(float(m.weight.detach().square().sum()) for m in fed))
    assert got["w_norm"] == pytest.approx(expected)
    assert got["gamma_norm"] == pytest.approx(math.sqrt(6 + 16 + 120 + 84))
    assert got["beta_norm"] == 0.0


def test_arms_at_chance_are_a_floor_not_a_comparison():
    """Ioffe's story puts both arms without the gradient at chance at lr 1: they are not
    compared with each other (a floor), while each is still compared with BN, its reference,
    which trains; nothing floored enters a Holm family, and the verdict says why."""
    primary, tests, not_judged, floors = ra.judged(fake(ioffe))
    assert floors == {(1.0, "staleness"): "both at chance"}
    assert (1.0, "staleness") not in tests and (0.1, "staleness") in tests
    assert (1.0, "batch-stats-detached", 0.1, "test_acc") in tests
    assert {j.claim.key for j in primary} == {"detached-biases-grow",
                                              "running-averages-train-worse"}
    assert not_judged == {}
    verdict = ra.analyze(fake(ioffe)).verdict
    assert ("stale vs fresh statistics without gradient: not compared (both at chance)"
            in verdict)


def test_bn_at_chance_judges_no_accuracy_claim_and_says_why():
    """Every arm at chance at lr 1, BN included: no accuracy comparison is made there (both at
    chance), the accuracy claim is listed as not judged with the floor as the reason (not
    'did not run'), and the texts name it; the bias growth, a mechanism and not an accuracy,
    is still compared and its claim judged."""
    def acc(norm, lr):
        return 0.12 if lr == 1.0 else 0.80

    primary, tests, not_judged, floors = ra.judged(fake(acc))
    assert [j.claim.key for j in primary] == ["detached-biases-grow"]
    assert not any(k[0] == 1.0 for k in tests if k != (1.0, "bias drift"))
    assert {k for k in floors if k[0] == 1.0} == {
        (1.0, "batch-stats-detached", 0.1), (1.0, "renorm-wide", 0.1),
        (1.0, "running-stats", 0.01), (1.0, "running-stats", 0.1), (1.0, "running-stats", 0.5),
        (1.0, "staleness")}
    why = "at lr 1: both at chance"
    assert not_judged == {"running-averages-train-worse": why}
    findings = ra.analyze(fake(acc))
    assert findings.not_judged == not_judged
    assert "at lr 1 the ingredients cannot be separated (not compared" in findings.verdict
    verdict, headline, literature = lead_texts(findings)
    named = f"[running-averages-train-worse] not judged ({why})"
    assert named in verdict.split("\n")[0] and named in headline
    assert "claim [running-averages-train-worse]: not judged (at lr 1" in literature


def test_a_reference_alone_at_chance_is_never_measured_from():
    """BN alone at chance at lr 1: nothing is measured from it ('its reference ... at
    chance'); the detached arm alone at chance: running averages are not measured from it."""
    def bn_down(norm, lr):
        return 0.12 if (norm, lr) == ("bnlab", 1.0) else 0.80

    _, _, not_judged, floors = ra.judged(fake(bn_down))
    assert floors[(1.0, "renorm-wide", 0.1)] == "its reference (BN, lr 1) at chance"
    assert not_judged["running-averages-train-worse"].startswith(
        "at lr 1: its reference (BN, lr 1) at chance")

    def det_down(norm, lr):
        return 0.12 if (norm, lr) == ("batch-stats-detached", 1.0) else 0.80

    _, tests, _, floors = ra.judged(fake(det_down))
    assert floors == {(1.0, "staleness"): "its reference (batch stats, detached, lr 1) at chance"}
    assert (1.0, "batch-stats-detached", 0.1, "test_acc") in tests  # BN is its reference


def test_the_claims_name_the_arms_they_compare():
    labels = {a.label for a in ra.arms(False)}
    for claim in ra.CLAIMS.values():
        assert {claim.a, claim.b} <= labels
