"""PreciseBN: replace running averages with exact population statistics (Wu & Johnson, 2021).

The exponential moving average of a BatchNorm layer lags behind the weights and weights recent
batches more. ``precise_bn`` runs `num_samples` training examples through the model in training
mode (so every layer sees the features it was trained on) and sets each layer's running mean
and variance to the statistics of *all* those inputs: batch-size weighted, merged with Chan's
parallel algorithm in float64, the variance stored unbiased as torch does. Train/eval modes and
momenta are restored; parameters are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.base import tracked_batch_norms
from bnlab.norm.functional import batch_statistics

__all__ = ["RunningMoments", "precise_bn"]


class RunningMoments:
    """Per-channel count, mean and M2 over any number of batches (exact, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        c = x.shape[1]
        k = x.numel() // c if c else 0
        if k == 0:
            return
        mean, var = batch_statistics(x.detach().double())  # (C,) each, two-pass
        m2 = var * k  # sum of squared deviations
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = k, mean, m2
            return
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * k / n)
        self.n = n

    @property
    def unbiased_var(self) -> Tensor:
        assert self.m2 is not None and self.n > 1
        return self.m2 / (self.n - 1)


def precise_bn(model: nn.Module, batches: Iterable[Any], num_samples: int) -> int:
    """Re-estimate every BatchNorm layer's running statistics over `num_samples` examples.

    `batches` yields inputs (or tuples whose first element is the input). Returns the number of
    examples used (fewer than `num_samples` if the batches ran out first).
    """
    if num_samples <= 1:
        raise ValueError(f"num_samples must be > 1, got {num_samples}")
    layers = tracked_batch_norms(model)
    moments = {id(m): RunningMoments() for m in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, args: moments[id(mod)].add(args[0]))
             for m in layers]
    modes = {id(m): m.training for m in model.modules()}
    # The passes below update the buffers with momentum: keep what must survive them.
    saved = {id(m): (m.momentum, None if m.num_batches_tracked is None
                     else m.num_batches_tracked.clone()) for m in layers}
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                take = min(x.shape[0], num_samples - seen)
                model(x[:take])
                seen += take
                if seen >= num_samples:
                    break
    finally:
        for h in hooks:
            h.remove()
        for m in model.modules():
            m.train(modes[id(m)])
    if seen < 2:
        raise ValueError("precise_bn needs at least 2 examples; the batches ran out")
    with torch.no_grad():
        for m in layers:
            momentum, nbt = saved[id(m)]
            stats = moments[id(m)]
            m.momentum = momentum
            m.running_mean.copy_(stats.mean.to(m.running_mean.dtype))
            m.running_var.copy_(stats.unbiased_var.to(m.running_var.dtype))
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
    return seen
