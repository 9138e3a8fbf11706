"""Lazy BatchNorm: ``num_features`` taken from the first input, as ``torch.nn.LazyBatchNorm*``.

The chapter's own PyTorch code builds LeNet-BN from ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``
and ``nn.LazyLinear``; these are bnlab's counterparts, so ``bnlab.convert`` maps a lazy model
both ways. Until its first forward (or a ``load_state_dict``, whose shapes materialize it) the
layer holds uninitialized parameters and buffers; the first input materializes them with
``C = input.shape[1]``, resets them (gamma 1, beta 0, running mean 0, variance 1), and the layer
becomes a plain ``BatchNorm1d/2d/3d`` (``cls_to_become``), as torch's lazy layers do.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.checks import check_norm_config

M = TypeVar("M", bound=nn.Module)

__all__ = ["LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d", "copy_module"]


def copy_module(module: M) -> M:
    """``copy.deepcopy`` that also copies lazy layers: their uninitialized tensors (which
    refuse ``deepcopy``) become new uninitialized ones of the same kind, device and dtype."""
    memo: dict[int, Any] = {}
    for t in (*module.parameters(), *module.buffers()):
        if is_lazy(t):
            memo[id(t)] = _uninitialized(type(t), device=t.device, dtype=t.dtype,
                                         **({"requires_grad": t.requires_grad}
                                            if isinstance(t, UninitializedParameter) else {}))
    return copy.deepcopy(module, memo)


def _uninitialized(kind: Any, **factory: Any) -> Any:
    """An UninitializedParameter/Buffer (torch's stubs omit the device and dtype they take)."""
    return kind(**factory)


# (torch's _NormBase types weight/bias as Tensor, bnlab as Parameter | None: see BatchNorm)
class _LazyBatchNorm(LazyModuleMixin, BatchNorm):  # type: ignore[misc]
    """The shared part: uninitialized state until the first input (torch's _LazyNormBase)."""

    cls_to_become: Any = None

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        check_norm_config(1, eps, momentum)  # the channel count is checked when it is known
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        # Built for one channel without parameters or buffers, then given uninitialized ones.
        super().__init__(1, eps, momentum, False, False, **factory)
        self.num_features = 0
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = _uninitialized(UninitializedParameter, **factory)
            self.bias = _uninitialized(UninitializedParameter, **factory)
        if track_running_stats:
            self.running_mean = _uninitialized(UninitializedBuffer, **factory)
            self.running_var = _uninitialized(UninitializedBuffer, **factory)
            self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def initialize_parameters(self, input: Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        self._check_input_dim(input)
        self.num_features = int(input.shape[1])
        check_norm_config(self.num_features, self.eps, self.momentum)
        shape = (self.num_features,)
        for t in (self.weight, self.bias, self.running_mean, self.running_var):
            if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
                t.materialize(shape)
        self.reset_parameters()


    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        loaded = self.weight if self.affine else getattr(self, "running_mean", None)
        if self.num_features == 0 and isinstance(loaded, Tensor) and not is_lazy(loaded):
            self.num_features = int(loaded.shape[0])  # materialized by the state's shapes


class LazyBatchNorm1d(_LazyBatchNorm, BatchNorm1d):  # type: ignore[misc]
    """``BatchNorm1d`` whose ``num_features`` is the first input's ``shape[1]``."""

    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyBatchNorm, BatchNorm2d):  # type: ignore[misc]
    """``BatchNorm2d`` whose ``num_features`` is the first input's ``shape[1]``."""

    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_LazyBatchNorm, BatchNorm3d):  # type: ignore[misc]
    """``BatchNorm3d`` whose ``num_features`` is the first input's ``shape[1]``."""

    cls_to_become = BatchNorm3d
