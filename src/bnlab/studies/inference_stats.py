"""Why running averages at inference, and what is wrong with them?

The same trained LeNet-BN models (one per seed) are evaluated on the test set with different
statistics in their BN layers:

* the exponential moving average they trained with (momentum 0.1), and re-estimated from
  scratch over 200 training batches with other momenta and with the cumulative average (from
  ``reset_running_stats``: at momentum m, (1 - m)^200 of the weight stays on the reset mean 0
  and variance 1, 13% at m = 0.01; ``ema_name`` puts that bias in the method's label);
* PreciseBN: exact population statistics over 10^2, 10^3 and 10^4 training examples;
* the test batch's own statistics, at test batch 256 and 1 (with one example, the linear
  layers' BN has one value per channel: undefined, reported as such).

Each method is compared with the EMA as trained on the same models, paired over seeds. The
primary comparison is Wu & Johnson's claim, PreciseBN 10^4 against the EMA (``CLAIM``); the
other methods are near duplicates and form the exploratory family, Holm-corrected on its own
(``bnlab.studies.claims``). Training that normalizes with the running averages
(the learner's alternative) is the study ``train-with-running-averages``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.data import BatchLoader, load_split
from bnlab.norm.base import tracked_batch_norms
from bnlab.report.figures import plot_bars
from bnlab.studies.base import Arm, ArmResult, Findings, Study
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text
from bnlab.studies.stats import Comparison, Summary, compare, fmt, summary
from bnlab.train import TrainConfig, evaluate
from bnlab.train.evaluate import precise_accuracy


def arms(quick: bool) -> list[Arm]:
    config = TrainConfig(model="lenet-bn", norm="bnlab", lr=1.0, epochs=1 if quick else 5,
                         limit_train=2048 if quick else None,
                         limit_test=1000 if quick else None)
    return [Arm("bn", "BN (batch statistics in training)", config,
                {"norm": "bnlab"})]


def _reestimate(model: nn.Module, loader: BatchLoader, momentum: float | None,
                batches: int) -> nn.Module:
    m = copy.deepcopy(model)
    for bn in tracked_batch_norms(m):
        bn.reset_running_stats()
        bn.momentum = momentum
    m.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader.batches(1)):
            if i == batches:
                break
            m(x)
    return m.eval()


def _batch_stats_accuracy(model: nn.Module, test: BatchLoader) -> float:
    m = copy.deepcopy(model).train()  # batch statistics; the copy's buffers are discarded
    correct = total = 0
    with torch.no_grad():
        try:
            for x, y in test.batches(0):
                correct += int((m(x).argmax(1) == y).sum())
                total += y.shape[0]
        except ValueError:  # one value per channel: batch statistics are undefined
            return math.nan
    return correct / total


REESTIMATE_BATCHES = 200


def ema_name(momentum: float, batches: int = REESTIMATE_BATCHES) -> str:
    """The re-estimated EMA's label. After ``reset_running_stats`` (mean 0, variance 1) an EMA
    of momentum m over k batches still puts (1 - m)^k of its weight on those reset values: a
    built-in bias toward them, stated in the label when it is at least 0.1% (0.99^200 = 13%);
    not corrected, so the method is what a user re-estimating that way gets."""
    left = (1 - momentum) ** batches
    if left < 1e-3:
        return f"EMA {momentum:g}, {batches} batches"
    return (f"EMA {momentum:g} from reset, {batches} batches ({left:.0%} of the weight still "
            f"on the reset values)")


def methods(train: BatchLoader, test: BatchLoader, n_train: int) -> dict[
        str, Callable[[nn.Module], float]]:
    def precise(n: int) -> Callable[[nn.Module], float]:
        # (a diverged model is evaluated with the statistics it has: loop.precise_accuracy)
        return lambda model: precise_accuracy(model, train, test, min(n, n_train))

    def ema(momentum: float | None) -> Callable[[nn.Module], float]:
        return lambda model: evaluate(
            _reestimate(model, train, momentum, REESTIMATE_BATCHES), test)

    def test_batch(size: int) -> Callable[[nn.Module], float]:
        loader = BatchLoader(test.images, test.labels, size, shuffle=False)
        return lambda model: _batch_stats_accuracy(model, loader)

    return {"EMA as trained (0.1)": lambda model: evaluate(model, test),
            ema_name(0.01): ema(0.01), ema_name(0.1): ema(0.1), ema_name(0.5): ema(0.5),
            f"cumulative, {REESTIMATE_BATCHES} batches": ema(None),
            "PreciseBN 10^2": precise(100), "PreciseBN 10^3": precise(1000),
            "PreciseBN 10^4": precise(10000), "test batch 256": test_batch(256),
            "test batch 1": test_batch(1)}


REFERENCE = "EMA as trained (0.1)"
PRECISE = "PreciseBN 10^4"
# The one literature claim tested (``bnlab.studies.claims``); the other methods are near
# duplicates of it or of the reference and stay exploratory, so the primary family is one
# comparison. Margin: half a point of test accuracy.
CLAIM = Claim("precise-beats-ema", "Population statistics (PreciseBN) evaluate better than the "
              "EMA the model trained with", "Wu & Johnson 2021", "test_acc", +1, 0.005,
              REFERENCE, PRECISE)


def method_values(bn: ArmResult) -> dict[str, list[float]]:
    """Each method's test accuracy on each seed's trained model (NaN: undefined)."""
    cfg = bn.runs[0].config
    tr = load_split(cfg.dataset, "train", cfg.data_dir, log=lambda m: None)
    te = load_split(cfg.dataset, "test", cfg.data_dir, log=lambda m: None)
    n_test = cfg.limit_test or len(te)
    train = BatchLoader(tr.images[: cfg.limit_train], tr.labels[: cfg.limit_train], 256, seed=0)
    test = BatchLoader(te.images[:n_test], te.labels[:n_test], 1000, shuffle=False)
    models = [run.model() for run in bn.runs]
    return {name: [fn(m) for m in models]
            for name, fn in methods(train, test, len(train.labels)).items()}


def _value(s: Summary) -> str:
    """'0.825 +- 0.022', or '0.825' for one seed."""
    return fmt(s.mean, s.std, digits=3) if s.n == 1 else s.text()


def analyze_values(values: dict[str, list[float]]) -> tuple[
        list[dict[str, Any]], str, list[Judgement], list[Comparison], str, str]:
    """Table rows, verdict, the primary judgement (PreciseBN 10^4 vs the EMA, ``CLAIM``), the
    exploratory comparisons (every other method vs the EMA, their own Holm family), headline
    and literature sentence from each method's per-seed accuracies on the same models
    (``REFERENCE`` first)."""
    ref = values[REFERENCE]
    undefined = [name for name, v in values.items() if all(math.isnan(x) for x in v)]
    tested = [name for name in values if name != REFERENCE and name not in undefined]
    # The same models, seed by seed: paired over seeds.
    primary = judge([(CLAIM, ref, values[PRECISE], True)]) if PRECISE in tested else []
    others = [name for name in tested if name != PRECISE]
    tests = exploratory([compare(ref, values[name], metric="test_acc",
                                 label=f"{name} vs {REFERENCE}", paired=True)
                         for name in others])
    by = dict(zip(others, tests, strict=True))
    rows: list[dict[str, Any]] = []
    for name, v in values.items():
        s = summary(v)
        rows.append({"arm": name, "test_acc": s.mean, "test_acc_std": s.std, "seeds": s.n,
                     "vs EMA as trained": "reference" if name == REFERENCE else
                     "undefined" if name in undefined else
                     f"claim: {primary[0].wording}" if name == PRECISE else
                     by[name].word if by[name].testable else "not testable"})
    n = len(ref)
    parts = [f"{name} {by[name].text() if by[name].testable else _value(by[name].b)}"
             for name in others]
    untested = sorted({c.word for c in tests if not c.testable})
    verdict = (f"Test accuracy of the same trained models ({n} seed{'s' if n != 1 else ''}), "
               f"each other method against the EMA they trained with "
               f"({_value(summary(ref))}; exploratory: paired t over seeds, Holm over these "
               f"methods, 'better'/'worse' need p < 0.05): " + "; ".join(parts) + "."
               + (f" Undefined (one value per channel): {', '.join(undefined)}."
                  if undefined else "")
               + (f" [{'; '.join(untested)}]" if untested else ""))
    better = [name for name in others if by[name].word == "better"]
    worse = [name for name in others if by[name].word == "worse"]
    claim = (f"{PRECISE} vs EMA as trained: {primary[0].wording}; " if primary else
             f"{PRECISE} did not run; ")
    headline = (f"EMA as trained {_value(summary(ref))}; {claim}exploratory, clearly better: "
                f"{', '.join(better) or 'none'}; clearly worse: {', '.join(worse) or 'none'} "
                f"({n} seed{'s' if n != 1 else ''}, same models)")
    lit = literature_text(primary) if primary else (
        f"{CLAIM.source}: not tested ({PRECISE} did not run)")
    return rows, verdict, primary, tests, headline, lit


def analyze(results: list[ArmResult]) -> Findings:
    (bn,) = results
    rows, verdict, primary, tests, headline, lit = analyze_values(method_values(bn))
    n = len(bn.runs)

    def plot(path: Path) -> None:
        shown = [r for r in rows if not math.isnan(r["test_acc"])]
        missing = [r["arm"] for r in rows if math.isnan(r["test_acc"])]
        note = f"; undefined, not shown: {', '.join(missing)}" if missing else ""
        plot_bars([r["arm"] for r in shown], [r["test_acc"] for r in shown],
                  [r["test_acc_std"] for r in shown], path, "test accuracy",
                  f"Statistics used at inference (same trained models, mean +- sample std, "
                  f"{n} seed{'s' if n != 1 else ''}{note})")

    return Findings(rows, verdict, plot, tests, headline, lit, primary)


STUDY = Study(
    "inference-stats", "Why running averages at inference, and what is wrong with them?", arms,
    analyze, needs="it re-estimates the statistics of LeNet-BN's layers",
    setup="LeNet-BN (bnlab's BN) on Fashion-MNIST (60k train, 10k test), batch 256, plain SGD "
    "at lr 1.0, 5 epochs, 5 seeds. Each seed's trained model is evaluated on the test set with "
    "different statistics in its BN layers: the EMA it trained with (momentum 0.1); the EMA "
    "re-estimated from scratch over 200 training batches with the weights frozen (momentum "
    "0.01, 0.1, 0.5, and the cumulative average; at momentum 0.01, 0.99^200 = 13% of the "
    "weight stays on the reset values, mean 0 and variance 1, and its label says so); "
    "PreciseBN population statistics over 10^2, "
    "10^3 and 10^4 training examples; the test batch's own statistics at batch 256 and 1. "
    "Verdict: one primary comparison, Wu & Johnson's claim (PreciseBN 10^4 against the EMA as "
    "trained, paired over seeds on the same models, margin 0.005, worded by the one rule with "
    "the exact sign-flip test below 8 seeds); every other method against the EMA is "
    "exploratory, Holm-corrected over those methods. The learner's other question, training "
    "that normalizes with the running averages instead of the batch's statistics, is answered "
    "by the study train-with-running-averages.",
    caveats="All methods evaluate the same few models, so the comparison says how much the "
    "statistics matter for these weights, not how training would change with them. The "
    "models end at a constant lr 1.0, where the EMA lags the weights most; with a decaying "
    "lr the EMA and the population statistics converge. Re-estimation and PreciseBN see the "
    "training set in one fixed order. Test-batch statistics at batch 1 are undefined for the "
    "linear layers' BN (one value per channel) and are reported as such, not tested.")
