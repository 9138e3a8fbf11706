"""bnlab: a batch-normalization library and laboratory for PyTorch.

>>> import torch, bnlab
>>> bn = bnlab.BatchNorm2d(6)          # drop-in for torch.nn.BatchNorm2d
>>> y = bn(torch.randn(8, 6, 24, 24))

The names below are imported on first use (PEP 562), so ``import bnlab`` does not import
torch: the ``bnlab`` command starts its Ctrl-C handler before the heavy imports begin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "__version__",
    "convert",
    "functional",
]

# name -> module it comes from
_LAZY = {"BatchNorm": "bnlab.norm", "BatchNorm1d": "bnlab.norm", "BatchNorm2d": "bnlab.norm",
         "BatchNorm3d": "bnlab.norm", "LazyBatchNorm1d": "bnlab.norm",
         "LazyBatchNorm2d": "bnlab.norm", "LazyBatchNorm3d": "bnlab.norm",
         "convert": "bnlab.norm", "functional": "bnlab.functional"}

if TYPE_CHECKING:
    from bnlab import functional
    from bnlab.norm import (
        BatchNorm,
        BatchNorm1d,
        BatchNorm2d,
        BatchNorm3d,
        LazyBatchNorm1d,
        LazyBatchNorm2d,
        LazyBatchNorm3d,
        convert,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bnlab' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "functional" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
