"""A teaching experiment: BatchNorm that normalizes with its running averages during training.

The seed notes ask why training uses the batch's statistics rather than the moving averages,
which would match inference. This layer does exactly that: each training step folds the batch
statistics into the running buffers (as BatchNorm does), then normalizes with the *running*
averages, treated as constants. No gradient flows through the statistics, so nothing stops the
weights from shifting and scaling the layer's input, and the averages always lag behind the
weights; the ``inference-stats`` study measures what that does to training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNormBase
from bnlab.norm.functional import batch_norm, batch_statistics, update_running_stats

__all__ = ["RunningStatsBatchNorm"]


class RunningStatsBatchNorm(BatchNormBase):
    """BatchNorm's constructor; training normalizes with the (just updated) running averages."""

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        if not (self.training and running_mean is not None and running_var is not None):
            return super()._normalize(input, running_mean, running_var, use_batch_stats,
                                      momentum, skipped)
        if input.numel() > input.shape[1]:
            with torch.no_grad():
                mean, var = batch_statistics(input)  # (C,) each
                count = input.numel() // input.shape[1]
                update_running_stats(running_mean, running_var, mean, var, count, momentum,
                                     skipped)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, False, 0.0,
                          self.eps)
