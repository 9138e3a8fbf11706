"""Where does BN go? Before vs after the activation; and the bias before BN is redundant.

Two LeNets trained alike: norm -> sigmoid (the chapter, and the BN paper) and sigmoid -> norm.
Separately, a measurement rather than a training run: a convolution's or linear layer's bias
in front of a BatchNorm is subtracted right back out with the batch mean, so removing it
changes the parameter count and nothing else. The analysis builds LeNet-BN with and without
those biases (same weights otherwise) and reports the largest output and gradient differences
in training mode.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from bnlab.models import build_model
from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig


def arms(quick: bool) -> list[Arm]:
    base = {"epochs": 1 if quick else 4, "limit_train": 2048 if quick else 30000,
            "limit_test": 1000 if quick else 10000}
    return [Arm("before", "BN before sigmoid", TrainConfig(model="lenet-bn", **base),
                {"placement": "before"}),
            Arm("after", "BN after sigmoid", TrainConfig(model="lenet-bn-after", **base),
                {"placement": "after"})]


def bias_redundancy(seed: int = 0) -> dict[str, float]:
    """Parameters saved, and max |difference| in outputs and weight gradients, float64."""
    torch.manual_seed(seed)
    with_bias = build_model("lenet-bn", "bnlab").double()
    without = build_model("lenet-bn", "bnlab").double()
    without.load_state_dict(with_bias.state_dict())
    saved = 0
    layers = list(without)
    for layer, after in itertools.pairwise(layers):
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and "BatchNorm" in type(after).__name__:
            saved += layer.bias.numel()
            with torch.no_grad():
                layer.bias.zero_()  # as if absent: the next BN removes any constant shift
            layer.bias.requires_grad_(False)
    x = torch.rand(32, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    outs, grads = [], []
    for model in (with_bias, without):
        model.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if "weight" in n})
    grad_diff = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    return {"parameters_saved": saved, "max_output_diff": float((outs[0] - outs[1]).abs().max()),
            "max_weight_grad_diff": grad_diff}


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    before, after = rows[0], rows[1]
    diff = before["test_acc"] - after["test_acc"]
    noise = 2 * max(before["test_acc_std"], after["test_acc_std"], 1e-9)
    which = ("before the sigmoid is better" if diff > noise else
             "after the sigmoid is better" if diff < -noise else "no clear winner")
    red = bias_redundancy()
    verdict = (f"Placement: {which} (before {before['test_acc']:.3f} +- "
               f"{before['test_acc_std']:.3f}, after {after['test_acc']:.3f} +- "
               f"{after['test_acc_std']:.3f}). "
               f"Dropping the {red['parameters_saved']} biases before BN layers changes the "
               f"training-mode output by {red['max_output_diff']:.1e} and the weight gradients "
               f"by {red['max_weight_grad_diff']:.1e}: redundant.")
    for r in rows:
        r.update(red)

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(rows, path, "BN before or after the activation (LeNet; mean +- std)")

    return Findings(rows, verdict, plot)


STUDY = Study("placement", "Does BN go before or after the activation? Is the bias before it "
              "needed?", arms, analyze,
              needs="it moves BN inside the textbook's sigmoid LeNet")
