r"""Teaching experiments: BatchNorm with one of its two ingredients taken away.

The seed notes ask why training uses the batch's statistics rather than the moving averages,
which would match inference. Two layers pull the answer apart:

* ``RunningStatsBatchNorm`` does what the learner proposes: each training step folds the batch
  statistics into the running buffers (as BatchNorm does), then normalizes with the *running*
  averages, treated as constants. The averages lag behind the weights (stale statistics) and no
  gradient flows through them.
* ``DetachedBatchNorm`` normalizes with the batch's own statistics, as BatchNorm, but treats
  them as constants in the backward pass: with c = mu_B and s = sqrt(var_B + eps) held fixed,

      y = gamma * (x - c) / s + beta,    dy/dx = gamma / s

  instead of BatchNorm's gradient, which also flows through mu_B and var_B. The forward pass
  (and the running averages) are BatchNorm's; only the gradient is missing. Ioffe & Szegedy
  (2015, section 2) describe what this does: with x = u + b and x_hat = x - E[x] computed
  outside the gradient, a step on b leaves x_hat, hence the loss, unchanged, and b grows
  without bound.

With momentum 1 the running averages *are* the last batch's statistics (the variance with
Bessel's correction), so ``RunningStatsBatchNorm`` at momentum 1 is ``DetachedBatchNorm`` up to
that factor: the two layers differ by staleness alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNormBase
from bnlab.norm.functional import batch_norm, batch_statistics, update_running_stats

__all__ = ["DetachedBatchNorm", "RunningStatsBatchNorm"]


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


class DetachedBatchNorm(BatchNormBase):
    """BatchNorm's constructor and forward; in training the batch statistics are constants of
    the backward pass (no gradient through the mean and variance)."""

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        # One value per channel (BatchNorm refuses it) and eval mode: BatchNorm's own path.
        if not use_batch_stats or input.numel() <= input.shape[1]:
            return super()._normalize(input, running_mean, running_var, use_batch_stats,
                                      momentum, skipped)
        with torch.no_grad():
            mean, var = batch_statistics(input)  # (C,) each, biased variance
            if running_mean is not None and running_var is not None:
                count = input.numel() // input.shape[1]
                update_running_stats(running_mean, running_var, mean, var, count, momentum,
                                     skipped)
        # The batch's statistics passed as the "running" ones of an eval-mode call: the same
        # normalization, with no graph through them.
        return batch_norm(input, mean, var, self.weight, self.bias, False, 0.0, self.eps)
