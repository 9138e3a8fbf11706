"""Shared pieces of the hostile-input suite: the case table, models drawn by hypothesis, and
their image.

``image(model)`` is everything a failed call must leave as it was: every state-dict entry's
dtype, shape and bytes, the module tree (names, types, train/eval flags, eps and momentum)
and every parameter's ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import bnlab

Draw = Callable[[Any], Any]
Call = Callable[[nn.Module], Any]
Build = Callable[[Draw], tuple[nn.Module, Call]]

# name -> (build, the exception expected, a pattern its message must match)
CASES: dict[str, tuple[Build, type[BaseException], str]] = {}


def case(name: str, exc: type[BaseException], match: str) -> Callable[[Build], Build]:
    """Register a hostile case under `name` (tool/what-goes-wrong)."""
    def register(build: Build) -> Build:
        assert name not in CASES, name
        CASES[name] = (build, exc, match)
        return build
    return register


def tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().clone().cpu().reshape(-1)  # a clone: inference tensors become normal
    return flat.view(torch.uint8).numpy().tobytes()


def image(model: nn.Module) -> tuple:
    tree = tuple((name, f"{type(m).__module__}.{type(m).__qualname__}", m.training,
                  repr(getattr(m, "eps", None)), repr(getattr(m, "momentum", None)))
                 for name, m in model.named_modules(remove_duplicate=False))
    state = tuple((k, v.dtype, tuple(v.shape), tensor_bytes(v))
                  for k, v in model.state_dict(keep_vars=True).items())
    flags = tuple((k, p.requires_grad) for k, p in model.named_parameters())
    return tree, state, flags


def bn(kind: str, width: int, **kw: Any) -> nn.Module:
    """A rank-2 BatchNorm of the given library."""
    return (nn.BatchNorm1d if kind == "torch" else bnlab.BatchNorm1d)(width, **kw)


def warm(model: nn.Module, width: int, steps: int, *, rank: int = 2) -> nn.Module:
    """A few training steps without gradients: running statistics that differ from the
    defaults, so a restore that put back fresh values would be caught."""
    was = model.training
    model.train()
    dtype = next(iter(model.parameters()), torch.empty(0)).dtype
    with torch.no_grad():
        for _ in range(steps):
            shape = (6, width) if rank == 2 else (6, width, 3, 3)
            model(torch.randn(shape, dtype=dtype) * 2 + 1)
    return model.train(was)


def chain(draw: Draw, last: Callable[[int], nn.Module] | None = None, *,
          kinds: tuple[str, ...] = ("bnlab", "torch")) -> tuple[nn.Sequential, int]:
    """[Linear -> BatchNorm -> ReLU] x k (k >= 1, kinds drawn), then Linear -> `last(width)`:
    the faulty layer comes after healthy ones, so a tool that changes layers one by one has
    changed some before it fails. Returns (model, width)."""
    from hypothesis import strategies as st

    width = draw(st.integers(2, 5))
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        layers += [nn.Linear(width, width), bn(draw(st.sampled_from(kinds)), width), nn.ReLU()]
    model = warm(nn.Sequential(*layers), width, draw(st.integers(1, 3)))
    if last is not None:  # not warmed up: it may be unable to run
        model.append(nn.Linear(width, width))
        model.append(last(width))
    return model, width


def built_in_inference_mode(width: int, cls: type[nn.Module] = bnlab.BatchNorm1d,
                            **kw: Any) -> nn.Module:
    with torch.inference_mode():
        return cls(width, **kw)


def with_attr(layer: nn.Module, **attrs: Any) -> nn.Module:
    """`layer` with attributes set after construction (as a user script might)."""
    for k, v in attrs.items():
        setattr(layer, k, v)
    return layer
