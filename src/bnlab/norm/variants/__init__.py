"""The BatchNorm variants torch.nn does not ship, all built on the same base and core."""

from bnlab.norm.variants.axes import (
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    PerActivationBatchNorm,
    group_norm,
)
from bnlab.norm.variants.frozen import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
)
from bnlab.norm.variants.ghost import GhostBatchNorm
from bnlab.norm.variants.noisy import NoisyBatchNorm
from bnlab.norm.variants.renorm import BatchRenorm
from bnlab.norm.variants.sync import SyncBatchNorm

__all__ = [
    "BatchRenorm",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "GhostBatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "NoisyBatchNorm",
    "PerActivationBatchNorm",
    "SyncBatchNorm",
    "group_norm",
]
