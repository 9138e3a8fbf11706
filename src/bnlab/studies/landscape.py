"""Santurkar et al. (2018): does BN smooth the loss landscape?

Every `every` steps, after the gradient g of the step's batch is computed and before the
optimizer moves, a probe walks along -g with step sizes eta in ETAS (times the learning rate),
on the same batch, and records: the range of the loss over those points ("loss landscape"),
the largest change of the gradient ||g(w - eta g) - g(w)|| ("gradient predictiveness"), and
the effective beta-smoothness, max ||g(w - eta g) - g(w)|| / ||eta g||. It restores weights,
gradients and BN buffers afterwards, so the probed run trains exactly like an unprobed one.

The arms with and without BN differ in their weights, so a step is paired by seed and step
index: seed s of both arms sees the same batches in the same order, and at each probed step t
the ratio r_t = m_BN(t) / m_none(t) of each measure m is taken. Per seed, the ratios are
summarized by their geometric mean over steps, exp(mean_t log r_t); over seeds, the mean log
ratio is tested against 0 (a paired t on the per-seed mean logs), at each learning rate. The
primary comparisons are Santurkar et al.'s two claims at lr 0.1 (``CLAIMS``: loss range and
beta-smoothness smaller with BN), Holm over those two; every other comparison is exploratory,
Holm over its own family. A ratio below 1 means smoother with BN.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    put_spread,
    summarize,
)
from bnlab.studies.claims import Claim, Judgement, judge_keyed, literature_text
from bnlab.studies.options import SHORT_STUDY_SEEDS
from bnlab.studies.probes.landscape import LandscapeProbe
from bnlab.studies.stats import Comparison, compare, p_is
from bnlab.train import Run, TrainConfig

LRS = (0.02, 0.1, 0.5)
LABELS = {"none": "without BN", "bnlab": "with BN"}
MEASURES = {"loss_range": "loss range", "grad_change": "gradient change",
            "beta": "beta-smoothness"}
# Santurkar et al.'s two claims (``bnlab.studies.claims``), judged at lr 0.1 (the middle of
# the sweep, and the rate quick mode runs): with BN the loss changes less along the gradient
# (Lipschitzness) and the gradient changes less (effective beta-smoothness). The gradient
# change (a near duplicate of beta), the other rates and the accuracies are exploratory.
# Margin: 0.1 in the log ratio (a 10% smaller or larger measure).
CLAIM_LR = 0.1
PAPER = "Santurkar et al. 2018"
CLAIMS = {
    (CLAIM_LR, "loss_range"): Claim(
        "bn-loss-smoother", "With BN the loss changes less along the gradient (a smoother, "
        "more Lipschitz loss)", PAPER, "log loss range", -1, 0.1, "no BN", "BN"),
    (CLAIM_LR, "beta"): Claim(
        "bn-gradient-smoother", "With BN the gradient changes less along the gradient (a "
        "smaller effective beta-smoothness)", PAPER, "log beta-smoothness", -1, 0.1, "no BN",
        "BN"),
}


def arm_name(norm: str, lr: float) -> str:
    return f"{norm}-lr{lr:g}"


def arms(quick: bool) -> list[Arm]:
    # A deep ReLU MLP (7 linear layers, BN before each hidden ReLU): it trains without BN at
    # every learning rate here, so a smooth landscape cannot come from a stalled network.
    cfg = TrainConfig(model="mlp-deep", batch_size=128, epochs=1 if quick else 2,
                      limit_train=1024 if quick else None, limit_test=1000 if quick else None)
    every = 2 if quick else 10
    out = []
    for lr in LRS[1:2] if quick else LRS:
        for norm, label in LABELS.items():
            out.append(Arm(arm_name(norm, lr), f"{label}, lr {lr:g}",
                           replace(cfg, norm=norm, lr=lr), {"norm": norm, "lr": lr},
                           probe=partial(LandscapeProbe, every, lr)))
    return out


def _log(v: Any) -> float:
    return math.log(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 \
        else math.nan


def paired_logs(off: Run, on: Run, key: str) -> tuple[float, float]:
    """Mean over the steps both runs probed of log m_none and log m_BN (their difference is
    the mean log ratio); NaN when a value is not finite or positive, or no step is shared."""
    a = {p["step"]: _log(p.get(key)) for p in off.probes}
    b = {p["step"]: _log(p.get(key)) for p in on.probes}
    steps = sorted(set(a) & set(b))
    if not steps:
        return math.nan, math.nan
    return (statistics.fmean(a[s] for s in steps), statistics.fmean(b[s] for s in steps))


def ratio_comparison(off: ArmResult, on: ArmResult, key: str, label: str) -> Comparison:
    """BN against none on the per-seed mean log of `key` over shared steps (paired by seed when
    the arms share batches): ``diff`` is the mean log ratio, exp(diff) the typical ratio."""
    pairs = [paired_logs(r0, r1, key) for r0, r1 in zip(off.runs, on.runs, strict=False)]
    return compare([a for a, _ in pairs], [b for _, b in pairs], metric=f"log {MEASURES[key]}",
                   label=label, paired=off.paired_with(on), higher_is_better=False)


def ratio_text(c: Comparison, wording: str = "") -> str:
    """'0.42x (95% CI 0.30x to 0.58x, Holm p = 0.003: BN smoother)'; a claim's comparison
    carries the claim's `wording` instead of the exploratory word."""
    if not c.testable:
        return c.test
    word = wording or {"better": "BN smoother", "worse": "BN rougher"}.get(c.word, c.word)
    return (f"{math.exp(c.diff):.2g}x (95% CI {math.exp(c.low):.2g}x to {math.exp(c.high):.2g}x, "
            f"Holm {p_is(c.p_holm)}: {word})")


def judged(by: dict[str, ArmResult], lrs: list[float]) -> tuple[
        list[Judgement], dict[tuple[float, str], Comparison]]:
    """The claims' judgements (``CLAIMS`` whose arms ran) and every comparison by (lr,
    measure or accuracy key): the claims' as judged (Holm over the claims), the rest
    exploratory (Holm over the rest)."""
    primary, tests, _ = judge_keyed(_raw(by, lrs), CLAIMS)  # the runner lists the rest
    return primary, tests


def tests(by: dict[str, ArmResult], lrs: list[float]) -> dict[tuple[float, str], Comparison]:
    """Every comparison by (lr, measure or accuracy key) (``judged``)."""
    return judged(by, lrs)[1]


def _raw(by: dict[str, ArmResult], lrs: list[float]) -> dict[tuple[float, str], Comparison]:
    """Every comparison, not yet corrected: (lr, measure or accuracy key) -> test."""
    raw: dict[tuple[float, str], Comparison] = {}
    for lr in lrs:
        off, on = by[arm_name("none", lr)], by[arm_name("bnlab", lr)]
        for key in MEASURES:
            raw[lr, key] = ratio_comparison(off, on, key, f"lr {lr:g}: BN / none")
        acc, precise = accuracy_comparisons(off, on, f"lr {lr:g}: BN vs none")
        raw[lr, "test_acc"], raw[lr, "test_acc_precise"] = acc, precise
    return raw


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    lrs = sorted({r.arm.tags["lr"] for r in results})
    for row, res in zip(rows, results, strict=True):
        for key in MEASURES:  # per seed: the geometric mean ("gmean") over its probed steps
            means = [math.exp(statistics.fmean(_log(p.get(key)) for p in r.probes))
                     if r.probes else math.nan for r in res.runs]
            put_spread(row, f"{key}_gmean", means)
    primary, t = judged(by, lrs)
    claimed = {j.claim.key: j for j in primary}

    def said(lr: float, key: str) -> str:
        claim = CLAIMS.get((lr, key))
        if claim is not None and claim.key in claimed:
            j = claimed[claim.key]
            return f"{MEASURES[key]} {ratio_text(t[lr, key], j.wording)} [claim {claim.key}]"
        return f"{MEASURES[key]} {ratio_text(t[lr, key])}"

    parts = [f"lr {lr:g}: " + "; ".join(said(lr, k) for k in MEASURES)
             + f"; test accuracy {t[lr, 'test_acc'].word} (PreciseBN "
               f"{t[lr, 'test_acc_precise'].word})" for lr in lrs]
    verdict = ("Along the gradient, BN / no-BN ratio per step (same seed and step; geometric "
               "mean over steps, paired t over seeds on the log ratio; the claims judged by "
               "the one rule, the rest exploratory, Holm over its own family): "
               + ". ".join(parts) + ".")
    smoother = sum(1 for k, c in t.items() if k[1] in MEASURES and k not in CLAIMS
                   and c.word == "better")

    def ratios(key: str) -> str:
        return "/".join(f"{math.exp(t[lr, key].diff):.2g}" if t[lr, key].testable else "n/a"
                        for lr in lrs)

    headline = (f"BN / no-BN per-step ratio at lr {'/'.join(f'{lr:g}' for lr in lrs)}: loss "
                f"range {ratios('loss_range')}, gradient change {ratios('grad_change')}, "
                f"beta-smoothness {ratios('beta')}; claims: "
                + ", ".join(f"{j.claim.key} {j.wording}" for j in primary)
                + f"; exploratory: {smoother} of {3 * len(lrs) - len(primary)} clearly "
                f"smoother.")

    def plot(path: Path) -> None:
        _plot(by, lrs, path)

    return Findings(rows, verdict, plot, [c for k, c in t.items() if k not in CLAIMS],
                    headline, literature_text(primary), primary)


def _plot(by: dict[str, ArmResult], lrs: list[float], path: Path) -> None:
    """Per-step BN / no-BN ratio of each measure, geometric mean +- sample std over seeds."""
    fig, axes = new_figure(1, 3, figsize=(14, 3.8))
    n = 0
    for lr in lrs:
        off, on = by[arm_name("none", lr)], by[arm_name("bnlab", lr)]
        n = len(off.runs)
        for ax, key in zip(axes, MEASURES, strict=True):
            per_seed = []
            for r0, r1 in zip(off.runs, on.runs, strict=False):
                b = {p["step"]: _log(p.get(key)) for p in r1.probes}
                per_seed.append({p["step"]: b[p["step"]] - _log(p.get(key))
                                 for p in r0.probes if p["step"] in b})
            steps = [t for t in sorted(set.intersection(*(set(s) for s in per_seed)))
                     if all(math.isfinite(s[t]) for s in per_seed)]  # as figures.band
            mean = [statistics.fmean(s[t] for s in per_seed) for t in steps]
            line = ax.plot(steps, [math.exp(m) for m in mean], label=f"lr {lr:g}")[0]
            if len(per_seed) > 1:
                std = [statistics.stdev(s[t] for s in per_seed) for t in steps]
                ax.fill_between(steps, [math.exp(m - s) for m, s in zip(mean, std, strict=True)],
                                [math.exp(m + s) for m, s in zip(mean, std, strict=True)],
                                color=line.get_color(), alpha=0.2)
    for ax, title in zip(axes, MEASURES.values(), strict=True):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{title}: BN / no BN")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path, f"Per-step ratio along the gradient (geometric mean +- sample std, {n} "
                    f"seeds; below 1: smoother with BN)")


STUDY = Study(
    "landscape", "Does BN make the loss landscape smoother (Santurkar et al.)?", arms, analyze,
    needs="its analysis pairs BN and no-BN runs of bnlab's deep MLP step by step",
    seeds=SHORT_STUDY_SEEDS,
    setup=("A deep ReLU MLP on Fashion-MNIST (784 -> six hidden layers of 128 -> 10, about "
           "185k weights; with BN, a BatchNorm before each hidden ReLU), Xavier init, plain "
           "SGD, batch 128, 2 epochs, at three learning rates (0.02, 0.1, 0.5), 10 seeds. Every "
           "10 steps a probe moves the weights along the step's gradient by 0.5, 1, 2 and 4 "
           "times the learning rate on the step's batch and records the loss range, the "
           "largest gradient change and the effective beta-smoothness, then restores "
           "everything. For each seed and probed step, the BN / no-BN ratio of each measure "
           "(both arms saw the same batch); per seed the geometric mean over steps; over seeds "
           "a paired t on the log ratios. Primary comparisons, Santurkar et al.'s two claims "
           "at lr 0.1: the loss range and the effective beta-smoothness smaller with BN "
           "(margin 0.1 in the log ratio, Holm over the two, worded by the one rule with the "
           "exact sign-flip test below 8 seeds); the gradient change, the other rates and the "
           "test accuracies are exploratory, Holm over their own family."),
    caveats=("Santurkar et al. measured a VGG on CIFAR-10; a conv net of that size does not fit "
             "this study's CPU budget, so the deeper network here is a ReLU MLP (no "
             "convolutions) and training is 2 epochs. The probe's step sizes scale with the "
             "learning rate, so the three learning rates also probe three ranges of the "
             "landscape. The arms have different weights at the same step: the ratio compares "
             "the landscapes each arm's own training reached, not one point in weight space. "
             "A diverged run has no finite measures and makes its learning rate untestable."),
)
