"""Every model tool keeps what the model computes, over generated models whose ``forward``
indexes, slices, iterates or calls its ``nn.Sequential`` in another order, reuses an output,
shares a BatchNorm between two places, and carries hooks and parametrizations.

Oracle: the model itself, before the tool. fuse is checked in training (outputs and the
running statistics it leaves) and in eval; fold in eval; convert to torch and back, and freeze,
in eval (a frozen layer is the eval transform), plus sharing and hooks kept. float64
throughout: the tools are exact up to rounding (fold rescales weights, the fused kernel
computes exp once), so 1e-10 relative is a tolerance ~1e5 ulp wide yet far below any real
change (a dropped hook doubles an output, a mis-fused layer moves it by O(1)).
A tool may refuse a model (a parametrized BatchNorm to convert or freeze) with a one-line
error that names it; then it must leave the model as it was.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import bnlab
from bnlab.norm.convert import convert, freeze
from bnlab.norm.fold import fold
from bnlab.norm.fused import fuse

F64 = torch.float64
C = 3
TOL = {"rtol": 1e-10, "atol": 1e-12}


class _Double(nn.Module):
    """A parametrization that changes the weight: a tool that ignores it computes another
    function."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


class Generated(nn.Module):
    """A Sequential called one of several ways (``how``)."""

    def __init__(self, layers: list[nn.Module], how: str, order: list[int], cut: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(*layers)
        self.how, self.order, self.cut = how, order, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "call":
            return self.seq(x)
        if self.how == "iterate":
            for layer in self.seq:
                x = layer(x)
            return x
        if self.how == "index":  # some layers skipped, some called twice, out of order
            for i in self.order:
                x = self.seq[i](x)
            return x
        if self.how == "slice":  # a slice, then the rest on the same input
            h = self.seq[:self.cut](x)
            return h.mean() + self.seq[self.cut:](x)
        h = self.seq[:self.cut](x)  # "reuse": an intermediate output read twice
        return self.seq[self.cut:](h) + h.mean()


@st.composite
def models(draw):
    blocks = draw(st.lists(st.sampled_from(["bn-sigmoid", "bn-relu", "bn-sigmoid-pool",
                                            "conv-bn", "conv-bn-relu", "bn-tanh"]),
                           min_size=1, max_size=4))
    layers: list[nn.Module] = []
    pooled = False
    for block in blocks:
        if block.startswith("conv"):
            layers.append(nn.Conv2d(C, C, 1))
        layers.append(bnlab.BatchNorm2d(C))
        if "sigmoid" in block:
            layers.append(nn.Sigmoid())
        if "relu" in block:
            layers.append(nn.ReLU())
        if "tanh" in block:
            layers.append(nn.Tanh())
        if block.endswith("pool") and not pooled:
            layers.append(nn.AvgPool2d(2))
            pooled = True  # at most one pool: 8x8 -> 4x4 (-> 2x2 when indexed twice)
    bns = [i for i, m in enumerate(layers) if isinstance(m, bnlab.BatchNorm2d)]
    if len(bns) > 1 and draw(st.booleans()):  # one BatchNorm object at two places
        a, b = draw(st.sampled_from([(i, j) for i in bns for j in bns if i < j]))
        layers[b] = layers[a]
    for i in draw(st.lists(st.integers(0, len(layers) - 1), max_size=2, unique=True)):
        m, kind = layers[i], draw(st.sampled_from(["forward", "pre", "param"]))
        if kind == "forward":
            m.register_forward_hook(lambda mod, args, out: out * 2)
        elif kind == "pre":
            m.register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
        elif getattr(m, "weight", None) is not None and not parametrize.is_parametrized(m):
            parametrize.register_parametrization(m, "weight", _Double())
    how = draw(st.sampled_from(["call", "iterate", "index", "slice", "reuse"]))
    n = len(layers)
    order = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n + 1)
                 .filter(lambda o: sum(isinstance(layers[i], nn.AvgPool2d) for i in o) <= 2))
    model = Generated(layers, how, order, draw(st.integers(0, n))).double()
    seed = draw(st.integers(0, 2**16))
    return model, seed


def _warm(model: nn.Module, seed: int) -> torch.Tensor:
    """Give the running statistics values (a few training steps) and return an eval input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, C, 8, 8, generator=g, dtype=F64) * 2 + 1)
    return torch.randn(4, C, 8, 8, generator=g, dtype=F64) * 2 + 1


def _slots(model: nn.Module) -> list[nn.Module]:
    return list(model.seq)


def _same_sharing(before: nn.Module, after: nn.Module) -> None:
    """Two slots hold one object after the tool exactly when they did before."""
    a, b = _slots(before), _slots(after)
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            if isinstance(a[i], bnlab.BatchNorm2d):
                assert (a[i] is a[j]) == (b[i] is b[j]), (i, j)


def _hooks(m: nn.Module) -> int:
    return len(m._forward_hooks) + len(m._forward_pre_hooks)


def _refused(tool, model: nn.Module):
    """The tool's result, or None when it refused with a one-line error naming why."""
    before = copy.deepcopy(model.state_dict())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tool(model)
    except (TypeError, ValueError) as e:
        assert "\n" not in str(e) and "parametrized" in str(e), str(e)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        return None


def check_every_tool(model: nn.Module, seed: int) -> None:
    x = _warm(model, seed)
    model.eval()
    ref_eval = model(x)

    # fuse: in eval, then one training step (outputs and the running statistics it leaves).
    fused = fuse(model)
    torch.testing.assert_close(fused(x), ref_eval, **TOL)
    _same_sharing(model, fused)
    twin = copy.deepcopy(model).train()
    fused.train()
    torch.testing.assert_close(fused(x), twin(x), **TOL)
    for (k, a), b in zip(twin.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=k)

    # fold, in eval.
    folded = _refused(lambda m: fold(m), model)
    assert folded is not None
    torch.testing.assert_close(folded(x), ref_eval, **TOL)

    # convert to torch and back (the state too); freeze.
    for tool in (lambda m: convert(m, to="torch"),
                 lambda m: convert(convert(m, to="torch"), to="bnlab"), freeze):
        out = _refused(tool, model)
        if out is None:
            continue
        if tool is not freeze:
            after = out.state_dict()
            assert list(after) == list(model.state_dict())
            for k, v in model.state_dict().items():
                assert torch.equal(after[k], v), k
        torch.testing.assert_close(out.eval()(x), ref_eval, **TOL)
        _same_sharing(model, out)
        assert [_hooks(m) for m in _slots(out)] == [_hooks(m) for m in _slots(model)]


SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=12, **SETTINGS)
@given(models())
def test_every_tool_keeps_the_function(case):
    check_every_tool(*case)


@pytest.mark.slow
@settings(max_examples=300, **SETTINGS)
@given(models())
def test_every_tool_keeps_the_function_many(case):
    check_every_tool(*case)
