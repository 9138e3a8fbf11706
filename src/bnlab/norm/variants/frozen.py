"""Frozen BatchNorm: the eval-mode transform, whatever mode the model is in.

``FrozenBatchNorm`` always normalizes with its running statistics and never updates them, also
after ``model.train()`` (fine-tuning with small batches, detection backbones). With
``freeze_affine=True`` (default) gamma and beta are frozen too (``requires_grad=False``; they stay
parameters so state dicts keep BatchNorm's keys). The tools that swap a model's layers to and
from this kind, ``freeze(model)`` and ``unfreeze(model)``, live with the other swaps in
``bnlab.norm.convert`` (a layer does not import the tools built on it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase
from bnlab.norm.checks import check_flags, check_layer_at_use
from bnlab.norm.functional import batch_norm

__all__ = ["FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d"]


class FrozenBatchNorm(BatchNormBase):
    """BatchNorm's constructor plus ``freeze_affine=True``. Needs running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, freeze_affine: bool = True) -> None:
        check_flags(type(self).__name__, freeze_affine=freeze_affine, affine=affine,
                    track_running_stats=track_running_stats, bias=bias)
        if not track_running_stats:
            raise ValueError("a frozen BatchNorm normalizes with running statistics: it needs "
                             "track_running_stats=True")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.freeze_affine = freeze_affine
        if freeze_affine:
            for p in self.parameters(recurse=False):
                p.requires_grad_(False)

    def forward(self, input: Tensor) -> Tensor:
        check_layer_at_use(self, False)  # never updates: only eps and momentum are checked
        self._check_input_dim(input)
        return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                          False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", freeze_affine={self.freeze_affine}"


class FrozenBatchNorm1d(FrozenBatchNorm):
    _check_input_dim = BatchNorm1d._check_input_dim


class FrozenBatchNorm2d(FrozenBatchNorm):
    _check_input_dim = BatchNorm2d._check_input_dim


class FrozenBatchNorm3d(FrozenBatchNorm):
    _check_input_dim = BatchNorm3d._check_input_dim

