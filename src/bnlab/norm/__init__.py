"""bnlab.norm: the normalization layers, their functional core and the tools around them.

This package imports nothing else from bnlab: it is the centre every other package builds on.
"""

from bnlab.norm.base import NormBase
from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.convert import convert
from bnlab.norm.functional import batch_norm

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "NormBase",
    "batch_norm",
    "convert",
]
