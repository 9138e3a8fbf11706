"""bnlab.models: the seed notebooks' networks and CIFAR presets, each taking ``norm=`` (a registry
name or callable).

One table, name -> builder, and one of the input each model expects, (C, H, W):
``build_model(name, norm)`` is what the trainer calls, ``input_shape(name)`` what it checks a
dataset against.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from bnlab.models.lenet import lenet, lenet_bn
from bnlab.models.resnet import resnet18_cifar
from bnlab.models.small import mlp, mlp3_sigmoid, mlp_deep, small_cnn
from bnlab.models.vgg import vgg_cifar
from bnlab.norm.registry import NormSpec

__all__ = ["INPUTS", "MODELS", "build_model", "input_shape", "lenet", "lenet_bn", "mlp",
           "mlp3_sigmoid", "mlp_deep", "resnet18_cifar", "small_cnn", "vgg_cifar"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet,
    "lenet-bn": lenet_bn,
    "lenet-bn-maxpool": partial(lenet_bn, pool="max"),
    "lenet-bn-after": partial(lenet_bn, after=True),
    "mlp": mlp,
    "mlp3": mlp3_sigmoid,
    "mlp-deep": mlp_deep,
    "cnn": small_cnn,
    "resnet18-cifar": resnet18_cifar,
    "vgg-cifar": vgg_cifar,
}

_GREY_28, _COLOUR_32 = (1, 28, 28), (3, 32, 32)
# The (C, H, W) of one input image, one entry per model (the trainer checks the dataset's):
# the seed's networks read 28x28 grey images, the presets 32x32 colour ones.
INPUTS: dict[str, tuple[int, int, int]] = {
    "lenet": _GREY_28, "lenet-bn": _GREY_28, "lenet-bn-maxpool": _GREY_28,
    "lenet-bn-after": _GREY_28, "mlp": _GREY_28, "mlp3": _GREY_28, "mlp-deep": _GREY_28,
    "cnn": _GREY_28,
    "resnet18-cifar": _COLOUR_32, "vgg-cifar": _COLOUR_32,
}


def _check(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")


def build_model(name: str, norm: NormSpec) -> nn.Module:
    _check(name)
    return MODELS[name](norm=norm)


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) of the images model `name` is built for."""
    _check(name)
    return INPUTS[name]
