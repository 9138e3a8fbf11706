"""Frozen BatchNorm: the eval-mode transform, whatever mode the model is in.

``FrozenBatchNorm`` always normalizes with its running statistics and never updates them, also
after ``model.train()`` (fine-tuning with small batches, detection backbones). With
``freeze_affine=True`` (default) gamma and beta are frozen too (``requires_grad=False``; they stay
parameters so state dicts keep BatchNorm's keys). ``freeze(model)`` swaps every BatchNorm (bnlab
or torch) for the frozen kind of the same rank, state preserved; ``unfreeze(model)`` swaps them
back to bnlab's trainable BatchNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase
from bnlab.norm.functional import batch_norm

__all__ = ["FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d",
           "freeze", "unfreeze"]


class FrozenBatchNorm(BatchNormBase):
    """BatchNorm's constructor plus ``freeze_affine=True``. Needs running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, freeze_affine: bool = True) -> None:
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


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every BatchNorm (bnlab or torch) becomes the frozen kind of the same rank."""
    from bnlab.norm.convert import convert

    return convert(model, to="frozen", inplace=inplace)


def unfreeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every frozen BatchNorm becomes bnlab's trainable BatchNorm of the same rank."""
    from bnlab.norm.convert import convert

    thawed = {name for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm)}
    model = convert(model, to="bnlab", inplace=inplace)
    for name, m in model.named_modules():
        if name in thawed:  # only the layers thawed here; others keep their flags
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    return model
