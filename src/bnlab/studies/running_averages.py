r"""Why not normalize with the moving averages during training? What breaks, when, and why.

BatchNorm in training does two things the learner's alternative ("use the running averages,
as at inference") gives up: it normalizes with *fresh* statistics (this batch's, not an average
that lags behind the weights), and its gradient flows *through* those statistics. Four layers
on the BN chapter's LeNet (sigmoid, SGD, batch 256) take them apart:

==========================  =======================  ==================================
layer (``norm=``)           statistics in forward    gradient through the statistics
==========================  =======================  ==================================
BN (``bnlab``)              the batch's (fresh)      yes
``batch-stats-detached``    the batch's (fresh)      no
``renorm-wide``             running averages         yes (Batch Renorm, r and d never
                                                     clipped: x_hat = (x - mu) / sigma)
``running-stats``           running averages         no (the learner's proposal)
==========================  =======================  ==================================

``running-stats`` is swept over BN momenta (how stale the averages are: momentum 1 would be the
last batch's statistics, i.e. ``batch-stats-detached``), and every layer over learning rates.
Without the gradient through the statistics, the loss does not see a shift of the layer's input
(Ioffe & Szegedy 2015, section 2): with u = Wx + b and x_hat = u - E[u] where E[u] is a constant
of the backward pass, the gradient still moves b, the normalization cancels the move in the next
forward pass, and b drifts without bound. A probe records, every few steps, the norms of the
weights and biases feeding the norm layers and of their gamma and beta, so the drift is measured.

Primary comparisons, one per literature claim (``CLAIMS``, ``bnlab.studies.claims``), at the
chapter's lr 1.0: Ioffe & Szegedy's (2015, section 2) bias drift (detached vs BN) and the
learner's running averages against BN in test accuracy; Holm over those two. Every other
comparison (each arm against BN at each learning rate, with the running averages and with
PreciseBN statistics, the drift at lr 0.1, staleness alone) is exploratory, Holm over its own
family. Accuracy comparisons follow the at-chance rule (``bnlab.studies.chance``): an arm at
chance is never the reference (BN for every arm; the detached arm for staleness), and two arms
at chance are not compared; the verdict names what was not compared, and a claim not judged
for it is listed with the reason. The bias growth is the mechanism, not an accuracy: it is
compared whatever the accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from bnlab.report.figures import band, new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    compare_arms,
    summarize,
)
from bnlab.studies.chance import floor
from bnlab.studies.claims import Claim, Judgement, judge_keyed, literature_text
from bnlab.studies.probes.running_averages import NormWeightsProbe
from bnlab.studies.stats import FAILED_ACCURACY, Comparison, compare, summary
from bnlab.studies.wording import fair_word
from bnlab.train import TrainConfig

LRS = (0.1, 1.0)
CLAIM_LR = 1.0  # the chapter's learning rate: where the claims are judged
RUNNING_MOMENTA = (0.01, 0.1, 0.5)
DEFAULT_MOMENTUM = 0.1
KINDS = {"bnlab": "BN", "batch-stats-detached": "batch stats, detached",
         "renorm-wide": "Batch Renorm (wide)", "running-stats": "running averages"}
# The literature claims tested (``bnlab.studies.claims``), by the comparison key they judge;
# every other comparison (the other learning rate, Batch Renorm, other momenta, PreciseBN
# accuracies, staleness) is exploratory. Margins: 0.1 decades of bias-norm growth; one point
# of test accuracy.
PAPER = "Ioffe & Szegedy 2015 (section 2)"
CLAIMS = {
    (CLAIM_LR, "bias drift"): Claim(
        "detached-biases-grow", "When the normalization's statistics are outside the gradient "
        "step, the bias before the norm grows more than with BN",
        PAPER, "pre-norm bias norm growth (log10 last/first)", +1, 0.1, f"BN, lr {CLAIM_LR:g}",
        f"{KINDS['batch-stats-detached']}, lr {CLAIM_LR:g}"),
    (CLAIM_LR, "running-stats", DEFAULT_MOMENTUM, "test_acc"): Claim(
        "running-averages-train-worse", "Normalizing with statistics the gradient does not "
        "see (the learner's running averages) trains worse than BN", PAPER, "test_acc", -1,
        0.01, f"BN, lr {CLAIM_LR:g}",
        f"{KINDS['running-stats']}, lr {CLAIM_LR:g}, momentum {DEFAULT_MOMENTUM:g}"),
}


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", batch_size=256, epochs=1 if quick else 3,
                       limit_train=512 if quick else 12_000, limit_test=300 if quick else 5000)
    every = 1 if quick else 10
    momenta = (DEFAULT_MOMENTUM,) if quick else RUNNING_MOMENTA
    out = []
    for lr in LRS:
        for norm, label in KINDS.items():
            for m in momenta if norm == "running-stats" else (DEFAULT_MOMENTUM,):
                name = f"{norm}-lr{lr:g}" + (f"-m{m:g}" if norm == "running-stats" else "")
                text = f"{label}, lr {lr:g}" + (f", momentum {m:g}"
                                                 if norm == "running-stats" else "")
                out.append(Arm(name, text, replace(base, norm=norm, lr=lr, bn_momentum=m),
                               {"norm": norm, "lr": lr, "bn_momentum": m},
                               probe=partial(NormWeightsProbe, every)))
    return out


def last_probe(res: ArmResult, key: str) -> list[float]:
    """Each seed's last probed value of `key` (NaN where the run has no probes)."""
    return [float(r.probes[-1].get(key, math.nan)) if r.probes else math.nan for r in res.runs]


def growth(res: ArmResult, key: str) -> list[float]:
    """Each seed's log10(last / first probed value of `key`): how many decades the norm grew
    (NaN where a value is not finite or the first is 0, e.g. a network without biases)."""
    out = []
    for r in res.runs:
        first = float(r.probes[0].get(key, math.nan)) if r.probes else math.nan
        last = float(r.probes[-1].get(key, math.nan)) if r.probes else math.nan
        ok = math.isfinite(first) and math.isfinite(last) and first > 0 and last > 0
        out.append(math.log10(last / first) if ok else math.nan)
    return out


def broke_at(metrics: Sequence[dict[str, Any]]) -> int | None:
    """The first epoch from which every epoch fails by ``stats``' rule (train loss not finite
    or test accuracy <= FAILED_ACCURACY); None when the last epoch does not fail."""
    first = None
    for row in metrics:
        bad = not math.isfinite(float(row["train_loss"])) or row["test_acc"] <= FAILED_ACCURACY
        first = (first or row["epoch"]) if bad else None
    return first


def _key(res: ArmResult) -> tuple[str, float, float]:
    t = res.arm.tags
    return t["norm"], float(t["lr"]), float(t["bn_momentum"])


def table(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        ends = [broke_at(r.metrics) for r in res.runs]
        row["broke at epoch (per seed)"] = ", ".join("-" if e is None else str(e) for e in ends)
        for key, name in (("w_norm", "pre-norm weight norm"), ("b_norm", "pre-norm bias norm"),
                          ("gamma_norm", "gamma norm"), ("beta_norm", "beta norm")):
            row[f"final {name}"] = summary(last_probe(res, key)).text()
        row["bias norm growth (log10)"] = summary(growth(res, "b_norm")).text()
    return rows


Key = tuple[Any, ...]


def judged(results: Sequence[ArmResult]
           ) -> tuple[list[Judgement], dict[Key, Comparison], dict[str, str], dict[Key, str]]:
    """The claims' judgements (``CLAIMS`` whose arms ran and are not a floor), every
    comparison by (lr, what, metric): the claims' as judged (Holm over the claims), the rest
    exploratory (Holm over the rest); the claims not judged with why (claim key -> reason);
    and the comparisons not made (``floors``)."""
    raw, floors = _raw(results)
    primary, tests, missing = judge_keyed(dict(raw), CLAIMS)
    for key, claim in CLAIMS.items():
        why = floors.get(key[:3] if len(key) == 4 else key)
        if why is not None:
            missing[claim.key] = f"at lr {key[0]:g}: {why}"
    return primary, tests, missing, floors


def comparisons(results: Sequence[ArmResult]) -> dict[Key, Comparison]:
    """Every comparison made, by (lr, what, metric) (``judged``)."""
    return judged(results)[1]


def _raw(results: Sequence[ArmResult]) -> tuple[list[tuple[Key, Comparison]], dict[Key, str]]:
    """Every comparison, not yet corrected, by (lr, what, metric); and the accuracy
    comparisons not made because of an arm at chance (``bnlab.studies.chance.floor``, the
    reference first), by (lr, norm, momentum) or (lr, "staleness"), with the reason. The bias
    growth is the mechanism, not an accuracy: it is compared whatever the accuracies."""
    by = {_key(r): r for r in results}
    keyed: list[tuple[Key, Comparison]] = []
    floors: dict[Key, str] = {}
    for lr in sorted({k[1] for k in by}):
        bn = by.get(("bnlab", lr, DEFAULT_MOMENTUM))
        if bn is None:
            continue
        for (norm, arm_lr, m), res in by.items():
            if arm_lr != lr or norm == "bnlab":
                continue
            if why := floor(bn, res, reference=True):
                floors[(lr, norm, m)] = why
                continue
            for c in accuracy_comparisons(bn, res, f"lr {lr:g}: {_name(norm, m)} vs BN"):
                keyed.append(((lr, norm, m, c.metric), c))
        det = by.get(("batch-stats-detached", lr, DEFAULT_MOMENTUM))
        if det is None:
            continue
        # the mechanism, not an accuracy: measured whatever the accuracy (no floor); in
        # decades: a blow-up is multiplicative, and a raw norm's spread would be too
        keyed.append(((lr, "bias drift"), compare(
            growth(bn, "b_norm"), growth(det, "b_norm"),
            metric="pre-norm bias norm growth (log10 last/first)",
            label=f"lr {lr:g}: detached vs BN", paired=bn.paired_with(det),
            higher_is_better=False)))
        run = by.get(("running-stats", lr, DEFAULT_MOMENTUM))
        if run is None:
            continue
        if why := floor(det, run, reference=True):
            floors[(lr, "staleness")] = why
        else:
            keyed.append(((lr, "staleness"), compare_arms(
                det, run, "test_acc", f"lr {lr:g}: running averages vs detached batch "
                f"stats (momentum {DEFAULT_MOMENTUM:g})")))
    return keyed, floors


def _name(norm: str, m: float) -> str:
    return KINDS[norm] + (f" (momentum {m:g})" if norm == "running-stats" else "")


def _state(res: ArmResult) -> str:
    """'k/n seeds failed' by stats' rule, or the accuracy it reaches."""
    if res.failed:
        return f"{res.failed}/{len(res.runs)} seeds failed (diverged: {res.diverged})"
    return f"trains to {res.summary('test_acc').text()}"


def verdict_text(results: Sequence[ArmResult], tests: dict[Key, Comparison],
                 primary: Sequence[Judgement] = (),
                 floors: Mapping[Key, str] | None = None) -> str:
    floors = floors or {}
    by = {_key(r): r for r in results}
    claimed = {j.claim.key: j for j in primary}

    def word(key: tuple[Any, ...]) -> str:
        """An exploratory comparison's word; a claim's comparison: the claim's wording."""
        claim = CLAIMS.get(key)
        if claim is not None and claim.key in claimed:
            return f"claim {claim.key}: {claimed[claim.key].wording}"
        return tests[key].word

    def text(key: tuple[Any, ...]) -> str:
        claim = CLAIMS.get(key)
        if claim is not None and claim.key in claimed:
            return f"[{claim.key}] {claimed[claim.key].text()}"
        return tests[key].text()

    parts = []
    for lr in sorted({k[1] for k in by}):
        items = []
        for (norm, arm_lr, m), res in by.items():
            if arm_lr != lr:
                continue
            run = tests.get((lr, norm, m, "test_acc"))
            precise = tests.get((lr, norm, m, "test_acc_precise"))
            vs = "" if run is None else f"; vs BN: {word((lr, norm, m, 'test_acc'))}" + (
                "" if precise is None else f" (with PreciseBN statistics: {precise.word})")
            if (lr, norm, m) in floors:
                vs = f"; vs BN: not compared ({floors[(lr, norm, m)]})"
            items.append(f"{_name(norm, m)} {_state(res)}{vs}")
        why = []
        for key, what in (("bias drift", "growth of the pre-norm bias norm (decades), "
                                         "detached vs BN"),
                          ("staleness", "stale vs fresh statistics without gradient")):
            if (lr, key) in tests:
                why.append(f"{what}: {text((lr, key))}")
            elif (lr, key) in floors:
                why.append(f"{what}: not compared ({floors[(lr, key)]})")
        parts.append(f"At lr {lr:g}: " + "; ".join(items) + (". " + "; ".join(why)
                                                              if why else ""))
    return ("Training normalized four ways (against BN at the same learning rate, paired t "
            "over seeds; the claims judged by the one rule, every other comparison "
            "exploratory, Holm over its own family, 'better'/'worse' at p < 0.05; on accuracy "
            "an arm at chance is never a reference and two are not compared). "
            + ". ".join(parts) + ". " + attribution(tests, floors))


def _fair(tests: dict[tuple[Any, ...], Comparison], lr: float, norm: str) -> str:
    """The arm against BN at `lr` on both evaluations (``wording.fair_word``); 'absent' when
    it was not compared."""
    run = tests.get((lr, norm, DEFAULT_MOMENTUM, "test_acc"))
    if run is None:
        return "absent"
    return fair_word([run, tests.get((lr, norm, DEFAULT_MOMENTUM, "test_acc_precise"))])


def _testable(tests: dict[tuple[Any, ...], Comparison], lr: float, norm: str) -> bool:
    return all(c.testable for m in ("test_acc", "test_acc_precise")
               if (c := tests.get((lr, norm, DEFAULT_MOMENTUM, m))) is not None)


def attribution(tests: dict[Key, Comparison], floors: Mapping[Key, str] | None = None) -> str:
    """Which ingredient's loss hurts, per learning rate, from the corrected comparisons: an
    arm is clearly worse than BN only when both evaluations (running averages and PreciseBN
    statistics) say so; where they disagree, the sentence says what each says."""
    out = []
    floors = floors or {}
    for lr in sorted({k[0] for k in (*tests, *floors)}):
        det = tests.get((lr, "batch-stats-detached", DEFAULT_MOMENTUM, "test_acc"))
        ren = tests.get((lr, "renorm-wide", DEFAULT_MOMENTUM, "test_acc"))
        stale = tests.get((lr, "staleness"))
        at_floor = [f"{KINDS[n]}: {floors[k]}" for n in ("batch-stats-detached", "renorm-wide")
                    if (k := (lr, n, DEFAULT_MOMENTUM)) in floors]
        if at_floor:
            out.append(f"at lr {lr:g} the ingredients cannot be separated (not compared: "
                       + "; ".join(at_floor) + ")")
            continue
        if det is None or ren is None:
            continue
        if not (_testable(tests, lr, "batch-stats-detached")
                and _testable(tests, lr, "renorm-wide")):
            out.append(f"at lr {lr:g} the ingredients cannot be separated (not testable)")
            continue
        words = {"the gradient through the statistics": _fair(tests, lr,
                                                               "batch-stats-detached"),
                 "fresh statistics (with the gradient kept)": _fair(tests, lr, "renorm-wide")}
        hurt = [k for k, w in words.items() if w == "worse"]
        split = [f"losing {k}: {w}" for k, w in words.items() if w.startswith("the two")]
        text = (f"at lr {lr:g}, losing " + " and losing ".join(hurt) + " is clearly worse "
                "than BN (both evaluations)" if hurt else f"at lr {lr:g}, neither losing the "
                "gradient nor losing fresh statistics alone is clearly worse than BN on both "
                "evaluations")
        if split:
            text += " (" + "; ".join(split) + ")"
        if stale is not None and stale.testable:
            text += (f"; without the gradient, stale averages vs fresh batch statistics: "
                     f"{stale.word}")
        out.append(text)
    return ("Attribution: " + "; ".join(out) + ".") if out else ""


def headline(results: Sequence[ArmResult]) -> str:
    by = {_key(r): r for r in results}

    def acc(norm: str, lr: float) -> str:
        res = by.get((norm, lr, DEFAULT_MOMENTUM))
        return "n/a" if res is None else res.summary("test_acc").text()

    lrs = sorted({k[1] for k in by})
    return ("Test accuracy at lr " + " / ".join(f"{lr:g}" for lr in lrs) + ": BN "
            + " / ".join(acc("bnlab", lr) for lr in lrs) + ", running averages (momentum "
            f"{DEFAULT_MOMENTUM:g}) " + " / ".join(acc("running-stats", lr) for lr in lrs)
            + ", detached batch statistics " + " / ".join(acc("batch-stats-detached", lr)
                                                          for lr in lrs)
            + ", Batch Renorm (wide) " + " / ".join(acc("renorm-wide", lr) for lr in lrs)
            + ".")


def analyze(results: list[ArmResult]) -> Findings:
    rows = table(results)
    primary, tests, not_judged, floors = judged(results)
    n = len(results[0].runs) if results else 0

    def plot(path: Path) -> None:
        lrs = sorted({_key(r)[1] for r in results})
        fig, axes = new_figure(2, len(lrs), figsize=(6 * len(lrs), 7.5), squeeze=False)
        for col, lr in enumerate(lrs):
            for res in (r for r in results if _key(r)[1] == lr):
                norm, _, m = _key(res)
                label = _name(norm, m)
                epochs = [float(row["epoch"]) for row in res.runs[0].metrics]
                band(axes[0][col], epochs, [[float(row["train_loss"]) for row in r.metrics]
                                             for r in res.runs], label)
                steps = [float(p["step"]) for p in res.runs[0].probes]
                band(axes[1][col], steps, [[float(p["b_norm"]) for p in r.probes]
                                            for r in res.runs], label)
            axes[0][col].set_title(f"train loss per epoch, lr {lr:g}")
            axes[0][col].set_xlabel("epoch")
            axes[1][col].set_title(f"pre-norm bias norm, lr {lr:g}")
            axes[1][col].set_xlabel("training step")
            axes[1][col].set_yscale("log")
            for ax in (axes[0][col], axes[1][col]):
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            axes[0][col].xaxis.set_major_locator(MaxNLocator(integer=True))
        save(fig, path, f"Normalizing with running averages in training, LeNet-BN "
                        f"(mean +- sample std, {n} seed{'s' if n != 1 else ''}; a gap: a seed "
                        f"diverged)")

    ordered = [c for k, c in tests.items() if k not in CLAIMS]
    return Findings(rows, verdict_text(results, tests, primary, floors), plot, ordered,
                    headline(results), literature_text(primary), primary, not_judged)


SETUP = (
    "The BN chapter's LeNet (sigmoid) on Fashion-MNIST, plain SGD, batch 256, 3 epochs over "
    "the first 12,000 training examples, evaluated on 5,000 test examples; 8 seeds, the same "
    "batches for every arm of a seed. Four normalizations: BN; BN whose batch mean and "
    "variance are constants of the backward pass (batch-stats-detached: fresh statistics, no "
    "gradient through them); Batch Renorm with limits so wide (rmax = dmax = 1000) that r "
    "and d are never clipped and no warm-up (running averages in the forward pass, gradient "
    "through the batch statistics); and normalizing with the running averages (running-stats: "
    "stale statistics, no gradient), the latter at BN momenta 0.01, 0.1 and 0.5, all at "
    "learning rates 0.1 and 1.0 (the chapter's). Measured: per-epoch train loss and test "
    "accuracy (with the running averages and with PreciseBN statistics over 10^4 examples), "
    "and every 10 steps the norms of the weights and biases feeding the norm layers and of "
    "gamma and beta. A seed fails by the stats rule (train loss not finite, or test accuracy "
    "at chance); 'broke at epoch' is the first epoch from which every epoch fails by that "
    "rule. Primary comparisons, Ioffe & Szegedy's (2015, section 2) two claims at the "
    "chapter's lr 1.0: the growth of the pre-norm bias norm (log10 of last over first probe) "
    "of the detached arm against BN's (margin 0.1 decades), and the running averages "
    "(momentum 0.1) against BN in test accuracy (margin 0.01); paired over seeds, Holm over "
    "the two, worded by the one rule (the exact sign-flip test beside the t-test below 8 "
    "seeds). Exploratory, Holm over its own family: every other arm against BN at each "
    "learning rate (both accuracies), the bias growth at lr 0.1, and running averages "
    "against detached batch statistics at momentum 0.1. On accuracy an arm at chance (most "
    "seeds failed) is never the reference and two arms at chance are not compared (a floor, "
    "not evidence); the bias growth is compared whatever the accuracies.")

CAVEATS = (
    "Short training (about 140 steps) on a fifth of the data: a failure that needs thousands "
    "of steps to show, or a slow recovery, is not seen, and accuracies are far from the "
    "chapter's 10-epoch figures. Two learning rates only, and the momentum sweep only for "
    "running-stats. LeNet's pre-norm layers have biases, which the normalization makes "
    "redundant: their drift is Ioffe & Szegedy's example, but weight-norm growth depends on "
    "the network. Batch Renorm's running averages are those before this batch's update, "
    "running-stats' those after it. The renorm arm departs from the paper on purpose (no "
    "warm-up, no clipping), so it does not test the recipe Ioffe 2017 recommends, and its "
    "comparisons are exploratory. 'No clear difference' is not evidence of equality: only "
    "the equivalence test says 'does not reproduce'.")

STUDY = Study("train-with-running-averages", "Why not normalize with the moving averages "
              "during training? What breaks, when, and is it the stale statistics or the "
              "missing gradient?", arms, analyze,
              needs="it swaps LeNet-BN's norm layers for BatchNorm variants",
              setup=SETUP, caveats=CAVEATS)
