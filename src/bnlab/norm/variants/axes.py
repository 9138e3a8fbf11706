r"""The normalization-axes family: the same normalization, averaged over different axes.

For an input of shape (N, C, *S), every member computes x_hat = (x - mu) / sqrt(var + eps) over
some set of elements, then a per-channel affine y = gamma_c * x_hat + beta_c:

=====================  ====================================  =================================
layer                  one mean and variance per             averaged over
=====================  ====================================  =================================
BatchNorm              channel c                             (N, *S)
PerActivationBatchNorm position (c, s)                       (N,)      running stats (C, *S)
LayerNorm              sample n                              (C, *S)   = GroupNorm with G = 1
GroupNorm(G)           sample n, group g of C/G channels     (C/G, *S)
InstanceNorm           sample n, channel c                   (*S)      = GroupNorm with G = C
=====================  ====================================  =================================

The per-sample members share one core, ``group_norm``: reshape x to rows (N * G, K) with
K = C/G * prod(S) values each, normalize every row, then apply the affine. Its backward is the
BatchNorm derivation with rows in place of channels: for a row with h = dL/dx_hat,

    dL/dx = inv_std / K * (K * h - sum(h) - x_hat * sum(h * x_hat))

PerActivationBatchNorm reuses the BatchNorm core on the flattened (N, C * prod(S)) view.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from bnlab.norm.batchnorm import BatchNormBase
from bnlab.norm.checks import (
    check_eps,
    check_flag,
    check_flags,
    check_layer_at_use,
    check_norm_config,
    check_size,
)
from bnlab.norm.functional import batch_norm

__all__ = ["GroupNorm", "InstanceNorm", "LayerNorm", "PerActivationBatchNorm", "group_norm"]


class _NormalizeRows(Function):
    """x (R, K) -> x_hat (R, K), each row to zero mean and unit variance."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)  # (R,K) -> (R,1)
        var = (x - mean).square().mean(dim=1, keepdim=True)  # (R,K) -> (R,1), two-pass
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean) * inv_std
        ctx.save_for_backward(x_hat, inv_std)
        return x_hat

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, h: Tensor) -> tuple[Tensor, None]:
        x_hat, inv_std = ctx.saved_tensors
        mean_h = h.mean(dim=1, keepdim=True)  # (R,K) -> (R,1)
        mean_hx = (h * x_hat).mean(dim=1, keepdim=True)  # (R,K) -> (R,1)
        return inv_std * (h - mean_h - x_hat * mean_hx), None


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalize each (sample, group of C / num_groups channels); per-channel affine after."""
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm expects a torch.Tensor input, got {type(input).__name__}")
    if input.dim() < 2 or not input.is_floating_point():
        raise ValueError(f"group_norm expects a floating-point (N, C, *) input, got "
                         f"{input.dtype} of shape {tuple(input.shape)}")
    check_size("group_norm", "num_groups", num_groups)
    check_eps("group_norm", eps)
    n, c = input.shape[:2]
    if c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} equal groups")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, Tensor) or t.numel() != c):
            got = f"{t.numel()} elements" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"group_norm {name} must be None or a tensor of {c} elements (one "
                            f"per channel), got {got}")
    cdtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    if input.numel() == 0:
        return input.clone()
    rows = input.to(cdtype).reshape(n * num_groups, -1)  # (N,C,*S) -> (N*G, C/G*prod(S))
    x_hat = _NormalizeRows.apply(rows, float(eps)).reshape(input.shape)
    shape = (1, c) + (1,) * (input.dim() - 2)
    y = x_hat if weight is None else x_hat * weight.to(cdtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(cdtype).reshape(shape)
    return y.to(input.dtype)


class _PerSampleNorm(nn.Module):
    """Per-channel gamma/beta around ``group_norm``; subclasses fix the number of groups."""

    def __init__(self, num_features: int, num_groups: int, eps: float, affine: bool,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        check_norm_config(num_features, eps, None)
        check_size(type(self).__name__, "num_groups", num_groups)
        check_flag(type(self).__name__, "affine", affine)
        if num_features % num_groups:
            raise ValueError(f"num_features={num_features} is not divisible by "
                             f"num_groups={num_groups}")
        super().__init__()
        self.num_features, self.num_groups, self.eps, self.affine = (
            num_features, num_groups, eps, affine)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _check_input(self, input: Tensor) -> None:
        if input.dim() < 2 or input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects (N, "
                             f"{self.num_features}, *) input, got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        check_layer_at_use(self, False)  # eps set after construction
        self._check_input(input)
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, " \
               f"affine={self.affine}"


def default_groups(num_features: int) -> int:
    """The divisor of C closest to sqrt(C) (ties: the larger): 6 -> 2, 16 -> 4, 120 -> 10."""
    divisors = [g for g in range(1, num_features + 1) if num_features % g == 0]
    root = math.sqrt(num_features)
    return min(divisors, key=lambda g: (abs(g - root), -g))


class GroupNorm(_PerSampleNorm):
    """``GroupNorm(num_features, num_groups=None)`` = ``torch.nn.GroupNorm(num_groups, C)``;
    by default the divisor of C closest to sqrt(C)."""

    def __init__(self, num_features: int, num_groups: int | None = None, eps: float = 1e-5,
                 affine: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if num_groups is None:
            check_norm_config(num_features, eps, None)  # before default_groups loops over it
        groups = default_groups(num_features) if num_groups is None else num_groups
        super().__init__(num_features, groups, eps, affine, device, dtype)


class LayerNorm(_PerSampleNorm):
    """Statistics over (C, *S) per sample, per-channel affine: ``torch.nn.GroupNorm(1, C)``."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, 1, eps, affine, device, dtype)


class InstanceNorm(_PerSampleNorm):
    """Statistics over the spatial dims per (sample, channel), as ``torch.nn.InstanceNorm*d``
    with its defaults (no running statistics); ``affine=False`` by default, as torch."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, num_features, eps, affine, device, dtype)

    def _check_input(self, input: Tensor) -> None:
        super()._check_input(input)
        if input.dim() < 3:
            raise ValueError("InstanceNorm averages over spatial dims: it needs an (N, C, *S) "
                             f"input with at least one spatial dim, got {tuple(input.shape)}")


def _spatial_shape(spatial_shape: object) -> tuple[int, ...]:
    """A tuple of positive ints: int() would turn 2.5 into 2 and True into 1, "44" into (4, 4)."""
    if isinstance(spatial_shape, (str, bytes)) or not isinstance(spatial_shape, (tuple, list,
                                                                                 torch.Size)):
        raise TypeError(f"PerActivationBatchNorm: spatial_shape must be a tuple of ints (the "
                        f"input's spatial size, e.g. (H, W)), got {spatial_shape!r}")
    for s in spatial_shape:
        check_size("PerActivationBatchNorm", "each spatial_shape entry", s)
    return tuple(spatial_shape)


class PerActivationBatchNorm(BatchNormBase):
    """Batch statistics per activation (c, s): averaged over the batch dimension only.

    ``PerActivationBatchNorm(num_features, spatial_shape)``: running buffers of shape
    (C, *spatial_shape), per-channel gamma and beta (the same parameters as BatchNorm, so the
    two differ only in which axes are averaged). For (N, C) inputs it is BatchNorm1d.
    """

    def __init__(self, num_features: int, spatial_shape: tuple[int, ...] = (),
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, bias: bool = True,
                 guard: bool = False) -> None:
        self.spatial_shape = _spatial_shape(spatial_shape)
        check_flags("PerActivationBatchNorm", affine=affine, bias=bias, guard=guard,
                    track_running_stats=track_running_stats)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, guard=guard)
        if track_running_stats:
            shape = (num_features, *self.spatial_shape)
            self.register_buffer("running_mean", torch.zeros(shape, device=device, dtype=dtype))
            self.register_buffer("running_var", torch.ones(shape, device=device, dtype=dtype))

    def _check_input_dim(self, input: Tensor) -> None:
        want = (self.num_features, *self.spatial_shape)
        if tuple(input.shape[1:]) != want:
            raise ValueError(f"PerActivationBatchNorm expects (N, {', '.join(map(str, want))}) "
                             f"input, got shape {tuple(input.shape)}")

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        per_channel = math.prod(self.spatial_shape)
        flat = input.reshape(input.shape[0], -1)  # (N,C,*S) -> (N, C*prod(S))

        def spread(p: Tensor | None) -> Tensor | None:  # (C,) -> (C*prod(S),)
            return None if p is None else p.repeat_interleave(per_channel)

        out = batch_norm(flat,
                         None if running_mean is None else running_mean.view(-1),
                         None if running_var is None else running_var.view(-1),
                         spread(self.weight), spread(self.bias), use_batch_stats, momentum,
                         self.eps, skipped=skipped)
        return out.reshape(input.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", spatial_shape={self.spatial_shape}"
