"""BatchNorm layers: drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``.

``BatchNorm`` accepts any rank (N, C, *) and checks only the channel count; ``BatchNorm1d``,
``BatchNorm2d`` and ``BatchNorm3d`` add PyTorch's rank checks. The math lives in
``bnlab.norm.reference`` (its docstring derives it), reached through ``bnlab.norm.functional``;
this file only decides *which* statistics to use and *how much* of the new batch to fold into
the running averages.

Train / eval semantics (identical to torch):

* training: normalize with the batch statistics; if ``track_running_stats``, fold them into the
  running buffers with weight ``momentum`` (or ``1 / num_batches_tracked`` when momentum is None:
  the cumulative average over every batch seen so far).
* eval: normalize with the running buffers; with ``track_running_stats=False`` there are none, so
  batch statistics are used in eval too.

Deliberate differences from torch (each for a reason given in docs/differences.md):
``num_batches_tracked`` only advances once the batch has been accepted (torch increments it
before checking the input, so a rejected batch still counts) and an empty batch does not count
(it carries no statistics); nonsensical constructor arguments (num_features <= 0, eps <= 0,
momentum outside [0, 1]) are rejected when the layer is built.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnlab.norm import onnx
from bnlab.norm.base import NormBase
from bnlab.norm.checks import check_layer_at_use, traced_with_constant_shapes
from bnlab.norm.functional import batch_norm

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormBase"]


class BatchNormBase(NormBase):
    """Batch normalization over every dim but the channel dim 1, for inputs of any rank >= 2.

    The behaviour of every bnlab BatchNorm; ``BatchNorm`` adds PyTorch's identity. Layers that
    compute something else with the same state (the frozen and the fused layers) derive from
    this class directly, so that tools which find ``nn.modules.batchnorm._BatchNorm`` layers to
    reset, re-estimate or replace them (``swa_utils.update_bn``,
    ``nn.SyncBatchNorm.convert_sync_batchnorm``) do not reset a frozen layer or drop a fused
    layer's sigmoid.

    Same constructor as ``torch.nn.BatchNorm2d``: ``num_features, eps=1e-5, momentum=0.1,
    affine=True, track_running_stats=True, device=None, dtype=None, *, bias=True``, plus one
    bnlab option, ``guard=False``: guarded statistics. With it, a training batch whose mean or
    variance is not finite (a NaN or Inf in the batch) is still normalized and returned, but not
    folded into the running buffers: the update is skipped, counted in the buffer
    ``num_batches_skipped`` and warned about once, so one bad batch cannot poison the model.
    """

    num_batches_skipped: Tensor  # a buffer of guarded layers only

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, guard: bool = False) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.guard = guard
        self._warned = False
        if guard:
            # Only guarded layers carry this buffer: plain ones keep torch's state-dict keys.
            self.register_buffer("num_batches_skipped",
                                 torch.tensor(0, dtype=torch.long, device=device))

    def _momentum_for_this_batch(self) -> float:
        """Weight of the batch about to be folded in (the counter is advanced after success)."""
        if self.momentum is not None:
            return self.momentum
        assert self.num_batches_tracked is not None
        return 1.0 / float(self.num_batches_tracked + 1)  # cumulative average

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return traced_with_constant_shapes(self._forward, input)
        return self._forward(input)

    def _forward(self, input: Tensor) -> Tensor:
        check_layer_at_use(self, self.training and self.track_running_stats)
        self._check_input_dim(input)
        exporting = self.training and onnx.exporting()
        if exporting:
            onnx.check_training(self)  # a variant ONNX cannot express: one line, use .eval()
        # Batch statistics in training, and in eval when there are no running buffers.
        use_batch_stats = self.training or self.running_mean is None
        # In training the buffers are handed over (to be updated) only when tracking is on;
        # in eval they are always handed over (to be read). An ONNX graph updates nothing.
        update = self.training and self.track_running_stats and not exporting
        hand_over = update or not self.training
        momentum = self._momentum_for_this_batch() if update else 0.0
        skipped = self.num_batches_skipped if self.guard and update else None
        skips_before = int(skipped) if skipped is not None else 0
        out = self._normalize(
            input,
            self.running_mean if hand_over else None,
            self.running_var if hand_over else None,
            use_batch_stats,
            momentum,
            skipped,
        )
        if skipped is not None and int(skipped) > skips_before:
            if not self._warned:
                warnings.warn(f"{self.__class__.__name__}({self.num_features}): a batch with "
                              f"non-finite statistics was not folded into the running "
                              f"statistics (counted in num_batches_skipped; warned once)",
                              RuntimeWarning, stacklevel=2)
                self._warned = True
            return out
        if update and self._has_statistics(input):
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
        return out

    def _has_statistics(self, input: Tensor) -> bool:
        """Whether this batch was folded into the running statistics (an empty one is not)."""
        return input.numel() > 0

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        """The hook variants override: how this layer normalizes (here: the functional core).

        Called after the input check with the buffers to read or update (None when there are
        none to use), whether to use batch statistics, and the momentum for this batch.
        """
        return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                          use_batch_stats, momentum, self.eps, skipped=skipped)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", guard=True" if self.guard else "")


# torch's _NormBase declares no types for weight and bias: mypy infers Parameter from its
# __init__, though both are None when affine=False (NormBase's `Parameter | None` is right).
class BatchNorm(BatchNormBase, _BatchNorm):  # type: ignore[misc]
    """bnlab's BatchNorm, for inputs of any rank >= 2, and a ``torch.nn`` BatchNorm for every
    tool: ``isinstance(layer, nn.modules.batchnorm._BatchNorm)`` holds (as for timm's
    ``BatchNormAct2d``), with torch's state-dict keys. Everything it does is
    ``BatchNormBase``'s; torch's base contributes only its identity.
    """


class BatchNorm1d(BatchNorm):
    """BatchNorm for (N, C) or (N, C, L) inputs, as ``torch.nn.BatchNorm1d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(BatchNorm):
    """BatchNorm for (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(BatchNorm):
    """BatchNorm for (N, C, D, H, W) inputs, as ``torch.nn.BatchNorm3d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
