"""bnlab.models: the seed notebooks' networks, each taking ``norm=`` (a registry name or callable).

One table, name -> builder. ``build_model(name, norm)`` is what the trainer calls.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from bnlab.models.lenet import lenet, lenet_bn
from bnlab.models.small import mlp, mlp3_sigmoid, small_cnn
from bnlab.norm.registry import NormSpec

__all__ = ["MODELS", "build_model", "lenet", "lenet_bn", "mlp", "mlp3_sigmoid", "small_cnn"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet,
    "lenet-bn": lenet_bn,
    "lenet-bn-maxpool": partial(lenet_bn, pool="max"),
    "lenet-bn-after": partial(lenet_bn, after=True),
    "mlp": mlp,
    "mlp3": mlp3_sigmoid,
    "cnn": small_cnn,
}


def build_model(name: str, norm: NormSpec) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](norm=norm)
