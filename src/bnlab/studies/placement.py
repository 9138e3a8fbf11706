"""Where does BN go? Before vs after the activation; and the bias before BN is redundant.

Two LeNets trained alike: norm -> sigmoid (the chapter, and the BN paper: Ioffe & Szegedy 2015
normalize x = Wu + b before the nonlinearity) and sigmoid -> norm. They are compared on the
final train loss and on test accuracy with the running averages and with PreciseBN statistics
(paired t over seeds: both arms see the same batches). The primary comparison is the paper's
claim on test accuracy (``CLAIM``, ``bnlab.studies.claims``); the rest is exploratory.

Separately, a measurement rather than a training run: in the *before* network each convolution
and linear layer directly followed by a BatchNorm (conv 1, conv 2, linear 1 and linear 2; not
the output layer) has a bias b that BN subtracts right back out with the batch mean,
``BN(Wu + b) = BN(Wu)`` in training mode, so removing it changes the parameter count and
nothing else. The analysis builds that LeNet-BN with and without those biases (same weights
otherwise, float64) and reports the largest output and weight-gradient differences in training
mode. In the *after* network the same biases feed a sigmoid, which does not cancel them: they
are not redundant there, and this measurement says nothing about that arm.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.models import lenet_bn
from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    compare_arms,
    summarize,
)
from bnlab.studies.claims import Claim, exploratory, judge, literature_text
from bnlab.studies.stats import Comparison
from bnlab.train import TrainConfig

BIAS_ROW = "bias before BN removed (measurement on LeNet-BN, not a training arm)"
# The one literature claim tested (``bnlab.studies.claims``): Ioffe & Szegedy (2015, section
# 3.2) normalize x = Wu + b before the nonlinearity, arguing its distribution is better
# behaved there. Read as: BN after the sigmoid reaches a lower test accuracy. Margin: half a
# point. Train loss and the PreciseBN accuracy are exploratory.
CLAIM = Claim("before-beats-after", "BN placed before the nonlinearity trains better than "
              "after it (higher test accuracy)", "Ioffe & Szegedy 2015", "test_acc", -1,
              0.005, "BN before sigmoid", "BN after sigmoid")


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 4,
                       limit_train=2048 if quick else 30000, limit_test=1000 if quick else 10000)
    return [Arm("before", "BN before sigmoid", base, {"placement": "before"}),
            Arm("after", "BN after sigmoid", replace(base, model="lenet-bn-after"),
                {"placement": "after"})]


def bias_redundancy(seed: int = 0) -> dict[str, Any]:
    """Which biases sit directly before a BN, how many parameters they are, and the max
    |difference| in outputs and weight gradients without them (float64, training mode)."""
    torch.manual_seed(seed)
    with_bias = lenet_bn("bnlab").double()  # the "lenet-bn" model: an nn.Sequential
    without = lenet_bn("bnlab").double()
    without.load_state_dict(with_bias.state_dict())
    saved, names = 0, []
    counts = {nn.Conv2d: 0, nn.Linear: 0}
    for layer, after in itertools.pairwise(list(without)):
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        kind = type(layer)
        counts[kind] += 1
        if "BatchNorm" in type(after).__name__ and layer.bias is not None:
            saved += layer.bias.numel()
            names.append(f"{'conv' if kind is nn.Conv2d else 'linear'} {counts[kind]}")
            with torch.no_grad():
                layer.bias.zero_()  # as if absent: the next BN removes any constant shift
            layer.bias.requires_grad_(False)
    x = torch.rand(32, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    outs: list[torch.Tensor] = []
    grads: list[dict[str, torch.Tensor]] = []
    for model in (with_bias, without):
        model.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()
                      if "weight" in n and p.grad is not None})
    grad_diff = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    return {"layers": ", ".join(names), "parameters_saved": saved,
            "max_output_diff": float((outs[0] - outs[1]).abs().max()),
            "max_weight_grad_diff": grad_diff}


REDUNDANT = 1e-9  # float64 rounding on LeNet-BN's outputs is ~1e-15; beyond this, a change


def redundancy_text(red: dict[str, Any]) -> str:
    """'redundant there' only when the outputs differ by less than ``REDUNDANT``; else the
    measured difference."""
    if red["max_output_diff"] < REDUNDANT:
        return "redundant there (after the sigmoid they feed the sigmoid and are not)"
    return (f"NOT redundant: the output changes by {red['max_output_diff']:.1e}, above float64 "
            f"rounding ({REDUNDANT:.0e})")


def bias_row(red: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The measurement's own row: the arms' columns blank, its own columns filled."""
    row: dict[str, Any] = dict.fromkeys(keys, "")
    row.update({"arm": BIAS_ROW, "biases removed": red["layers"],
                "parameters saved": red["parameters_saved"],
                "max output diff": f"{red['max_output_diff']:.1e}",
                "max weight-grad diff": f"{red['max_weight_grad_diff']:.1e}"})
    return row


def lower(c: Comparison, a: str, b: str, word: str = "lower") -> str:
    """Which arm's mean is lower (or, `word` "higher", higher), and whether the difference
    is clear: 'after lower (clear)'."""
    if not c.testable or not math.isfinite(c.diff):
        return "not testable"
    if c.diff == 0:
        return "equal means"
    pick = b if (c.diff < 0) == (word == "lower") else a
    return f"{pick} {word} ({'clear' if c.clear else 'not clear'})"


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    before, after = by["before"], by["after"]
    label = "after vs before the sigmoid"
    primary = judge([(CLAIM, before.finals("test_acc"), after.finals("test_acc"),
                      before.paired_with(after))])
    (claim,) = primary
    acc = claim.comparison
    tests = exploratory([compare_arms(before, after, "train_loss", label,
                                      higher_is_better=False),
                         *accuracy_comparisons(before, after, label)[1:]])
    loss, precise = tests
    red = bias_redundancy()
    for r in rows:
        r.update({"biases removed": "", "parameters saved": "", "max output diff": "",
                  "max weight-grad diff": ""})
    arm_rows = list(rows)
    rows.append(bias_row(red, list(rows[0])))
    verdict = (f"BN after the sigmoid against BN before it (paired t over seeds; exploratory, "
               f"Holm over its own family): train loss {loss.text()}: "
               f"{lower(loss, 'before', 'after')}; test accuracy with PreciseBN statistics "
               f"{precise.text()}: {lower(precise, 'before', 'after', 'higher')}. "
               f"Separately, in LeNet-BN with BN before the sigmoid, removing the biases "
               f"directly before a BN ({red['layers']}: {red['parameters_saved']} parameters) "
               f"changes the training-mode output by at most {red['max_output_diff']:.1e} and "
               f"the weight gradients by {red['max_weight_grad_diff']:.1e}: "
               f"{redundancy_text(red)}.")
    testable = acc.testable and precise.testable
    acc_part = (f"test accuracy after vs before: {claim.wording} (claim {CLAIM.key}); with "
                f"PreciseBN: {precise.word if testable else 'not testable'} (exploratory)")
    redundant = ("are redundant" if red["max_output_diff"] < REDUNDANT else
                 "are not redundant")
    headline = (f"BN after the sigmoid vs before: train loss {fmt_diff(loss)}, "
                f"{lower(loss, 'before', 'after')}; {acc_part}; the "
                f"{red['parameters_saved']} biases before BN {redundant} (max output change "
                f"{red['max_output_diff']:.0e}).")
    literature = f"{literature_text(primary)}. The literature is not settled."
    n_seeds = len(before.runs)

    def plot(path: Path) -> None:
        seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
        plot_accuracy_and_loss(arm_rows, path, f"BN before or after the sigmoid (LeNet; mean "
                                               f"+- sample std, {seeds})")

    return Findings(rows, verdict, plot, tests, headline, literature, primary)


def fmt_diff(c: Comparison) -> str:
    return "n/a" if not c.testable else f"{c.diff:+.{c.digits()}f}"


SETUP = (
    "The chapter's sigmoid LeNet on Fashion-MNIST (the first 30000 training images, the full "
    "test set), batch 256, SGD lr 1.0, 4 epochs, 5 seeds, with bnlab's BatchNorm before every "
    "sigmoid (the chapter's LeNet-BN) or after it. The arms are compared on final train loss "
    "and test accuracy with the running averages and with PreciseBN statistics (10000 "
    "training examples), by paired t-tests over seeds. Primary comparison, one claim: BN after "
    "the sigmoid has a lower test accuracy (running averages) than before it (Ioffe & "
    "Szegedy 2015), margin 0.005, worded by the one rule (the exact sign-flip test beside "
    "the t-test below 8 seeds); train loss and the PreciseBN accuracy are exploratory. "
    "Separately, the bias measurement: LeNet-BN is built twice "
    "with the same weights, once without the biases of the four layers directly before a BN "
    "(conv 1, conv 2, linear 1, linear 2), and one training-mode forward and backward pass in "
    "float64 on a random batch of 32 gives the largest output and weight-gradient "
    "differences.")
CAVEATS = (
    "One network with sigmoid activations: with ReLU the answer may differ, and the "
    "literature is not settled. The bias measurement holds in training mode (batch "
    "statistics); in evaluation mode the running mean removes the bias only once it has "
    "caught up with it. It is a single forward/backward pass, not a training run: it shows "
    "the function and gradients are the same, so training would be too (up to float "
    "rounding).")

STUDY = Study("placement", "Does BN go before or after the activation? Is the bias before it "
              "needed?", arms, analyze, setup=SETUP, caveats=CAVEATS,
              needs="it moves BN inside the textbook's sigmoid LeNet")
