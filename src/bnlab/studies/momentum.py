r"""BN's running-average momentum, and the textbook's epoch-to-epoch swings of test accuracy.

At inference BatchNorm normalizes with exponential moving averages of the batch statistics,
``running <- (1 - momentum) * running + momentum * batch`` after every step. With the
textbook's recipe (LeNet-BN, sigmoid, plain SGD at lr 1.0, batch 256) the weights move fast:
the averages mix statistics of weights that no longer exist (lag, worse for small momentum) or
of only the last few batches (noise, worse for large momentum). PreciseBN re-estimates the
statistics of the current weights exactly (10^4 examples, weights frozen), so for each epoch e

    gap_e = acc_precise_e - acc_running_e

is what the running averages cost, and the *swing* of a per-epoch accuracy a_e is
``mean |a_e - a_{e-1}|`` over the second half of training (the first half is dominated by
learning). If the textbook's test accuracy swings because of its running averages, the
running-average accuracy swings more than the PreciseBN one of the very same weights.

BN trains with the batch's statistics, so the momentum moves only the buffers: a seed's weights
are the same at every momentum (the same batches, the same steps), and so are its PreciseBN
accuracies. Every difference between momenta is the running averages' alone.

Primary comparisons, Wu & Johnson's two claims (``CLAIMS``; ``bnlab.studies.claims``): at
momentum 0.1, PreciseBN's accuracy swings less than the running averages'; momentum 0.01 has
a larger mean |gap| than 0.1. Every other comparison is exploratory, Holm over its own
family: each momentum against 0.1
(torch's default) on final test accuracy with the running averages, on the mean |gap| and on
the swing of the running-average accuracy; and, within
each momentum, PreciseBN against running averages on the swing and on final accuracy (paired
over seeds: the same weights).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    compare_arms,
    summarize,
)
from bnlab.studies.claims import Claim, Judgement, judge_keyed, literature_text
from bnlab.studies.stats import Comparison, compare, summary
from bnlab.train import TrainConfig

MOMENTA = (0.01, 0.03, 0.1, 0.3, 0.9)
REFERENCE = 0.1
SMALLEST = 0.01
# Wu & Johnson 2021's two claims tested (``bnlab.studies.claims``), by the comparison key they
# judge; every other comparison is exploratory. Margins: 0.002 of test accuracy per epoch, a
# fifth of the swings the textbook's runs show.
PAPER = "Wu & Johnson 2021"
CLAIMS = {
    (REFERENCE, "swing within"): Claim(
        "precise-swings-less", "At a large learning rate the EMA lags the weights, so the "
        "accuracy with population statistics (PreciseBN) swings less between epochs than with "
        "the EMA", PAPER, "swing of test acc", -1, 0.002, f"running averages ({REFERENCE:g})",
        f"PreciseBN ({REFERENCE:g})"),
    (SMALLEST, "mean_abs_gap"): Claim(
        "small-momentum-lags", "A smaller EMA momentum lags the weights more: a larger gap "
        "between the EMA's and the population statistics' accuracy", PAPER, "mean abs gap", +1,
        0.002, f"momentum {REFERENCE:g}", f"momentum {SMALLEST:g}"),
}


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", norm="bnlab", lr=1.0, batch_size=256,
                       epochs=2 if quick else 8, limit_train=1024 if quick else 15_000,
                       limit_test=500 if quick else 5000)
    momenta = (0.01, REFERENCE, 0.9) if quick else MOMENTA
    return [Arm(f"m{m:g}", f"momentum {m:g}", replace(base, bn_momentum=m),
                {"bn_momentum": m}) for m in momenta]


def _series(run: Any, key: str) -> list[float]:
    return [float(row.get(key, math.nan)) for row in run.metrics]


def gaps(run: Any) -> list[float]:
    """Per epoch: PreciseBN accuracy minus running-average accuracy (NaN without PreciseBN)."""
    return [p - a for a, p in zip(_series(run, "test_acc"), _series(run, "test_acc_precise"),
                                  strict=True)]


def mean_abs_gap(run: Any) -> float:
    g = gaps(run)
    return statistics.fmean(abs(v) for v in g) if g else math.nan


def swing(values: Sequence[float]) -> float:
    """Mean |a_e - a_{e-1}| over the second half of training (NaN with one epoch)."""
    start = max(1, len(values) // 2)
    steps = [abs(values[e] - values[e - 1]) for e in range(start, len(values))]
    return statistics.fmean(steps) if steps else math.nan


def per_seed(res: ArmResult) -> dict[str, list[float]]:
    return {"mean_abs_gap": [mean_abs_gap(r) for r in res.runs],
            "swing": [swing(_series(r, "test_acc")) for r in res.runs],
            "swing_precise": [swing(_series(r, "test_acc_precise")) for r in res.runs]}


def table(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        for key, values in per_seed(res).items():
            s = summary(values)
            row[key], row[f"{key}_std"] = s.mean, s.std
    return rows


def _m(res: ArmResult) -> float:
    return float(res.arm.tags["bn_momentum"])


def judged(results: Sequence[ArmResult]) -> tuple[list[Judgement],
                                                   dict[tuple[Any, ...], Comparison]]:
    """The claims' judgements (``CLAIMS``, those whose arms ran), and every comparison by
    (momentum, metric): the claims' as judged (Holm over the claims), the rest exploratory
    (Holm over the rest)."""
    primary, tests, _ = judge_keyed(dict(_raw(results)), CLAIMS)  # the runner lists the rest
    return primary, tests


def comparisons(results: Sequence[ArmResult]) -> dict[tuple[Any, ...], Comparison]:
    """Every comparison by (momentum, metric) (``judged``)."""
    return judged(results)[1]


def _raw(results: Sequence[ArmResult]) -> list[tuple[tuple[Any, ...], Comparison]]:
    """Every comparison, not yet corrected, by (momentum, metric)."""
    by = {_m(r): r for r in results}
    keyed: list[tuple[tuple[Any, ...], Comparison]] = []
    ref = by.get(REFERENCE)
    if ref is not None:
        rv = per_seed(ref)
        for m, res in by.items():
            if m == REFERENCE:
                continue
            label = f"momentum {m:g} vs {REFERENCE:g}"
            # (PreciseBN accuracy is not compared: the momentum only moves the buffers, so a
            # seed's weights, hence its PreciseBN accuracy, are the same at every momentum.)
            keyed.append(((m, "test_acc"), compare_arms(ref, res, "test_acc", label)))
            v = per_seed(res)
            for key, metric in (("mean_abs_gap", "mean abs gap"),
                                ("swing", "swing of test acc")):
                keyed.append(((m, key), compare(rv[key], v[key], metric=metric, label=label,
                                                paired=ref.paired_with(res),
                                                higher_is_better=False)))
    for m, res in by.items():
        v = per_seed(res)
        label = f"momentum {m:g}: PreciseBN vs running averages"
        keyed.append(((m, "swing within"), compare(
            v["swing"], v["swing_precise"], metric="swing of test acc", label=label,
            paired=True, higher_is_better=False)))
        keyed.append(((m, "accuracy within"), compare(
            res.finals("test_acc"), res.finals("test_acc_precise"), metric="test_acc",
            label=label, paired=True)))
    return keyed


def verdict_text(results: Sequence[ArmResult], tests: dict[tuple[Any, ...], Comparison],
                 primary: Sequence[Judgement] = ()) -> str:
    claimed = {j.claim.key: j.wording for j in primary}

    def word(key: tuple[Any, ...], claim_word: str = "") -> str:
        """An exploratory comparison's word; a claim's comparison: the claim's wording."""
        claim = CLAIMS.get(key)
        if claim is not None and claim.key in claimed:
            return f"claim {claim.key}: {claimed[claim.key]}"
        return f"{tests[key].word}{claim_word}"

    parts = []
    for res in results:
        m = _m(res)
        v = per_seed(res)
        text = (f"momentum {m:g}: test acc {res.summary('test_acc').text()} (PreciseBN "
                f"{res.summary('test_acc_precise').text()}), mean |gap| "
                f"{summary(v['mean_abs_gap']).text()}, swing {summary(v['swing']).text()} "
                f"with running averages vs {summary(v['swing_precise']).text()} with PreciseBN "
                f"({word((m, 'swing within'), ' for PreciseBN')})")
        if m != REFERENCE and (m, "test_acc") in tests:
            text += (f"; vs {REFERENCE:g}: test acc {word((m, 'test_acc'))}, mean |gap| "
                     f"{word((m, 'mean_abs_gap'))}, swing {word((m, 'swing'))}")
        if res.failed:
            text += f"; {res.failed}/{len(res.runs)} seeds failed"
        parts.append(text)
    return ("LeNet-BN at lr 1.0 (paired t over seeds; the claims judged by the one rule, the "
            "rest exploratory, Holm over its own family, 'better'/'worse' at p < 0.05; swing: "
            "mean |change| of test accuracy between epochs in the second half "
            "of training; gap: PreciseBN minus running-average accuracy per epoch). "
            + "; ".join(parts) + ".")


def headline(results: Sequence[ArmResult]) -> str:
    by = {_m(r): r for r in results}
    ref = by.get(REFERENCE)
    if ref is None:
        return ""
    v = per_seed(ref)
    gap_by = ", ".join(f"{m:g}: {summary(per_seed(r)['mean_abs_gap']).text()}"
                       for m, r in sorted(by.items()))
    return (f"At lr 1.0 and momentum {REFERENCE:g}, test accuracy swings "
            f"{summary(v['swing']).text()} between epochs with running averages vs "
            f"{summary(v['swing_precise']).text()} with PreciseBN statistics; mean |gap| by "
            f"momentum {gap_by}.")


def analyze(results: list[ArmResult]) -> Findings:
    rows = table(results)
    primary, tests = judged(results)
    n = len(results[0].runs) if results else 0

    def plot(path: Path) -> None:
        fig, axes = new_figure(1, 3, figsize=(16, 4.2))
        for res in results:
            epochs = [row["epoch"] for row in res.runs[0].metrics]
            acc = [summary(v) for v in zip(*(_series(r, "test_acc") for r in res.runs),
                                            strict=True)]
            pre = [summary(v) for v in zip(*(_series(r, "test_acc_precise")
                                             for r in res.runs), strict=True)]
            gap = [summary(v) for v in zip(*(gaps(r) for r in res.runs), strict=True)]
            line, = axes[0].plot(epochs, [s.mean for s in acc], marker="o", ms=3,
                                 label=res.arm.label)
            axes[0].plot(epochs, [s.mean for s in pre], "--", marker="x", ms=3,
                         color=line.get_color(),
                         label="PreciseBN statistics (dashed)" if res is results[0] else None)
            axes[1].errorbar(epochs, [s.mean for s in gap], yerr=[_std(s.std) for s in gap],
                             marker="o", ms=3, capsize=3, label=res.arm.label)
        labels = [r.arm.label for r in results]
        xs = list(range(len(results)))
        sw = [summary(per_seed(r)["swing"]) for r in results]
        sp = [summary(per_seed(r)["swing_precise"]) for r in results]
        axes[2].bar([x - 0.2 for x in xs], [s.mean for s in sw], 0.4,
                    yerr=[_std(s.std) for s in sw], capsize=3, label="running averages")
        axes[2].bar([x + 0.2 for x in xs], [s.mean for s in sp], 0.4,
                    yerr=[_std(s.std) for s in sp], capsize=3, label="PreciseBN")
        axes[2].set_xticks(xs, labels, rotation=20, ha="right")
        for ax, title, xlabel in ((axes[0], "test accuracy per epoch (mean)", "epoch"),
                                  (axes[1], "gap: PreciseBN - running averages", "epoch"),
                                  (axes[2], "swing of test accuracy, second half", "")):
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in axes[:2]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        save(fig, path, f"BN momentum, LeNet-BN at lr 1.0 (mean +- sample std, {n} "
                        f"seed{'s' if n != 1 else ''})")

    keys = set(CLAIMS)
    return Findings(rows, verdict_text(results, tests, primary), plot,
                    [c for k, c in tests.items() if k not in keys], headline(results),
                    literature_text(primary), primary)


def _std(v: float) -> float:
    return v if math.isfinite(v) else 0.0


SETUP = (
    "The textbook's recipe: LeNet-BN (sigmoid) on Fashion-MNIST, plain SGD at lr 1.0, batch "
    "256, 8 epochs over the first 15,000 training examples, evaluated each epoch on 5,000 test "
    "examples twice: with the running averages and with PreciseBN statistics re-estimated "
    "over 10^4 training examples (weights frozen). The BN momentum of every layer is 0.01, "
    "0.03, 0.1 (torch's default), 0.3 or 0.9; 8 seeds, the same batches for every momentum "
    "of a seed: BN trains with batch statistics, so a seed's weights are the same at every "
    "momentum and only the running averages differ. Measured per seed: final accuracies, "
    "the mean over epochs of |gap| (PreciseBN minus running-average accuracy), and the "
    "swing (mean |change| of test accuracy between "
    "consecutive epochs over the second half of training) of both accuracies. Primary comparisons, "
    "Wu & Johnson 2021's two claims: at momentum 0.1 the PreciseBN accuracy swings less than "
    "the running-average one, and momentum 0.01 has a larger mean |gap| than 0.1 (paired over "
    "seeds, margin 0.002, Holm over the two, worded by the one rule with the exact sign-flip "
    "test below 8 seeds). Exploratory: each other momentum against 0.1 (final "
    "running-average accuracy, mean |gap|, swing) and, within each momentum, PreciseBN "
    "against running averages (swing, final accuracy), Holm over those.")

CAVEATS = (
    "Eight short epochs on a quarter of the data: the textbook's 10 full epochs take more "
    "steps per epoch, so each epoch's lag spans more weight change there. The swing over "
    "the second half still includes genuine learning progress, the same for both accuracies "
    "of a seed. PreciseBN's 10^4 examples are themselves a sample: a small gap is within "
    "its noise. One learning rate (the textbook's 1.0) and one network. A momentum that "
    "changed training itself (a network whose output depends on the running averages in "
    "training) would break the design's premise that the weights are shared.")

STUDY = Study("momentum", "How does BN's running-average momentum change the test accuracy, "
              "and does it explain the textbook's epoch-to-epoch swings?", arms, analyze,
              needs="it sets the momentum of LeNet-BN's BN layers",
              setup=SETUP, caveats=CAVEATS)
