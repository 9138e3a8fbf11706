r"""Weight decay on BN's gamma and beta, and on the weights that feed a BN.

A BatchNorm makes the conv/linear weight W before it scale invariant: BN(a W x) = BN(W x) for
a > 0, so the loss L(W) = L(W / ||W||) and its gradient is orthogonal to W and scales as
1 / ||W||. Plain SGD then only grows ||W|| (||W - lr g||^2 = ||W||^2 + lr^2 ||g||^2), and weight
decay (L2, ``W <- (1 - lr wd) W - lr g``) cannot regularize the function at all: it only
shrinks ||W||. What it changes is the step the function sees, the angular step

    lr_eff = lr / ||W||^2,

which weight decay raises (van Laarhoven 2017, "L2 regularization versus batch and weight
normalization"; Zhang et al. 2019, "Three mechanisms of weight decay regularization"). BN's
own gamma and beta are not scale invariant; common recipes leave them (with the biases) out of
weight decay (Jia et al. 2018; He et al. 2019, "Bag of tricks", "no bias decay").

The study is a 2x2 design on LeNet-BN (Fashion-MNIST): decay on gamma/beta on or off
(``no_decay_on_norm``) crossed with decay on the weights before a norm on or off
(``no_decay_before_norm``), every arm with the same ``weight_decay`` on everything else; and
``resnet18-cifar`` on synthetic CIFAR-shaped data with decay on or off for the weights before a
norm. A probe (``probes_weight_decay``) records ||W|| of the weights before each norm (those
``no_decay_before_norm`` spares) and of gamma and beta.

Primary comparisons (one per claim, LeNet-BN, paired over seeds: the arms share seeds and
batches): decay on the weights before a norm shrinks ||W|| (log10 of the final ||W||), and it
does not hurt test accuracy (the effective-lr view: it should help or be neutral); decay left
off gamma and beta improves test accuracy ("no bias decay"). Everything else is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import Arm, ArmResult, Findings, Study, compare_arms, summarize
from bnlab.studies.probes_weight_decay import PreNormProbe
from bnlab.studies.stats import Comparison, compare, holm, summary
from bnlab.train import TrainConfig

LENET_DATA = "fashion-mnist"
LENET_LR, LENET_WD = 1.0, 5e-3  # the textbook's plain SGD at lr 1.0
RESNET_LR, RESNET_MOMENTUM, RESNET_WD = 0.1, 0.9, 5e-2
# (decay on gamma/beta, decay on the weights before a norm) -> arm name and label
FACTORS = {(True, True): ("all", "decay on all"),
           (False, True): ("no-norm", "no decay on gamma/beta"),
           (True, False): ("no-pre", "no decay before norm"),
           (False, False): ("neither", "no decay on gamma/beta nor before norm")}


def _factor(base: TrainConfig, on_norm: bool, before_norm: bool) -> TrainConfig:
    return replace(base, no_decay_on_norm=not on_norm, no_decay_before_norm=not before_norm)


def arms(quick: bool) -> list[Arm]:
    lenet = TrainConfig(model="lenet-bn", dataset=LENET_DATA, lr=LENET_LR, batch_size=256,
                        weight_decay=LENET_WD, epochs=1 if quick else 3,
                        limit_train=512 if quick else 6000, limit_test=256 if quick else 2000)
    resnet = TrainConfig(model="resnet18-cifar", dataset="fake-cifar10", lr=RESNET_LR,
                         momentum=RESNET_MOMENTUM, weight_decay=RESNET_WD, batch_size=32,
                         epochs=1, limit_train=32 if quick else 128,
                         limit_test=32 if quick else 128)
    out = []
    for (on_norm, before), (name, label) in FACTORS.items():
        out.append(Arm(f"lenet-{name}", f"LeNet-BN, {label}", _factor(lenet, on_norm, before),
                       {"net": "lenet-bn", "decay_norm": on_norm, "decay_before": before},
                       probe=lambda: PreNormProbe(1 if quick else 3)))
    for before in (True, False):
        name, label = FACTORS[(True, before)]
        out.append(Arm(f"resnet-{name}", f"ResNet-18, {label}", _factor(resnet, True, before),
                       {"net": "resnet18-cifar", "decay_norm": True, "decay_before": before},
                       probe=lambda: PreNormProbe(1)))
    return out


def last_probe(res: ArmResult, key: str) -> list[float]:
    """Each seed's last probed value of `key` (NaN where the run has no probes)."""
    return [float(r.probes[-1].get(key, math.nan)) if r.probes else math.nan for r in res.runs]


def log_norm(res: ArmResult, key: str = "w_norm") -> list[float]:
    """log10 of each seed's final probed norm (NaN where not finite or not positive)."""
    return [math.log10(v) if math.isfinite(v) and v > 0 else math.nan
            for v in last_probe(res, key)]


def effective_step(res: ArmResult) -> list[float]:
    """Each seed's lr / ||W_l||^2 at the last probe, geometric mean over the weights before a
    norm (NaN without probes)."""
    out = []
    for r in res.runs:
        row = r.probes[-1] if r.probes else {}
        norms = [float(v) for k, v in row.items() if k.startswith("w_norm_")]
        ok = norms and all(math.isfinite(v) and v > 0 for v in norms)
        out.append(r.config.lr * 10 ** (-2 * sum(map(math.log10, norms)) / len(norms))
                   if ok else math.nan)
    return out


def _key(res: ArmResult) -> tuple[str, bool, bool]:
    t = res.arm.tags
    return str(t["net"]), bool(t["decay_norm"]), bool(t["decay_before"])


def table(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        for key, name in (("w_norm", "||W|| before norm"), ("gamma_norm", "||gamma||"),
                          ("beta_norm", "||beta||")):
            s = summary(last_probe(res, key))
            row[name], row[f"{name}_std"] = s.mean, s.std
        s = summary(effective_step(res))
        row["lr/||W||^2"], row["lr/||W||^2_std"] = s.mean, s.std
    return rows
