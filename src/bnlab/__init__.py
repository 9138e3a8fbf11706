"""bnlab: a batch-normalization library and laboratory for PyTorch.

>>> import torch, bnlab
>>> bn = bnlab.BatchNorm2d(6)          # drop-in for torch.nn.BatchNorm2d
>>> y = bn(torch.randn(8, 6, 24, 24))
"""

from bnlab import functional
from bnlab.norm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, convert

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "__version__",
    "convert",
    "functional",
]
