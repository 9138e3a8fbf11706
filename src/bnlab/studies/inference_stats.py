"""Why running averages at inference, and what is wrong with them?

The same trained LeNet-BN models (one per seed) are evaluated on the test set with different
statistics in their BN layers:

* the exponential moving average they trained with (momentum 0.1), and re-estimated from
  scratch over 200 training batches with other momenta and with the cumulative average;
* PreciseBN: exact population statistics over 10^2, 10^3 and 10^4 training examples;
* the test batch's own statistics, at test batch 256 and 1 (with one example, the linear
  layers' BN has one value per channel: undefined, reported as such).

A separate arm trains with BN normalizing by the running averages instead of the batch's
statistics (``norm="running-stats"``), the learner's alternative, to show what breaks.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bnlab.data import BatchLoader, load_split
from bnlab.norm.base import tracked_batch_norms
from bnlab.norm.precise import precise_bn
from bnlab.report.figures import plot_bars
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig, evaluate


def arms(quick: bool) -> list[Arm]:
    base = {"model": "lenet-bn", "lr": 1.0, "epochs": 1 if quick else 5,
            "limit_train": 2048 if quick else None, "limit_test": 1000 if quick else None}
    return [Arm("bn", "BN (batch statistics in training)", TrainConfig(norm="bnlab", **base),
                {"norm": "bnlab"}),
            Arm("running", "normalize with running averages in training",
                TrainConfig(norm="running-stats", **base), {"norm": "running-stats"})]


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


def methods(train: BatchLoader, test: BatchLoader, n_train: int) -> dict[
        str, Callable[[nn.Module], float]]:
    def precise(n: int) -> Callable[[nn.Module], float]:
        def run(model: nn.Module) -> float:
            m = copy.deepcopy(model)
            precise_bn(m, train.batches(2), min(n, n_train))
            return evaluate(m, test)
        return run

    def ema(momentum: float | None) -> Callable[[nn.Module], float]:
        return lambda model: evaluate(_reestimate(model, train, momentum, 200), test)

    def test_batch(size: int) -> Callable[[nn.Module], float]:
        loader = BatchLoader(test.images, test.labels, size, shuffle=False)
        return lambda model: _batch_stats_accuracy(model, loader)

    return {"EMA as trained (0.1)": lambda model: evaluate(model, test),
            "EMA 0.01, 200 batches": ema(0.01), "EMA 0.1, 200 batches": ema(0.1),
            "EMA 0.5, 200 batches": ema(0.5), "cumulative, 200 batches": ema(None),
            "PreciseBN 10^2": precise(100), "PreciseBN 10^3": precise(1000),
            "PreciseBN 10^4": precise(10000), "test batch 256": test_batch(256),
            "test batch 1": test_batch(1)}


def analyze(results: list[ArmResult]) -> Findings:
    bn, running = results
    cfg = bn.runs[0].config
    tr = load_split(cfg.dataset, "train", cfg.data_dir, log=lambda m: None)
    te = load_split(cfg.dataset, "test", cfg.data_dir, log=lambda m: None)
    n_test = cfg.limit_test or len(te)
    train = BatchLoader(tr.images[: cfg.limit_train], tr.labels[: cfg.limit_train], 256, seed=0)
    test = BatchLoader(te.images[:n_test], te.labels[:n_test], 1000, shuffle=False)
    one_batch = methods(train, test, len(train.labels))
    rows = []
    for name, fn in one_batch.items():
        accs = [fn(run.model()) for run in bn.runs]
        finite = [a for a in accs if not math.isnan(a)]
        rows.append({"arm": name, "test_acc": statistics.fmean(finite) if finite else math.nan,
                     "test_acc_std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
                     "seeds": len(bn.runs)})
    trained = summarize([running])[0]
    rows.append({"arm": "trained normalizing with running averages",
                 "test_acc": trained["test_acc"], "test_acc_std": trained["test_acc_std"],
                 "seeds": trained["seeds"]})
    by = {r["arm"]: r for r in rows}

    def acc(name: str) -> str:
        r = by[name]
        return "undefined" if math.isnan(r["test_acc"]) else \
            f"{r['test_acc']:.3f} +- {r['test_acc_std']:.3f}"

    verdict = (f"Test accuracy of the same models: EMA as trained {acc('EMA as trained (0.1)')}, "
               f"the same momentum re-estimated over 200 batches with the weights frozen "
               f"{acc('EMA 0.1, 200 batches')} (momentum 0.01: {acc('EMA 0.01, 200 batches')}), "
               f"PreciseBN 10^4 {acc('PreciseBN 10^4')}, test-batch statistics at 256 "
               f"{acc('test batch 256')} and at 1 {acc('test batch 1')}; training that "
               f"normalizes with the running averages reaches "
               f"{acc('trained normalizing with running averages')}.")

    def plot(path: Path) -> None:
        shown = [r for r in rows if not math.isnan(r["test_acc"])]
        missing = [r["arm"] for r in rows if math.isnan(r["test_acc"])]
        note = f"; undefined, not shown: {', '.join(missing)}" if missing else ""
        plot_bars([r["arm"] for r in shown], [r["test_acc"] for r in shown],
                  [r["test_acc_std"] for r in shown], path, "test accuracy",
                  f"Statistics used at inference (same trained models, mean +- std{note})")

    return Findings(rows, verdict, plot)


STUDY = Study("inference-stats", "Why running averages at inference, and what is wrong with "
              "them?", arms, analyze,
              needs="it re-estimates the statistics of LeNet-BN's layers")
