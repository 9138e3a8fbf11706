"""One batch through the network before the first step: what a run needs, checked at the door.

A mismatch between a network and its data used to surface mid-training as a long traceback
(an IndexError from the loss for a label beyond the outputs, a TypeError for a tuple output).
``dry_batch`` runs the first training batch through bnlab's copy of the network once, in train
mode and without gradients, and checks

* that the network's own code runs on it (an exception there names the user's file and line:
  ``bnlab.user_code``);
* the output: one floating-point tensor of shape (N, K) for a batch of N inputs;
* the labels (``check_labels``, also applied to every later batch): int64 class indices of
  shape (N,), each in [0, K).

The run is not changed by it: every parameter and buffer, the module's mode and the random
number generators (torch's and Python's) are as they were afterwards; attributes a forward
sets on the modules themselves, and hooks (which fire once), are the network's own business.
The one intended effect is that lazy layers
(``nn.LazyLinear``, ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``...) are materialized, so the
optimizer that is built next sees every parameter.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from bnlab.errors import UserError
from bnlab.user_code import user_code

__all__ = ["check_labels", "check_output", "dry_batch"]

FORWARD = "your network's forward"


def dry_batch(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Check `model` on the batch (x, y), leaving it as it was (lazy layers materialized);
    returns the number of outputs (classes) it gives."""
    saved = {name: t.detach().clone() for name, t in _tensors(model) if not is_lazy(t)}
    # Lazy BatchNorms take fresh statistics (0 and 1) when the batch materializes them; the
    # batch then moves them: put those back too.
    lazy_norms = [m for m in model.modules() if any(is_lazy(t) for t in m.buffers(False))
                  and hasattr(m, "reset_running_stats")]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    was_training = model.training
    py_random = random.getstate()
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            model.train()
            with user_code(FORWARD, always=f"on inputs of shape {tuple(x.shape)} "
                                           f"({_dtype(x)})"):
                out = model(x)
        except UserError as e:  # a dtype mismatch is the likely cause: say so
            _explain_input(model, x, e)
            raise
        finally:
            model.train(was_training)
            random.setstate(py_random)
            current = dict(_tensors(model))
            for name, value in saved.items():
                current[name].copy_(value)
            for m in lazy_norms:
                if not any(is_lazy(t) for t in m.buffers(False)):
                    getattr(m, "reset_running_stats")()  # noqa: B009 (BatchNorm's, checked)
    check_output(out, x.shape[0])
    check_labels(y, out.shape[1])
    return int(out.shape[1])


def _tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _explain_input(model: nn.Module, x: Tensor, error: UserError) -> None:
    """The forward failed: if the inputs' dtype differs from the weights', that is the cause
    to name (a network may convert its inputs itself, so a mismatch alone is no error)."""
    weights = [p for p in model.parameters() if not is_lazy(p) and p.is_floating_point()]
    if weights and weights[0].dtype != x.dtype:
        raise UserError(f"the inputs are {_dtype(x)} but the network's weights are "
                        f"{_dtype(weights[0])} ({error}); convert the inputs in the dataset "
                        f"(x.to({weights[0].dtype})) or the network (net.to({x.dtype}))"
                        ) from error


def check_output(out: object, n: int) -> None:
    """The network's output for a batch of `n` inputs must be logits (n, K)."""
    if not isinstance(out, Tensor):
        what = type(out).__name__
        if isinstance(out, (tuple, list)):
            what += f" of {len(out)} items"
        raise UserError(f"your network returned a {what}; bnlab trains classifiers whose "
                        f"forward returns one logits tensor of shape (N, classes): return "
                        f"that tensor (e.g. the first item)")
    if out.dim() != 2 or out.shape[0] != n:
        raise UserError(f"your network returned shape {tuple(out.shape)} for a batch of {n} "
                        f"inputs; bnlab trains classifiers: return logits of shape ({n}, "
                        f"classes) (flatten before the last linear layer)")
    if not out.is_floating_point():
        raise UserError(f"your network returned {_dtype(out)} values; return floating-point "
                        f"logits")


def check_labels(y: object, classes: int, where: str = "the first batch") -> None:
    """Labels must be int64 class indices (N,), each in [0, classes)."""
    if not isinstance(y, Tensor):
        raise UserError(f"the labels of {where} are a {type(y).__name__}, not a tensor of class "
                        f"indices; make the dataset return (x, y) with y an int class index")
    if y.dtype != torch.int64:
        raise UserError(f"the labels of {where} are {_dtype(y)}; bnlab needs int64 class "
                        f"indices (y.long(); one integer per example, not one-hot or "
                        f"probabilities)")
    if y.dim() != 1:
        raise UserError(f"the labels of {where} have shape {tuple(y.shape)}; bnlab needs one "
                        f"integer class index per example, shape (N,)")
    if y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise UserError(f"label {bad} in {where} is outside the network's {classes} outputs "
                        f"(classes 0..{classes - 1}); give the last layer as many outputs as "
                        f"there are classes, or fix the labels")


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
