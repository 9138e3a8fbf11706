"""bnlab.norm: the normalization layers, their functional core and the tools around them.

This package imports nothing else from bnlab: it is the centre every other package builds on.
Every tool that changes a model (``convert``, ``freeze``, ``unfreeze``, ``fold``, ``fuse``,
``precise_bn``, ``load_state_dict``) is all or nothing: an error leaves the model
byte-identical (``bnlab.norm.transaction``).
"""

from bnlab.norm.base import NormBase
from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.convert import convert, freeze, unfreeze
from bnlab.norm.functional import batch_norm
from bnlab.norm.lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d
from bnlab.norm.state import load_state_dict
from bnlab.norm.transaction import all_or_nothing

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "NormBase",
    "all_or_nothing",
    "batch_norm",
    "convert",
    "freeze",
    "load_state_dict",
    "unfreeze",
]
