r"""BatchNorm fused with the activation after it: a sigmoid (optionally then a 2x2 average pool)
or a ReLU.

The chapter's LeNet-BN runs ``conv -> BatchNorm -> sigmoid -> AvgPool2d(2)``, ResNet-18
``conv -> BatchNorm -> ReLU``. As separate layers each is a pass over the activation forward
and one backward, each writing a full tensor. ``batch_norm_act`` computes the same function in
one forward pass and two backward passes (the compiled kernels of ``bnlab.norm.kernels``, with
act=SIGMOID or RELU)::

    z   = gamma * x_hat + beta          BatchNorm (bnlab.norm.reference)
    s   = sigmoid(z) = 1 / (1 + exp(-z))   or   s = relu(z) = max(z, 0)
    out = s, or avg_pool_2x2(s)         pool = 1 or 2 (stride 2, no padding; sigmoid only)

Backward: with g = dL/d out, the gradient at z is::

    sigmoid:  dz = P^T g * s * (1 - s)  P^T spreads g / 4 over each 2x2 window (pool = 2)
    relu:     dz = g where z > 0, else 0  (torch's rule: a NaN z keeps its gradient)

and then BatchNorm's closed-form backward with dz in place of dL/dy. The kernel recomputes z
from x instead of storing s, so the only saved tensor is x (as for plain BatchNorm).

Where the kernels do not apply (half types, CUDA, odd sizes, BNLAB_FAST=0), the same function
runs as the composite bnlab batch_norm -> activation -> F.avg_pool2d, which is also the oracle
of the tests.

``fuse(model)`` rewrites runs of these layers into one fused layer that keeps the BatchNorm's
parameter and buffer objects and state-dict keys, where the torch.fx dataflow proves it the
same model (``bnlab.norm.fusion``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.norm import backends, kernels, reference
from bnlab.norm.batchnorm import BatchNorm, BatchNormBase
from bnlab.norm.checks import check_batch_norm_args
from bnlab.norm.functional import batch_norm
from bnlab.norm.fusion import FuseReport, fuse_runs

__all__ = ["ACTIVATIONS", "Activation", "BatchNormAct", "BatchNormReLU", "BatchNormSigmoid",
           "FuseReport", "batch_norm_act", "batch_norm_relu", "batch_norm_sigmoid", "fuse",
           "fuse_with_report"]


@dataclass(frozen=True)
class Activation:
    """An activation the kernels fuse: its name, the operators' `act` code, its function, and
    the module ``fuse`` absorbs."""

    name: str
    code: int
    fn: Callable[[Tensor], Tensor]
    module: type[nn.Module]


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", kernels.SIGMOID, torch.sigmoid, nn.Sigmoid),
    "relu": Activation("relu", kernels.RELU, torch.relu, nn.ReLU),
}


def _activation(name: str) -> Activation:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _composite(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
               eps: float, act: Activation, pool: int) -> Tensor:
    """The unfused composite: the definition, and the path where the kernels do not serve."""
    s = act.fn(batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    return F.avg_pool2d(s, 2) if pool == 2 else s


def composite_backward(
    act: Activation, grad_out: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
    mean: Tensor, invstd: Tensor, training: bool, eps: float, pool: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The fused layer's gradients under create_graph=True (registered with the kernels):
    differentiate the composite, its statistics recomputed from x in training and the saved
    constants in eval, so that the gradient has a graph of its own."""
    inputs = (x, weight, bias)
    if training:
        z = reference.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    else:
        z = reference.normalize(x, mean, invstd, weight, bias)
    out = F.avg_pool2d(act.fn(z), 2) if pool == 2 else act.fn(z)
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n and t is not None]
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    gx, gw, gb = (next(grads) if n and t is not None else None
                  for t, n in zip(inputs, needs, strict=True))
    return gx, gw, gb


for _act in ACTIVATIONS.values():
    kernels.register_double_backward(_act.code, functools.partial(composite_backward, _act))


def batch_norm_act(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5, *, act: str = "sigmoid", pool: int = 1,
) -> Tensor:
    """``act(batch_norm(...))``, average-pooled 2x2 when ``pool=2``, in one fused kernel.

    Same arguments and contract as ``bnlab.functional.batch_norm`` (running buffers updated in
    place when training), plus ``act`` ("sigmoid" or "relu") and ``pool``: 1 (none) or 2
    (``F.avg_pool2d(., 2)`` on a 4-D input; after a sigmoid only).
    """
    activation = _activation(act)
    if isinstance(pool, bool) or pool not in (1, 2):
        raise ValueError(f"pool must be 1 (no pooling) or 2 (2x2 average pooling), got {pool!r}")
    if pool == 2 and activation.code != kernels.SIGMOID:
        raise ValueError(f"pool=2 is fused after a sigmoid only, not after {act}; "
                         f"apply F.avg_pool2d to the output instead")
    if pool == 2 and input.dim() != 4:
        raise ValueError(f"pool=2 needs a 4-D (N, C, H, W) input, got {input.dim()}-D")
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum,
                          eps)
    momentum, eps = float(momentum), float(eps)
    # The kernels pool only even heights and widths; everything else runs as the composite.
    if backends.select(input) == "kernels" and (pool == 1 or (input.shape[2] % 2 == 0
                                                              and input.shape[3] % 2 == 0)):
        y = kernels.batch_norm(input, weight, bias, running_mean, running_var, training,
                               momentum, eps, activation.code, pool)
        if y is not None:
            return y
    return _composite(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      activation, pool)


def batch_norm_sigmoid(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5, *, pool: int = 1,
) -> Tensor:
    """``sigmoid(batch_norm(...))``, pooled 2x2 when ``pool=2``: ``batch_norm_act`` with
    ``act="sigmoid"``."""
    return batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, act="sigmoid", pool=pool)


def batch_norm_relu(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5,
) -> Tensor:
    """``relu(batch_norm(...))``: ``batch_norm_act`` with ``act="relu"``."""
    return batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, act="relu")


class BatchNormAct(BatchNormBase):
    """A bnlab BatchNorm followed by an activation (and, after a sigmoid, a 2x2 average pooling
    when ``pool=2``): the base of the fused layers.

    Made by ``fuse`` from an existing layer, whose parameters, buffers, hyper-parameters and
    rank check it keeps; its state dict is the BatchNorm's.
    """

    activation: str  # a key of ACTIVATIONS, set by each subclass
    pool: int
    _rank_check: type[BatchNorm]

    @classmethod
    def absorb(cls, bn: BatchNorm, pool: int = 1) -> BatchNormAct:
        if cls.__dict__.get("activation") is None:
            raise TypeError(f"{cls.__name__} names no activation; absorb with BatchNormSigmoid "
                            f"or BatchNormReLU")
        if pool != 1 and cls.activation != "sigmoid":
            raise ValueError(f"pool={pool!r}: only a sigmoid is fused with pooling")
        fused = cls.__new__(cls)
        fused.__dict__.update(bn.__dict__)  # the same Parameter and buffer objects
        fused.pool = pool
        fused._rank_check = type(bn)
        return fused

    def _check_input_dim(self, input: Tensor) -> None:
        self._rank_check._check_input_dim(self, input)

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        return batch_norm_act(input, running_mean, running_var, self.weight, self.bias,
                              use_batch_stats, momentum, self.eps, act=self.activation,
                              pool=self.pool)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", then {self.activation}"
                + (", avg_pool 2x2" if self.pool == 2 else ""))


class BatchNormSigmoid(BatchNormAct):
    """A bnlab BatchNorm followed by a sigmoid (and a 2x2 average pooling when ``pool=2``)."""

    activation = "sigmoid"


class BatchNormReLU(BatchNormAct):
    """A bnlab BatchNorm followed by a ReLU."""

    activation = "relu"


def fuse_with_report(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module,
                                                                          FuseReport]:
    """``fuse``, also returning a ``FuseReport`` of what was fused and what was left, and why."""
    return fuse_runs(model, {nn.Sigmoid: BatchNormSigmoid, nn.ReLU: BatchNormReLU},
                     inplace=inplace)


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fuse [BatchNorm, Sigmoid, (AvgPool2d(2))] and [BatchNorm, ReLU] runs inside every
    nn.Sequential of `model`, where the model's dataflow proves it the same function.

    Candidates are neighbours in a plain ``nn.Sequential``: a plain bnlab BatchNorm layer (not
    a variant, not guarded) then exactly ``nn.Sigmoid`` or ``nn.ReLU`` (and exactly
    ``nn.AvgPool2d(2)``), none of them with hooks or registered twice. A candidate is fused
    only when the torch.fx trace of ``forward`` shows the BatchNorm called once, its output
    going to the activation alone (and the activation's to the pool alone), and the fused
    model traces to the same graph; a model fx cannot trace is left unfused
    (``bnlab.norm.fusion``). ``fuse_with_report`` says what was left and why. Returns the fused
    model (a copy unless ``inplace``; in place, all or nothing: an error leaves the model as
    it was); the math is unchanged, the fused layers share the BatchNorm's Parameter and
    buffer objects, and the state-dict keys stay the same.
    """
    return fuse_with_report(model, inplace=inplace)[0]
