"""Swap the BatchNorm layers of a model between implementations, keeping their state.

``convert(model, to="bnlab")`` replaces every ``torch.nn.BatchNorm1d/2d/3d`` with its bnlab
twin; ``to="torch"`` does the reverse. Parameters, buffers, dtype, device, train/eval mode and
``requires_grad`` flags carry over, so the converted model computes the same function.

One table per target, class -> class: a new target (a synchronized or frozen variant) is one
more row, not more code.
"""

from __future__ import annotations

import copy

from torch import nn

from bnlab.norm.base import NormBase, is_batch_norm
from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.variants.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from bnlab.norm.variants.sync import SyncBatchNorm

__all__ = ["CONVERSIONS", "convert"]

_TORCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BNLAB = (BatchNorm1d, BatchNorm2d, BatchNorm3d)
_FROZEN = (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d)

# target name -> {source class: target class}
CONVERSIONS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {
    "bnlab": {**dict(zip(_TORCH, _BNLAB, strict=True)), **dict(zip(_FROZEN, _BNLAB, strict=True)),
              nn.SyncBatchNorm: SyncBatchNorm},
    "torch": {**dict(zip(_BNLAB, _TORCH, strict=True)), SyncBatchNorm: nn.SyncBatchNorm},
    "sync": {cls: SyncBatchNorm for cls in (*_TORCH, *_BNLAB, nn.SyncBatchNorm)},
    "frozen": {**dict(zip(_TORCH, _FROZEN, strict=True)),
               **dict(zip(_BNLAB, _FROZEN, strict=True))},
}


def _swap(old: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """Build `cls` with `old`'s configuration and load `old`'s state into it."""
    ref = next(iter(old.state_dict().values()), None)  # any tensor gives device and dtype
    new = cls(
        old.num_features,
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
        bias=getattr(old, "bias", None) is not None,
    )
    new.load_state_dict(old.state_dict(), strict=True)
    if not getattr(new, "freeze_affine", False):  # a frozen layer sets its own flags
        for (_, p_new), (_, p_old) in zip(
            new.named_parameters(), old.named_parameters(), strict=True
        ):
            p_new.requires_grad_(p_old.requires_grad)
    return new.train(old.training)


def convert(model: nn.Module, to: str = "bnlab", *, inplace: bool = False) -> nn.Module:
    """Return `model` with every BatchNorm layer swapped to the `to` implementation.

    Args:
        model: any module tree (a single BatchNorm layer works too).
        to: ``"bnlab"`` or ``"torch"`` (see ``CONVERSIONS``).
        inplace: modify `model` itself instead of a deep copy.

    Layers already of the target kind are left as they are (for ``"bnlab"``: every bnlab
    layer). A normalization layer with no counterpart (``bnlab.BatchNorm`` of any rank or a
    bnlab variant to torch, a renorm layer to frozen) is an error that names it, rather than
    being silently left behind.
    """
    if to not in CONVERSIONS:
        raise ValueError(f"convert: unknown target {to!r}; choose one of {sorted(CONVERSIONS)}")
    table = CONVERSIONS[to]
    targets = set(table.values())

    def left_alone(m: nn.Module) -> bool:
        # Already of the target kind (any bnlab layer counts as "bnlab").
        return type(m) in targets or (to == "bnlab" and isinstance(m, NormBase)
                                      and type(m) not in table)

    # Check the whole tree first, so an error leaves even an in-place model untouched.
    for name, module in model.named_modules():
        if is_batch_norm(module) and type(module) not in table and not left_alone(module):
            where = f" at {name!r}" if name else ""
            raise TypeError(
                f"convert(to={to!r}): {type(module).__module__}.{type(module).__qualname__}"
                f"{where} has no {to} counterpart; convertible classes are "
                f"{sorted(c.__qualname__ for c in table)}"
            )

    model = model if inplace else copy.deepcopy(model)
    if type(model) in table:
        return _swap(model, table[type(model)])
    swapped: dict[int, nn.Module] = {}  # a layer shared by two parents stays shared
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) in table:
                if id(child) not in swapped:
                    swapped[id(child)] = _swap(child, table[type(child)])
                setattr(parent, child_name, swapped[id(child)])
    return model
