"""Swap the BatchNorm layers of a model between implementations, keeping their state.

``convert(model, to="bnlab")`` replaces every ``torch.nn.BatchNorm1d/2d/3d`` with its bnlab
twin; ``to="torch"`` does the reverse. Parameters, buffers, dtype, device, train/eval mode and
``requires_grad`` flags carry over, so the converted model computes the same function; so do
its hooks, and a layer registered at several places (a shared module) becomes one new layer
registered at all of them. A parametrized BatchNorm is refused (its replacement would drop
the parametrization).
``freeze(model)`` and ``unfreeze(model)`` are two more swaps: to the frozen kind and back.

One table per target, class -> class: a new target (a synchronized or frozen variant) is one
more row, not more code. Every other name of the norm registry re-normalizes the model instead
(``to="group"``, ``"renorm"``, ``"per-activation"``...): every normalization layer is rebuilt
as that kind with the state that means the same there (``bnlab.norm.renormalize``).

All or nothing: with ``inplace=True`` the swaps run inside ``all_or_nothing(model)``, so a layer
that cannot be built (a torch layer with ``momentum=2``, an untracked layer to freeze, a buffer
of the wrong shape) leaves the whole model as it was, the layers swapped before it included.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from bnlab.norm.base import NormBase, is_batch_norm
from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.checks import check_tool_args
from bnlab.norm.lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, copy_module
from bnlab.norm.registry import NORMS
from bnlab.norm.renormalize import renormalize
from bnlab.norm.transaction import all_or_nothing
from bnlab.norm.variants.frozen import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
)
from bnlab.norm.variants.sync import SyncBatchNorm

__all__ = ["CONVERSIONS", "convert", "freeze", "targets", "unfreeze"]

_TORCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BNLAB = (BatchNorm1d, BatchNorm2d, BatchNorm3d)
_FROZEN = (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d)
_TORCH_LAZY = (nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)
_BNLAB_LAZY = (LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d)

# target name -> {source class: target class}
CONVERSIONS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {
    "bnlab": {**dict(zip(_TORCH, _BNLAB, strict=True)), **dict(zip(_FROZEN, _BNLAB, strict=True)),
              **dict(zip(_TORCH_LAZY, _BNLAB_LAZY, strict=True)),
              nn.SyncBatchNorm: SyncBatchNorm},
    "torch": {**dict(zip(_BNLAB, _TORCH, strict=True)), SyncBatchNorm: nn.SyncBatchNorm,
              **dict(zip(_BNLAB_LAZY, _TORCH_LAZY, strict=True))},
    "sync": {cls: SyncBatchNorm for cls in (*_TORCH, *_BNLAB, nn.SyncBatchNorm)},
    "frozen": {**dict(zip(_TORCH, _FROZEN, strict=True)),
               **dict(zip(_BNLAB, _FROZEN, strict=True))},
}


# Every hook table of nn.Module: the replacement runs the same hooks as the layer it replaces.
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give `new` the hook tables of `old` (the same objects: a handle the user holds still
    removes its hook)."""
    for table in _HOOK_TABLES:
        if hasattr(old, table):
            setattr(new, table, getattr(old, table))
    if hasattr(old, "_is_full_backward_hook"):
        new._is_full_backward_hook = old._is_full_backward_hook


def _copy_user_hooks(old: nn.Module, new: nn.Module) -> None:
    """A lazy layer's own tables hold its materializing hooks, bound to it: `new` keeps its
    own and receives the user's hooks of `old` beside them (copied: the user's handles no
    longer remove them)."""
    for table in _HOOK_TABLES:
        mine = getattr(new, table, None)
        for key, hook in getattr(old, table, {}).items():
            if mine is not None and not _bound_to(hook, old):
                mine[key] = hook


def _parametrized_names(module: nn.Module) -> list[str]:
    """The tensors torch.nn.utils.parametrize computes for `module`."""
    table: Any = getattr(module, "parametrizations", {})
    return list(table.keys())


def _bound_to(hook: Any, module: nn.Module) -> bool:
    """Whether `hook` is a method of `module` itself (torch wraps some in a _WrappedHook)."""
    fn = getattr(hook, "hook", hook)
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__self__", None) is module


def _swap(old: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """Build `cls` with `old`'s configuration and load `old`'s state into it."""
    if issubclass(cls, LazyModuleMixin):  # lazy to lazy: the settings; no state yet
        lazy: nn.Module = cls(eps=old.eps, momentum=old.momentum, affine=old.affine,
                              track_running_stats=old.track_running_stats,
                              device=old.num_batches_tracked.device
                              if old.track_running_stats else None)
        _copy_user_hooks(old, lazy)
        return lazy.train(old.training)
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
    _carry_hooks(old, new)
    return new.train(old.training)


def _swap_named(name: str, old: nn.Module, cls: type[nn.Module], to: str) -> nn.Module:
    """`_swap`, with the layer's path added to any error (a model has many layers)."""
    try:
        return _swap(old, cls)
    except (ValueError, TypeError, RuntimeError) as e:
        where = f"layer {name!r}" if name else "the layer"
        raise type(e)(f"convert(to={to!r}): {where} ({type(old).__name__}) cannot become "
                      f"{cls.__name__}: {e}") from e


def _old_style_reparametrized(module: nn.Module) -> bool:
    return any(isinstance(h, (WeightNorm, SpectralNorm))
               for h in module._forward_pre_hooks.values())


def targets() -> list[str]:
    """Every name ``convert`` accepts: the implementation swaps and the norm registry."""
    return sorted(set(CONVERSIONS) | set(NORMS))


def convert(model: nn.Module, to: str = "bnlab", *, inplace: bool = False,
            example_input: Any = None) -> nn.Module:
    """Return `model` with every BatchNorm layer swapped to the `to` implementation, or with
    every normalization layer re-normalized as the registry's `to`.

    Args:
        model: any module tree (a single normalization layer works too).
        to: an implementation swap, ``"bnlab"``, ``"torch"``, ``"sync"`` or ``"frozen"`` (see
            ``CONVERSIONS``: the same function, every BatchNorm changes class only), or any
            other name of the norm registry (``"ghost"``, ``"renorm"``, ``"group"``,
            ``"layer"``, ``"instance"``, ``"per-activation"``, ``"none"``...): every
            normalization layer becomes that kind, keeping the state that means the same
            there (``bnlab.norm.renormalize``).
        inplace: modify `model` itself instead of a deep copy (all or nothing: on an error
            the model is left exactly as it was).
        example_input: one batch of the model's input (a tensor, or a tuple of the forward's
            arguments), for targets that need each layer's input rank or spatial shape
            (``"per-activation"``, ``"instance"``, ``"textbook"``) where the layers' classes
            do not tell it; one forward pass in eval mode measures them. Unused by the swaps.

    Layers already of the target kind are left as they are (for ``"bnlab"``: every bnlab
    layer). A normalization layer with no counterpart (``bnlab.BatchNorm`` of any rank or a
    bnlab variant to torch, a renorm layer to frozen) is an error that names it, rather than
    being silently left behind.
    """
    check_tool_args("convert", model, inplace=inplace)
    if not isinstance(to, str):
        raise TypeError(f"convert: to must be a str naming the target, got {to!r}; choose one "
                        f"of {sorted(CONVERSIONS)}")
    if to not in CONVERSIONS and to not in NORMS:
        raise ValueError(f"convert: unknown target {to!r}; choose one of {targets()}")
    if to not in CONVERSIONS:
        if not inplace:
            return renormalize(copy_module(model), to, example_input)
        with all_or_nothing(model):
            return renormalize(model, to, example_input)
    table = CONVERSIONS[to]
    target_classes = set(table.values())

    def left_alone(m: nn.Module) -> bool:
        # Already of the target kind (any bnlab layer counts as "bnlab").
        return type(m) in target_classes or (to == "bnlab" and isinstance(m, NormBase)
                                      and type(m) not in table)

    # Check the whole tree first: the common error costs no work and names the layer.
    for name, module in model.named_modules():
        where = f" at {name!r}" if name else ""
        if is_batch_norm(module) and parametrize.is_parametrized(module):
            raise TypeError(
                f"convert(to={to!r}): the BatchNorm{where} is parametrized "
                f"({', '.join(_parametrized_names(module))}); its "
                f"replacement would drop "
                f"that: remove it first (torch.nn.utils.parametrize.remove_parametrizations)")
        if is_batch_norm(module) and _old_style_reparametrized(module):
            raise TypeError(
                f"convert(to={to!r}): the BatchNorm{where} uses the old-style weight_norm or "
                f"spectral_norm (its weight is computed by a hook from other parameters); "
                f"remove it first (torch.nn.utils.remove_weight_norm / remove_spectral_norm)")
        if is_batch_norm(module) and type(module) not in table and not left_alone(module):
            raise TypeError(
                f"convert(to={to!r}): {type(module).__module__}.{type(module).__qualname__}"
                f"{where} has no {to} counterpart; convertible classes are "
                f"{sorted(c.__qualname__ for c in table)}"
            )
    if type(model) in table:  # a single layer: the result is a new object either way
        return _swap_named("", model, table[type(model)], to)
    if not inplace:
        return _swap_children(copy_module(model), table, to)
    with all_or_nothing(model):
        return _swap_children(model, table, to)


def _swap_children(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]],
                   to: str) -> nn.Module:
    names = {id(m): name for name, m in model.named_modules()}
    swapped: dict[int, nn.Module] = {}  # a layer shared by two parents stays shared
    for parent in list(model.modules()):
        # _modules, not named_children(): that skips a layer's second name in one parent.
        for child_name, child in list(parent._modules.items()):
            if child is not None and type(child) in table:
                if id(child) not in swapped:
                    swapped[id(child)] = _swap_named(names.get(id(child), child_name), child,
                                                     table[type(child)], to)
                setattr(parent, child_name, swapped[id(child)])
    return model


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every BatchNorm (bnlab or torch) becomes the frozen kind of the same rank."""
    check_tool_args("freeze", model, inplace=inplace)
    return convert(model, to="frozen", inplace=inplace)


def unfreeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every frozen BatchNorm becomes bnlab's trainable BatchNorm of the same rank."""
    check_tool_args("unfreeze", model, inplace=inplace)
    with all_or_nothing(model) if inplace else contextlib.nullcontext():
        thawed = {name for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm)}
        model = convert(model, to="bnlab", inplace=inplace)
        for name, m in model.named_modules():
            if name in thawed:  # only the layers thawed here; others keep their flags
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
        return model

