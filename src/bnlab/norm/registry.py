"""One table of normalization layers by name: ``create_norm(name, num_features, input_rank)``.

Every entry is a builder ``(num_features, input_rank, spatial_shape, **kw) -> nn.Module``:
``input_rank`` is the rank of the input the layer will see (2 for (N, C) after a linear layer,
4 for (N, C, H, W) after a 2-d convolution) and ``spatial_shape`` its spatial size, which only
per-activation BatchNorm needs. ``"none"`` is the absence of a layer. Models accept a name from
this table or a callable ``(num_features, input_rank) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.textbook import TextbookBatchNorm
from bnlab.norm.variants import (
    BatchRenorm,
    FrozenBatchNorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NoisyBatchNorm,
    PerActivationBatchNorm,
    SyncBatchNorm,
)
from bnlab.norm.variants.teaching import DetachedBatchNorm, RunningStatsBatchNorm

__all__ = ["NORMS", "Norm", "NormSpec", "create_norm", "norm_names", "resolve"]

Builder = Callable[..., nn.Module]
@dataclass(frozen=True)
class Norm:
    """A registry name with constructor arguments for every layer built from it:
    ``Norm("bnlab", {"momentum": 0.01, "eps": 1e-3})`` (a run's BatchNorm settings, passed to
    the layers as a model builds them)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


NormSpec = str | Norm | Callable[[int, int], nn.Module]


def _by_rank(table: dict[int, type[nn.Module]]) -> Builder:
    def build(c: int, rank: int, spatial: tuple[int, ...], **kw: Any) -> nn.Module:
        if rank not in table:
            raise ValueError(f"no layer for rank-{rank} inputs (supported: {sorted(table)})")
        return table[rank](c, **kw)
    return build


def _any_rank(cls: type[nn.Module]) -> Builder:
    return lambda c, rank, spatial, **kw: cls(c, **kw)


def _textbook(c: int, rank: int, spatial: tuple[int, ...], **kw: Any) -> nn.Module:
    if rank not in (2, 4):
        raise ValueError(f"the textbook layer handles ranks 2 and 4, not {rank}")
    return TextbookBatchNorm(c, rank, **kw)


def _instance(c: int, rank: int, spatial: tuple[int, ...], **kw: Any) -> nn.Module:
    if rank < 3:
        raise ValueError("instance norm averages over spatial dims: rank-2 (N, C) inputs have "
                         "none (use 'layer' or a BatchNorm there)")
    return InstanceNorm(c, **kw)


NORMS: dict[str, Builder | None] = {
    "none": None,
    "bnlab": _by_rank({2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}),
    "torch": _by_rank({2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d,
                       5: nn.BatchNorm3d}),
    "textbook": _textbook,
    "guarded": lambda c, rank, spatial, **kw: BatchNorm(c, guard=True, **kw),
    "renorm": _any_rank(BatchRenorm),
    # Fixed rmax=3, dmax=5 from the first step: for short runs (the paper's warm-up keeps
    # renorm equal to BatchNorm for 5k steps and reaches these limits at 25k-40k).
    "renorm-fixed": lambda c, rank, spatial, **kw: BatchRenorm(c, warmup=False, **kw),
    # Effectively unclipped (r, d never reach the limits), no warm-up: normalizes with the
    # running averages in the forward pass while the gradient flows through the batch's.
    "renorm-wide": lambda c, rank, spatial, **kw: BatchRenorm(
        c, warmup=False, **{"rmax": 1e3, "dmax": 1e3, **kw}),
    "ghost": _any_rank(GhostBatchNorm),
    # Santurkar et al.'s intervention: BN, then a random per-channel scale and shift each step.
    "noisy-bn": _any_rank(NoisyBatchNorm),
    "sync": _any_rank(SyncBatchNorm),
    "frozen": _any_rank(FrozenBatchNorm),
    "per-activation": lambda c, rank, spatial, **kw: PerActivationBatchNorm(c, spatial, **kw),
    "layer": _any_rank(LayerNorm),
    "group": _any_rank(GroupNorm),
    "instance": _instance,
    # Teaching experiment: normalize with the running averages during training too.
    "running-stats": _any_rank(RunningStatsBatchNorm),
    # Teaching experiment: BatchNorm's forward, no gradient through the batch statistics.
    "batch-stats-detached": _any_rank(DetachedBatchNorm),
    # Instance norm where there are spatial axes (after convolutions), BatchNorm elsewhere.
    "instance-conv": lambda c, rank, spatial, **kw: (
        InstanceNorm(c, **kw) if rank > 2 else BatchNorm1d(c, **kw)),
}


def norm_names() -> list[str]:
    return sorted(NORMS)


def create_norm(name: str, num_features: int, input_rank: int = 4,
                spatial_shape: tuple[int, ...] = (), **kwargs: Any) -> nn.Module | None:
    """A normalization layer for `num_features` channels of a rank-`input_rank` input.

    Returns None for ``"none"``: callers leave the layer out rather than insert an identity.
    Extra keyword arguments go to the layer's constructor (``momentum=``, ``num_groups=``...).
    """
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(norm_names())}")
    build = NORMS[name]
    if build is None:
        return None
    if name == "per-activation" and len(spatial_shape) != input_rank - 2:
        raise ValueError(f"per-activation BatchNorm needs the spatial shape of its rank-"
                         f"{input_rank} input, got {spatial_shape}")
    try:
        return build(num_features, input_rank, tuple(spatial_shape), **kwargs)
    except ValueError as e:
        raise ValueError(f"norm {name!r}: {e}") from None


def resolve(norm: NormSpec, num_features: int, input_rank: int,
            spatial_shape: tuple[int, ...] = ()) -> list[nn.Module]:
    """The layer(s) to insert for `norm`: [] for "none", else a one-element list."""
    if isinstance(norm, Norm):
        layer = create_norm(norm.name, num_features, input_rank, spatial_shape, **norm.kwargs)
        return [] if layer is None else [layer]
    if callable(norm):
        return [norm(num_features, input_rank)]
    layer = create_norm(norm, num_features, input_rank, spatial_shape)
    return [] if layer is None else [layer]
