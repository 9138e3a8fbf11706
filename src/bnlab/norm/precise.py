"""PreciseBN: replace running averages with exact population statistics (Wu & Johnson, 2021).

The exponential moving average of a BatchNorm layer lags behind the weights and weights recent
batches more. ``precise_bn`` runs `num_samples` training examples through the model in training
mode (so every layer sees the features it was trained on) and sets each layer's running mean
and variance to the statistics of *all* those inputs: batch-size weighted, merged with Chan's
parallel algorithm in float64, the variance stored unbiased as torch does.

Per layer kind:

* the statistics have the shape of the layer's running buffers: one per channel for BatchNorm
  (averaged over N and the spatial dims), one per activation (c, s) for PerActivationBatchNorm
  (averaged over N only);
* frozen layers (``FrozenBatchNorm``) and layers without running statistics are left alone,
  and so is a layer no batch reached; ``precise_bn_report`` says which and why.

The passes over the data are a dry run inside ``all_or_nothing(model)``: during them every
layer's momentum is 0, so no running buffer drifts while it is being measured (a Batch Renorm
or running-statistics layer reads its buffers in training); afterwards the snapshot is
restored (modes, momenta, counters, every buffer the passes touched) and only then are the new
statistics written, all checked first. Any error leaves the model byte-identical.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.base import BatchNormLike, is_batch_norm
from bnlab.norm.checks import check_tool_args
from bnlab.norm.functional import batch_statistics
from bnlab.norm.transaction import all_or_nothing
from bnlab.norm.variants.frozen import FrozenBatchNorm

__all__ = ["PreciseReport", "RunningMoments", "precise_bn", "precise_bn_report"]


class RunningMoments:
    """Count, mean and M2 of one statistic per element of `shape`, over any number of batches.

    `shape` is the shape of a layer's running buffers: ``(C,)`` gives per-channel statistics
    of (N, C, *S) inputs, ``(C, *S)`` per-activation ones. Exact (two-pass per batch, Chan's
    merge across batches), in float64. ``shape=None`` means per channel (dim 1).
    """

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        self.shape = shape
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        shape = self.shape if self.shape is not None else tuple(x.shape[1:2])
        if tuple(x.shape[1:1 + len(shape)]) != shape:
            raise ValueError(f"precise_bn: an input of shape {tuple(x.shape)} does not have the "
                             f"layer's statistics shape {shape} after the batch dim")
        k_stats = math.prod(shape)
        if x.numel() == 0 or k_stats == 0:
            return
        # (N, *shape, *rest) -> (N, K, R): one column per statistic, reduced over dims 0 and 2.
        x3 = x.detach().double().reshape(x.shape[0], k_stats, -1)
        k = x3.shape[0] * x3.shape[2]  # values per statistic in this batch
        mean, var = batch_statistics(x3)  # (K,) each, two-pass
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


@dataclass
class PreciseReport:
    """What ``precise_bn_report`` did: examples used, layers updated, layers left and why."""

    samples: int
    updated: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)


def _candidates(model: nn.Module) -> tuple[dict[str, BatchNormLike], dict[str, str]]:
    """The layers to re-estimate, by name, and the BatchNorm layers left alone, with why."""
    chosen: dict[str, BatchNormLike] = {}
    left: dict[str, str] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not is_batch_norm(m) or id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, FrozenBatchNorm):
            left[name] = "frozen: its statistics are fixed on purpose"
        elif getattr(m, "running_mean", None) is None or not m.track_running_stats:
            left[name] = "no running statistics (track_running_stats=False)"
        else:
            chosen[name] = m
    return chosen, left


def _check_num_samples(num_samples: object) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"precise_bn: num_samples must be an int, got {num_samples!r} "
                        f"({type(num_samples).__name__})")
    if num_samples <= 1:
        raise ValueError(f"num_samples must be > 1, got {num_samples}")
    return num_samples


def _stats(m: BatchNormLike) -> tuple[Tensor, Tensor]:
    """A tracked layer's running mean and variance (chosen layers track: ``_candidates``)."""
    assert m.running_mean is not None and m.running_var is not None
    return m.running_mean, m.running_var


def _run(model: nn.Module, layers: dict[str, BatchNormLike], batches: Iterable[Any],
         num_samples: int) -> tuple[int, dict[str, RunningMoments]]:
    """The dry run: feed the batches in train mode (momentum 0), gather every layer's input."""
    moments = {name: RunningMoments(tuple(_stats(m)[0].shape)) for name, m in layers.items()}
    by_id = {id(m): moments[name] for name, m in layers.items()}
    hooks = [m.register_forward_pre_hook(lambda mod, args: by_id[id(mod)].add(args[0]))
             for m in layers.values()]
    seen = 0
    try:
        for m in layers.values():
            m.momentum = 0.0  # the buffers must not drift while they are being measured
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, Tensor):
                    raise TypeError(f"precise_bn: batches must yield tensors or tuples whose "
                                    f"first element is the input, got {type(x).__name__}")
                take = min(x.shape[0], num_samples - seen)
                model(x[:take])
                seen += take
                if seen >= num_samples:
                    break
    finally:
        for h in hooks:
            h.remove()
    return seen, moments


def precise_bn_report(model: nn.Module, batches: Iterable[Any],
                      num_samples: int) -> PreciseReport:
    """``precise_bn``, returning a ``PreciseReport`` (see the module docstring)."""
    check_tool_args("precise_bn", model)
    num_samples = _check_num_samples(num_samples)
    layers, left = _candidates(model)
    with all_or_nothing(model) as snapshot:
        seen, moments = _run(model, layers, batches, num_samples)
        snapshot.restore()  # the passes were a dry run
        if seen < 2:
            raise ValueError("precise_bn needs at least 2 examples; the batches ran out")
        new: dict[str, tuple[Tensor, Tensor]] = {}
        for name, m in layers.items():
            stats = moments[name]
            if stats.mean is None or stats.n < 2:
                left[name] = "no batch reached it (a branch the data did not take?)"
                continue
            running_mean, running_var = _stats(m)
            mean = stats.mean.reshape(running_mean.shape).to(running_mean.dtype)
            var = stats.unbiased_var.reshape(running_var.shape).to(running_var.dtype)
            if not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
                raise ValueError(f"precise_bn: the statistics of layer {name!r} are not finite "
                                 f"in {running_mean.dtype} (a NaN or Inf in the data, or "
                                 f"values beyond the buffer's range); nothing was changed")
            new[name] = (mean, var)
        with torch.no_grad():  # everything is checked: commit
            for name, (mean, var) in new.items():
                running_mean, running_var = _stats(layers[name])
                running_mean.copy_(mean)
                running_var.copy_(var)
    return PreciseReport(seen, sorted(new), left)


def precise_bn(model: nn.Module, batches: Iterable[Any], num_samples: int) -> int:
    """Re-estimate every BatchNorm layer's running statistics over `num_samples` examples.

    `batches` yields inputs (or tuples whose first element is the input). Returns the number of
    examples used (fewer than `num_samples` if the batches ran out first). Frozen and untracked
    layers are left alone; a tracked layer no batch reached is left alone with a warning
    (``precise_bn_report`` returns the full account).
    """
    report = precise_bn_report(model, batches, num_samples)
    missed = [name for name, why in report.left.items() if why.startswith("no batch")]
    if missed:
        warnings.warn(f"precise_bn: no batch reached {', '.join(map(repr, missed))}; their "
                      f"running statistics were left as they were", RuntimeWarning,
                      stacklevel=2)
    return report.samples
