r"""The weight-decay-on-norm study's probe: the norms of the weights that feed each norm layer.

The weights before a norm are those ``--no-decay-before-norm`` spares, found the same way
(``bnlab.train.build.weights_before_norm``: a conv/linear weight whose output goes straight, and
only, into a norm layer, read from the fx dataflow). For each such weight W_l the probe records
||W_l|| (L2 over all its entries); over all of them ``w_norm`` = sqrt(sum_l ||W_l||^2); over
all norm layers ``gamma_norm`` and ``beta_norm`` likewise. BN(W x) = BN(c W x) for any c > 0
(up to BN's eps), so the loss does not see ||W_l||: plain SGD moves W_l orthogonally to itself
(||W_l|| grows), and weight decay only shrinks it. The step the function sees is the angular
one, and since the gradient scales as 1 / ||W_l|| it is lr / ||W_l||^2 (van Laarhoven 2017).
Reads parameters only: training is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnlab.norm.renormalize import is_norm_layer
from bnlab.train.build import weights_before_norm

__all__ = ["PreNormProbe", "pre_norm_norms"]


def _sq(p: torch.Tensor | None) -> float:
    return 0.0 if p is None else float(p.detach().double().square().sum())


def pre_norm_norms(model: nn.Module) -> dict[str, float]:
    """``w_norm``, ``w_norm_<l>`` per weight l before a norm (0, 1, ..., in the order of
    ``weights_before_norm``), ``gamma_norm`` and ``beta_norm`` over every norm layer of
    `model` (L2 norms)."""
    return _norms(model, weights_before_norm(model))


def _norms(model: nn.Module, names: list[str]) -> dict[str, float]:
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    total = 0.0
    for i, name in enumerate(names):
        sq = _sq(params[name])
        out[f"w_norm_{i}"] = math.sqrt(sq)
        total += sq
    gamma = beta = 0.0
    for m in model.modules():
        if is_norm_layer(m):
            gamma += _sq(getattr(m, "weight", None))
            beta += _sq(getattr(m, "bias", None))
    out.update(w_norm=math.sqrt(total), gamma_norm=math.sqrt(gamma), beta_norm=math.sqrt(beta))
    return out


class PreNormProbe:
    """Every `every` steps (before that step's update): ``pre_norm_norms(model)``. The names
    of the weights before a norm are traced once, at the first call (the network's dataflow
    does not change during training)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.names: list[str] | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.names is None:
            self.names = weights_before_norm(model)
        return _norms(model, self.names)
