"""Replace every normalization layer of a model by another kind from the registry.

``convert(model, to=NAME)`` for a registry name that is not a plain implementation swap
(``ghost``, ``renorm``, ``group``, ``layer``, ``instance``, ``per-activation``, ``guarded``,
``textbook``, ``none``...) comes here. Each normalization layer (torch's or bnlab's BatchNorm of
any kind, the textbook layer, group/layer/instance norm) is rebuilt with
``create_norm(NAME, C, rank, spatial_shape)`` and given what carries the same meaning:

* eps always; momentum, affine and track_running_stats where the target has them (the textbook
  layer's momentum is the weight of the *old* average: 1 - m);
* gamma and beta always (a target that is not affine by default, instance norm, is built affine
  when the source is, so they are not dropped);
* running mean and variance where the target keeps them, and the batch counter: per channel as
  they are; per-channel to per-activation repeated over the positions (the best estimate there
  is), per-activation to per-channel by the law of total variance
  ``var_c = mean_s(var_s) + var_s(mean_s)``.

Some targets need each layer's input rank (``instance``: spatial dims only; ``textbook``: 2 or
4) or its spatial shape (``per-activation``). The class says it for BatchNorm1d/2d/3d and
per-activation layers; otherwise, or to be sure, pass ``example_input=`` (one batch of the
model's input): a forward pass in eval mode measures every layer's input, changing nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from bnlab.norm.base import NormBase
from bnlab.norm.fused import BatchNormAct
from bnlab.norm.registry import NORMS, create_norm
from bnlab.norm.textbook import TextbookBatchNorm
from bnlab.norm.variants import GroupNorm, InstanceNorm, LayerNorm, PerActivationBatchNorm

__all__ = ["is_norm_layer", "renormalize"]

_PER_SAMPLE = (GroupNorm, LayerNorm, InstanceNorm, nn.GroupNorm, _InstanceNorm)
# Targets whose layers take BatchNorm's constructor (momentum, track_running_stats) ...
# ("bnlab", "torch", "sync" and "frozen" are class swaps in convert.py and never come here.)
_BN_LIKE = {"guarded", "renorm", "renorm-fixed", "renorm-wide", "ghost", "per-activation",
            "running-stats", "batch-stats-detached"}
# ... and those whose layer does not depend on the input's rank.
_RANK_FREE = {"guarded", "renorm", "renorm-fixed", "renorm-wide", "ghost", "layer", "group",
              "running-stats", "batch-stats-detached", "none"}
_RANK_OF_CLASS = {"1d": 2, "2d": 4, "3d": 5}


def is_norm_layer(m: nn.Module) -> bool:
    """A per-channel normalization layer that ``renormalize`` can replace."""
    return isinstance(m, (_BatchNorm, NormBase, TextbookBatchNorm, *_PER_SAMPLE))


def _channels(m: nn.Module) -> int:
    if isinstance(m, TextbookBatchNorm):
        return m.gamma.shape[1]
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, (_BatchNorm, NormBase, _InstanceNorm, GroupNorm, LayerNorm, InstanceNorm)):
        return m.num_features
    raise TypeError(f"{type(m).__name__} is not a normalization layer renormalize knows")


def _affine_params(m: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The (gamma, beta) parameters themselves, None where the layer has none."""
    if isinstance(m, TextbookBatchNorm):
        return m.gamma, m.beta
    return getattr(m, "weight", None), getattr(m, "bias", None)


def _affine(m: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """(gamma, beta) as (C,) views (the textbook's are (1, C[, 1, 1]))."""
    gamma, beta = _affine_params(m)
    return (None if gamma is None else gamma.view(-1), None if beta is None else beta.view(-1))


def _running(m: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    if isinstance(m, TextbookBatchNorm):
        return m.moving_mean.reshape(-1), m.moving_var.reshape(-1)
    return getattr(m, "running_mean", None), getattr(m, "running_var", None)


def _known_shape(m: nn.Module) -> tuple[int, tuple[int, ...] | None] | None:
    """(rank, spatial shape or None) as far as the layer's class tells, else None."""
    if isinstance(m, PerActivationBatchNorm):
        return 2 + len(m.spatial_shape), m.spatial_shape
    if isinstance(m, TextbookBatchNorm):
        return m.gamma.dim(), None if m.gamma.dim() == 4 else ()
    rank = _RANK_OF_CLASS.get(type(m).__name__[-2:])
    if rank is not None and isinstance(m, _InstanceNorm):
        rank += 1  # InstanceNorm1d reads (N, C, L), where BatchNorm1d is taken to read (N, C)
    return None if rank is None else (rank, () if rank == 2 else None)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def measure(model: nn.Module, example_input: Any) -> dict[int, tuple[int, ...]]:
    """id(norm layer) -> the shape of its input, from one forward pass in eval mode."""
    shapes: dict[int, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        shapes.setdefault(id(module), tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if is_norm_layer(m)]
    try:
        with _eval_mode(model), torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _config(old: nn.Module, to: str) -> dict[str, Any]:
    """The constructor arguments of the target that mean what they meant in `old`."""
    kw: dict[str, Any] = {"eps": old.eps}
    gamma, _ = _affine(old)
    if to == "textbook":
        m = getattr(old, "momentum", None)
        return kw if m is None else {**kw, "momentum": 1.0 - m}
    kw["affine"] = gamma is not None
    if to in _BN_LIKE:
        kw["momentum"] = getattr(old, "momentum", 0.1)
        kw["track_running_stats"] = _running(old)[0] is not None
    return kw


def _carry(old: nn.Module, new: nn.Module) -> None:
    """Copy gamma/beta, running statistics and the batch counter into `new` (in place)."""
    with torch.no_grad():
        for src, dst in zip(_affine(old), _affine(new), strict=True):
            if src is not None and dst is not None:
                dst.copy_(src.reshape(dst.shape))
        (mean, var), (new_mean, new_var) = _running(old), _running(new)
        if mean is not None and var is not None and new_mean is not None and \
                new_var is not None:
            if mean.shape != new_mean.shape and mean.dim() > 1:  # per activation -> per channel
                flat_m, flat_v = mean.flatten(1), var.flatten(1)  # (C,*S) -> (C, prod(S))
                mean, var = flat_m.mean(1), flat_v.mean(1) + flat_m.var(1, unbiased=False)
            shape = new_mean.shape  # (C,), (C,*S) or the textbook's (1,C[,1,1])
            if mean.numel() != new_mean.numel():  # per channel -> per activation: repeat
                view = (-1,) + (1,) * (len(shape) - 1)
                mean, var = mean.reshape(view).expand(shape), var.reshape(view).expand(shape)
            new_mean.copy_(mean.reshape(shape))
            new_var.copy_(var.reshape(shape))
        count, new_count = (getattr(old, "num_batches_tracked", None),
                            getattr(new, "num_batches_tracked", None))
        if count is not None and new_count is not None:
            new_count.copy_(count)


def _build(name: str, old: nn.Module, to: str, shape: tuple[int, ...] | None) -> nn.Module:
    """The `to` layer replacing `old`; `shape` is its measured input shape, if any."""
    if isinstance(old, BatchNormAct):
        raise TypeError(f"convert(to={to!r}): layer {name!r} is a fused BatchNorm-{old.activation} "
                        f"layer; convert the model before fusing it (bnlab.norm.fuse)")
    c = _channels(old)
    if to == "none":
        return nn.Identity()
    known = (len(shape), shape[2:]) if shape is not None else _known_shape(old)
    if known is None and to not in _RANK_FREE:
        raise ValueError(f"convert(to={to!r}): layer {name!r} ({type(old).__name__}) works on "
                         f"inputs of any rank, and {to!r} needs to know which; pass "
                         f"example_input= (one batch of the model's input) so convert can "
                         f"measure it")
    rank, spatial = known if known is not None else (4, None)
    if to == "per-activation" and spatial is None:
        raise ValueError(f"convert(to='per-activation'): layer {name!r} "
                         f"({type(old).__name__}) does not say its input's spatial shape; pass "
                         f"example_input= (one batch of the model's input) so convert can "
                         f"measure it")
    ref = next(iter(old.state_dict().values()), None)
    try:
        new = create_norm(to, c, rank, spatial or (), **_config(old, to))
        assert new is not None
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        _carry(old, new)
    except (ValueError, TypeError, RuntimeError) as e:
        raise type(e)(f"convert(to={to!r}): layer {name!r} ({type(old).__name__}) cannot "
                      f"become {to!r}: {e}") from e
    if not getattr(new, "freeze_affine", False):  # a frozen layer sets its own flags
        for p_new, p_old in zip(_affine_params(new), _affine_params(old), strict=True):
            if p_new is not None and p_old is not None:
                p_new.requires_grad_(p_old.requires_grad)
    return new.train(old.training)


def renormalize(model: nn.Module, to: str, example_input: Any = None) -> nn.Module:
    """Replace, in place, every normalization layer of `model` by a `to` layer (see above).

    The caller owns the transaction (``convert`` runs this inside ``all_or_nothing``).
    """
    assert to in NORMS
    shapes = measure(model, example_input) if example_input is not None else {}
    names = {id(m): name for name, m in model.named_modules()}
    if is_norm_layer(model):  # a single layer: the result is a new object
        return _build("", model, to, shapes.get(id(model)))
    swapped: dict[int, nn.Module] = {}  # a layer shared by two parents stays shared
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if is_norm_layer(child):
                if id(child) not in swapped:
                    swapped[id(child)] = _build(names.get(id(child), child_name), child, to,
                                                shapes.get(id(child)))
                setattr(parent, child_name, swapped[id(child)])
    return model
