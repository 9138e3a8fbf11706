"""Side-by-side runs of bnlab and torch on identical inputs: the oracle used across the tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import bnlab.functional as BF


@dataclass
class Result:
    out: Tensor
    grads: dict[str, Tensor | None]
    running_mean: Tensor | None
    running_var: Tensor | None


def run_functional(
    impl: str,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running: tuple[Tensor, Tensor] | None,
    training: bool,
    grad_out: Tensor,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Result:
    """One forward + backward through `impl` ("bnlab" or "torch") on private copies."""
    fn = BF.batch_norm if impl == "bnlab" else F.batch_norm
    leaves = {"input": x, "weight": weight, "bias": bias}
    copies = {k: (v.detach().clone().requires_grad_(True) if v is not None else None)
              for k, v in leaves.items()}
    copies["input"] = copies["input"].detach().clone(
        memory_format=torch.preserve_format).requires_grad_(True)
    rm = rv = None
    if running is not None:
        rm, rv = running[0].clone(), running[1].clone()
    out = fn(copies["input"], rm, rv, copies["weight"], copies["bias"], training, momentum, eps)
    need = [v for v in copies.values() if v is not None]
    grads = torch.autograd.grad(out, need, grad_out)
    it = iter(grads)
    return Result(out.detach(), {k: (next(it) if v is not None else None)
                                 for k, v in copies.items()}, rm, rv)


def max_abs(a: Tensor | None, b: Tensor | None) -> float:
    assert (a is None) == (b is None)
    if a is None or b is None or a.numel() == 0:
        return 0.0
    return float((a.detach().double() - b.detach().double()).abs().max())


def max_rel(a: Tensor, b: Tensor) -> float:
    """Norm-wise relative error max|a - b| / max|b|.

    Element-wise relative error is meaningless for an element that is a cancelling sum near zero
    (a gradient entry of 1e-2 summed from hundreds of O(1) terms); the norm-wise form measures
    error against the tensor's scale, the usual yardstick for reductions.
    """
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
