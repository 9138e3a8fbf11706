"""One table of normalization layers by name: ``create_norm(name, num_features, input_rank)``.

Each entry maps the rank of the input the layer will see (2 for (N, C) after a linear layer,
4 for (N, C, H, W) after a 2-d convolution, ...) to a constructor taking ``num_features``
first. ``"none"`` is the absence of a layer. Models accept either a name from this table or a
callable ``(num_features, input_rank) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.textbook import TextbookBatchNorm

__all__ = ["NORMS", "NormSpec", "create_norm", "norm_names"]

Constructor = Callable[..., nn.Module]
NormSpec = str | Callable[[int, int], nn.Module]


def _textbook(num_dims: int) -> Constructor:
    return lambda num_features, **kw: TextbookBatchNorm(num_features, num_dims, **kw)


NORMS: dict[str, dict[int, Constructor]] = {
    "none": {},
    "bnlab": {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d},
    "torch": {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d},
    "textbook": {2: _textbook(2), 4: _textbook(4)},
}


def norm_names() -> list[str]:
    return sorted(NORMS)


def create_norm(name: str, num_features: int, input_rank: int = 4, **kwargs: Any) -> (
        nn.Module | None):
    """A normalization layer for `num_features` channels of a rank-`input_rank` input.

    Returns None for ``"none"``: callers leave the layer out rather than insert an identity.
    """
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(norm_names())}")
    if name == "none":
        return None
    table = NORMS[name]
    if input_rank not in table:
        raise ValueError(f"norm {name!r} has no layer for rank-{input_rank} inputs "
                         f"(it supports ranks {sorted(table)})")
    return table[input_rank](num_features, **kwargs)


def resolve(norm: NormSpec, num_features: int, input_rank: int) -> list[nn.Module]:
    """The layer(s) to insert for `norm`: [] for "none", else a one-element list."""
    if callable(norm):
        return [norm(num_features, input_rank)]
    layer = create_norm(norm, num_features, input_rank)
    return [] if layer is None else [layer]
