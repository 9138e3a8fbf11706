"""Ghost Batch Normalization (Hoffer et al., 2017): statistics of small virtual batches.

A batch of N is split along dim 0 into virtual batches of ``virtual_batch_size`` (the last may
be smaller); each is normalized with its own mean and variance, as if it were a batch of its
own. A last chunk that would hold one value per channel is merged into the one before it.

Running-statistics convention: one update per call (per optimizer step, as in BatchNorm), with
the count-weighted average over the virtual batches of their means and unbiased variances.
``num_batches_tracked`` and ``momentum`` therefore mean exactly what they mean in BatchNorm, and
when ``virtual_batch_size >= N`` the layer *is* BatchNorm (outputs, gradients, statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNorm
from bnlab.norm.checks import check_flags, check_size
from bnlab.norm.functional import batch_norm, batch_statistics, blend_running_stats

__all__ = ["GhostBatchNorm", "virtual_batch_sizes"]


def virtual_batch_sizes(n: int, virtual_batch_size: int, values_per_sample: int) -> list[int]:
    """Sizes of the chunks along dim 0; a chunk with one value per channel joins its neighbour."""
    sizes = [virtual_batch_size] * (n // virtual_batch_size)
    if n % virtual_batch_size:
        sizes.append(n % virtual_batch_size)
    if len(sizes) > 1 and sizes[-1] * values_per_sample == 1:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


class GhostBatchNorm(BatchNorm):
    """BatchNorm's constructor plus ``virtual_batch_size`` (default 32)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, guard: bool = False, virtual_batch_size: int = 32) -> None:
        check_flags("GhostBatchNorm", affine=affine, bias=bias, guard=guard,
                    track_running_stats=track_running_stats)
        check_size("GhostBatchNorm", "virtual_batch_size", virtual_batch_size)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, guard=guard)
        self.virtual_batch_size = virtual_batch_size

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        # It may have been set after construction: 0 would divide by zero, True mean 1.
        check_size("GhostBatchNorm", "virtual_batch_size", self.virtual_batch_size)
        n = input.shape[0] if input.dim() else 0
        per_sample = input[0].numel() // max(input.shape[1], 1) if n else 1
        sizes = virtual_batch_sizes(n, self.virtual_batch_size, per_sample)
        if not use_batch_stats or len(sizes) <= 1:
            return super()._normalize(input, running_mean, running_var, use_batch_stats,
                                      momentum, skipped)
        chunks = torch.split(input, sizes, dim=0)
        out = torch.cat([batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                         for c in chunks], dim=0)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                means, unbiased, weights = [], [], []
                for c in chunks:
                    m, v = batch_statistics(c)  # (C,) each
                    k = c.numel() // c.shape[1]  # values per channel in this chunk
                    means.append(m)
                    unbiased.append(v * (k / (k - 1)))
                    weights.append(k)
                w = torch.tensor(weights, dtype=means[0].dtype, device=input.device)
                w = (w / w.sum()).unsqueeze(1)  # (chunks, 1)
                mean = (torch.stack(means) * w).sum(0)  # (chunks, C) -> (C,)
                var = (torch.stack(unbiased) * w).sum(0)  # (chunks, C) -> (C,)
                blend_running_stats(running_mean, running_var, mean, var, momentum, skipped)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"
