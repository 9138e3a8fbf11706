r"""Batch Renormalization (Ioffe, 2017): training that already normalizes like inference.

With running mean mu and running std sigma = sqrt(running_var + eps), and the batch's mu_B and
sigma_B = sqrt(var_B + eps)::

    r = clip(sigma_B / sigma, 1/rmax, rmax)          treated as constants: no gradient flows
    d = clip((mu_B - mu) / sigma, -dmax, dmax)       through r or d
    x_hat = (x - mu_B) / sigma_B * r + d
    y = gamma * x_hat + beta

If r and d were not clipped, x_hat = (x - mu) / sigma exactly: the inference transform. With
rmax = 1, dmax = 0 it is BatchNorm. Since y = (gamma * r) * BN_hat(x) + (gamma * d + beta), the
layer is the BatchNorm core with weight gamma * r and bias gamma * d + beta, so it inherits the
core's closed-form backward; autograd through those two products gives dL/dgamma and dL/dbeta.

Warm-up (the paper's schedule): rmax = 1 and dmax = 0 for the first 5k steps, then rmax rises
linearly to 3 at 40k steps and dmax to 5 at 25k steps. The step is ``num_batches_tracked``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNorm
from bnlab.norm.checks import check_flags, check_limit
from bnlab.norm.functional import batch_norm, batch_statistics

__all__ = ["BatchRenorm", "renorm_limits"]

PAPER_SCHEDULE = {"start": 5_000, "rmax_end": 40_000, "dmax_end": 25_000}


def renorm_limits(step: int, rmax: float, dmax: float,
                  schedule: dict[str, int] | None) -> tuple[float, float]:
    """(rmax, dmax) in force at `step`: fixed, or ramped linearly after the warm-up."""
    if schedule is None:
        return rmax, dmax

    def ramp(end: int) -> float:
        span = max(end - schedule["start"], 1)
        return min(max((step - schedule["start"]) / span, 0.0), 1.0)

    return 1.0 + (rmax - 1.0) * ramp(schedule["rmax_end"]), dmax * ramp(schedule["dmax_end"])


def _check_limits(rmax: object, dmax: object) -> None:
    """rmax >= 1 and dmax >= 0, finite: a NaN would pass `rmax < 1` and clip r to NaN."""
    check_limit("BatchRenorm", "rmax", rmax, minimum=1.0)
    check_limit("BatchRenorm", "dmax", dmax, minimum=0.0)


class BatchRenorm(BatchNorm):
    """BatchNorm's constructor plus ``rmax=3.0, dmax=5.0, warmup=True`` (the paper's schedule;
    ``warmup=False`` uses the fixed limits from the first step). Needs running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, guard: bool = False, rmax: float = 3.0,
                 dmax: float = 5.0, warmup: bool = True) -> None:
        check_flags("BatchRenorm", warmup=warmup, affine=affine, bias=bias, guard=guard,
                    track_running_stats=track_running_stats)
        if not track_running_stats:
            raise ValueError("BatchRenorm corrects batch statistics towards the running ones: "
                             "it needs track_running_stats=True")
        _check_limits(rmax, dmax)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, guard=guard)
        self.rmax, self.dmax = rmax, dmax
        self.schedule = dict(PAPER_SCHEDULE) if warmup else None

    def limits(self) -> tuple[float, float]:
        assert self.num_batches_tracked is not None
        _check_limits(self.rmax, self.dmax)  # they may have been set after construction
        return renorm_limits(int(self.num_batches_tracked), self.rmax, self.dmax, self.schedule)

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        if not use_batch_stats or input.numel() == 0:
            return super()._normalize(input, running_mean, running_var, use_batch_stats,
                                      momentum, skipped)
        assert running_mean is not None and running_var is not None
        rmax, dmax = self.limits()
        with torch.no_grad():
            # r and d need the batch statistics before the core sees them (and moves the
            # buffers): one extra reduction pass, the price of reusing the verified core.
            mu_b, var_b = batch_statistics(input)  # (C,) each
            sigma_b = torch.sqrt(var_b + self.eps)
            sigma = torch.sqrt(running_var.to(var_b.dtype) + self.eps)
            r = (sigma_b / sigma).clamp(1.0 / rmax, rmax)
            d = ((mu_b - running_mean.to(mu_b.dtype)) / sigma).clamp(-dmax, dmax)
        pdtype = self.weight.dtype if self.weight is not None else input.dtype
        gamma = self.weight if self.weight is not None else torch.ones_like(r, dtype=pdtype)
        weight = gamma * r.to(pdtype)
        bias = gamma * d.to(pdtype)
        if self.bias is not None:
            bias = bias + self.bias
        return batch_norm(input, running_mean, running_var, weight, bias, True, momentum,
                          self.eps, skipped=skipped)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rmax={self.rmax}, dmax={self.dmax}, " \
                                      f"warmup={self.schedule is not None}"
