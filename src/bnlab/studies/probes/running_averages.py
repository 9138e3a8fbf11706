"""The train-with-running-averages study's probe: norms of the weights and biases feeding each
norm layer and of its gamma and beta (training code: a change here makes that study's runs
stale; see ``bnlab.studies.probes``)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["NORM_KEYS", "NormWeightsProbe", "norm_weights"]

NORM_KEYS = ("w_norm", "b_norm", "gamma_norm", "beta_norm")


class NormWeightsProbe:
    """Every `every` steps: the L2 norms, over all norm layers of the model, of the weights and
    biases of the convolution / linear layer feeding each one (``w_norm``, ``b_norm``) and of
    the layers' own gamma and beta. Reads parameters only: training is unchanged."""

    def __init__(self, every: int) -> None:
        self.every = every

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return norm_weights(model)


def norm_weights(model: nn.Module) -> dict[str, float]:
    """{w_norm, b_norm, gamma_norm, beta_norm} of `model` (see ``NormWeightsProbe``)."""
    sums = dict.fromkeys(NORM_KEYS, 0.0)
    feeding: nn.Conv2d | nn.Linear | None = None

    def add(key: str, p: torch.Tensor | None) -> None:
        if p is not None:
            sums[key] += float(p.detach().double().square().sum())

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            feeding = m
        elif getattr(m, "running_mean", None) is not None and feeding is not None:
            add("w_norm", feeding.weight)
            add("b_norm", feeding.bias)
            add("gamma_norm", getattr(m, "weight", None))
            add("beta_norm", getattr(m, "bias", None))
            feeding = None
    return {k: math.sqrt(v) for k, v in sums.items()}
