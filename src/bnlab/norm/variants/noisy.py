"""Noisy BatchNorm: Santurkar et al.'s (2018, section 2.1) intervention against the ICS story.

In training, BatchNorm's output is shifted and rescaled by noise that changes every step::

    y = s * BN(x) + m,    s_c ~ U(scale_low, scale_high),  m_c ~ U(-shift, shift)

one ``(s_c, m_c)`` per channel c, drawn afresh at every training forward from torch's global
generator (so a run is reproducible from its seed, and a checkpoint's RNG state resumes it
exactly). The next layer therefore sees an input whose mean and variance jump every step: a
large, deliberate "internal covariate shift" on top of a normalized layer. If BN helped by
keeping those distributions steady, this layer would lose the benefit; Santurkar et al. found
it trains about as well as BN.

The noise is bnlab's reading of their section 2.1 (a per-unit, per-step scale and shift;
defaults ``scale in [0.5, 2]``, ``shift in [-1, 1]``); their appendix draws noise per example
too. In eval mode, and for the running statistics (computed from the input, before the noise),
the layer *is* BatchNorm: it only perturbs training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab.norm.batchnorm import BatchNorm
from bnlab.norm.checks import check_flags

__all__ = ["NoisyBatchNorm"]


class NoisyBatchNorm(BatchNorm):
    """BatchNorm's constructor plus the noise ranges ``scale=(low, high)`` and ``shift``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, guard: bool = False,
                 scale: tuple[float, float] = (0.5, 2.0), shift: float = 1.0) -> None:
        check_flags("NoisyBatchNorm", affine=affine, bias=bias, guard=guard,
                    track_running_stats=track_running_stats)
        low, high = (float(v) for v in scale)
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"NoisyBatchNorm: scale must be (low, high) with 0 < low <= high, "
                             f"got {scale!r}")
        if not (math.isfinite(shift) and shift >= 0):
            raise ValueError(f"NoisyBatchNorm: shift must be a finite number >= 0, got {shift!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, guard=guard)
        self.scale, self.shift = (low, high), float(shift)

    def noise(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """One step's per-channel scale s and shift m, shaped to broadcast over `like`."""
        c = self.num_features
        u = torch.rand(2, c, dtype=like.dtype, device=like.device)  # (2, C), global generator
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        m = self.shift * (2 * u[1] - 1)
        shape = (1, c) + (1,) * (like.dim() - 2)  # (C,) -> (1, C, 1, ...)
        return s.view(shape), m.view(shape)

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        out = super()._normalize(input, running_mean, running_var, use_batch_stats, momentum,
                                 skipped)
        if not self.training:
            return out
        s, m = self.noise(out)
        return out * s + m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale}, shift={self.shift}"
