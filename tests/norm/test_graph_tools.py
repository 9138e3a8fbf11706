"""The model tools read what forward really does (issue 26, class 2), each case against the
model itself before the tool:

* fuse rewrites a run only where the torch.fx dataflow proves it, else leaves it and says why
  (indexed, sliced, reused, shared, untraceable, type-dependent forward);
* convert/freeze swap a shared BatchNorm everywhere, keeping it shared, and carry its hooks;
  a parametrized BatchNorm is refused;
* fold leaves Linear -> BatchNorm1d on 3-D input, hooked or parametrized layers (new and
  old-style weight_norm, spectral_norm);
* a scripted model is refused by every tool with one line.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import bnlab
from bnlab.norm.convert import convert, freeze, unfreeze
from bnlab.norm.fold import fold, fold_pair, fold_with_report
from bnlab.norm.fused import BatchNormReLU, BatchNormSigmoid, fuse, fuse_with_report
from bnlab.norm.precise import precise_bn
from bnlab.norm.variants import FrozenBatchNorm2d

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.5


def _warm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        model.train()(x * 2 + 1)
    return model.eval()


class Indexed(nn.Module):
    """seq[0] and seq[1] called on the input separately; seq[2:] as a slice."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(bnlab.BatchNorm2d(3), nn.Sigmoid(),
                                 bnlab.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        return self.seq[0](x) + self.seq[1](x) + self.seq[2:](x)


class Gated(nn.Module):
    """Control flow on a tensor value: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(bnlab.BatchNorm2d(3), nn.Sigmoid())

    def forward(self, x):
        return self.seq(x) if x.sum() > 0 else x


class TypeDependent(nn.Module):
    """Looks at its layers' types: the fused model would take another path."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(bnlab.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        for m in self.seq:
            x = m(x) * 2 if isinstance(m, nn.Identity) else m(x)
        return x


@pytest.mark.parametrize("training", [False, True])
def test_fuse_follows_the_dataflow_not_the_container(training):
    model = _warm(Indexed().double(), _x(4, 3, 4, 4))
    fused, report = fuse_with_report(model)
    assert report.fused == ["seq.2"] and type(fused.seq[2]) is BatchNormReLU
    assert "does not go to 'seq.1' alone" in report.left["seq.0"]
    assert type(fused.seq[0]) is bnlab.BatchNorm2d and type(fused.seq[1]) is nn.Sigmoid
    model.train(training), fused.train(training)
    torch.testing.assert_close(fused(_x(4, 3, 4, 4)), model(_x(4, 3, 4, 4)), **TOL)


@pytest.mark.parametrize("make,why", [
    (Gated, "cannot be traced with torch.fx"),
    (TypeDependent, "another path once the layers are fused"),
    (lambda: nn.Sequential(*[bn := bnlab.BatchNorm2d(3), nn.ReLU(), bn, nn.ReLU()]),
     "registered at more than one place"),
], ids=["untraceable", "type-dependent", "shared"])
def test_fuse_leaves_what_it_cannot_prove_and_says_why(make, why):
    model = _warm(make().double(), _x(4, 3, 4, 4))
    fused, report = fuse_with_report(model)
    assert report.fused == [] and why in next(iter(report.left.values()))
    assert [type(m) for m in fused.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(fused(_x(4, 3, 4, 4)), model(_x(4, 3, 4, 4)))


def test_fuse_untraceable_report_names_the_trace_error():
    report = fuse_with_report(Gated())[1]
    assert not report.traced and (report.trace_error or "").startswith("TraceError")


def test_fuse_in_place_keeps_the_parameter_and_buffer_objects():
    """The trainer fuses a structural copy and keeps training the same tensors."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3), bnlab.BatchNorm2d(3), nn.Sigmoid(),
                          nn.AvgPool2d(2))
    tensors = [*model.parameters(), *model.buffers()]
    assert fuse(model, inplace=True) is model and type(model[1]) is BatchNormSigmoid
    assert model[1].pool == 2
    assert all(a is b for a, b in zip(tensors, [*model.parameters(), *model.buffers()],
                                      strict=True))


# --- convert / freeze: shared layers and hooks ---

class TwoParents(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        bn = nn.BatchNorm2d(3)
        self.a = nn.Sequential(bn, nn.ReLU(), bn)  # twice in one parent
        self.b = nn.Sequential(nn.Conv2d(3, 3, 1), bn)  # and in another

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("tool,cls", [(freeze, FrozenBatchNorm2d),
                                      (lambda m: convert(m, to="bnlab"), bnlab.BatchNorm2d)],
                         ids=["freeze", "convert"])
def test_a_shared_batchnorm_is_swapped_everywhere_and_stays_shared(tool, cls):
    model = _warm(TwoParents().double(), _x(4, 3, 4, 4))
    out = tool(model)
    assert type(out.a[0]) is cls and out.a[0] is out.a[2] is out.b[1]
    torch.testing.assert_close(out.eval()(_x(4, 3, 4, 4)), model(_x(4, 3, 4, 4)), **TOL)


def test_convert_and_freeze_carry_every_hook_over():
    bn = nn.BatchNorm2d(3).double()
    calls: list[str] = []
    bn.register_forward_pre_hook(lambda m, args: (args[0] * 3,))
    bn.register_forward_hook(lambda m, args, out: out + 1)
    handle = bn.register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    model = _warm(nn.Sequential(bn), _x(4, 3, 2, 2))
    for out in (convert(model, to="bnlab"), freeze(model),
                unfreeze(freeze(model)).eval(), convert(convert(model), to="torch")):
        x = _x(4, 3, 2, 2).requires_grad_()
        torch.testing.assert_close(out(x), model(x), **TOL)
        calls.clear()
        out(x).sum().backward()
        assert calls == ["backward"]
    inplace = convert(model, to="bnlab", inplace=True)
    handle.remove()  # the user's handle still removes the hook from the new layer
    assert not inplace[0]._backward_hooks


def test_convert_refuses_a_parametrized_batchnorm_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    parametrize.register_parametrization(model[1], "weight", nn.Identity())
    before = copy.deepcopy(model.state_dict())
    for tool in (freeze, lambda m: convert(m, to="bnlab", inplace=True)):
        with pytest.raises(TypeError, match=r"'1' is parametrized \(weight\).*remove_param"):
            tool(model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("wrap", [lambda bn: _old_weight_norm(bn),
                                  lambda bn: nn.utils.spectral_norm(bn, dim=0)],
                         ids=["weight_norm", "spectral_norm"])
def test_convert_refuses_old_style_weight_and_spectral_norm_in_one_line(wrap):
    model = nn.Sequential(wrap(nn.BatchNorm1d(3)))
    for tool in (freeze, lambda m: convert(m, to="bnlab")):
        with pytest.raises(TypeError, match=r"^convert\(to='\w+'\): the BatchNorm at '0' uses "
                                            r"the old-style .*remove_weight_norm[^\n]*$"):
            tool(model)


# --- fold ---

def test_fold_leaves_linear_batchnorm1d_on_3d_input():
    """(N, L, C) with L == C: BatchNorm1d normalizes dim 1, the Linear's channels are the last
    dim; the pair runs, and folding it would compute another function."""
    model = _warm(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).double(), _x(5, 4, 4))
    x = _x(5, 4, 4)
    folded, report = fold_with_report(model, example_input=x)
    assert report.folded == [] and "gets 3-D input" in report.left["1"]
    torch.testing.assert_close(folded(x), model(x), **TOL)
    assert "pass example_input" in fold_with_report(model)[1].left["1"]  # nothing proves 2-D
    flat = _warm(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4)).double(),
                 _x(5, 4))
    assert fold_with_report(flat)[1].folded == [("1", "2")]  # flatten(1) proves it


def _old_weight_norm(conv: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(conv)


def _hooked(m: nn.Module) -> nn.Module:
    m.register_forward_hook(lambda mod, args, out: out * 2)
    return m


@pytest.mark.parametrize("conv,bn,why", [
    (lambda: _hooked(nn.Conv2d(2, 3, 3)), lambda: nn.BatchNorm2d(3), "Conv2d has hooks"),
    (lambda: nn.Conv2d(2, 3, 3), lambda: _hooked(nn.BatchNorm2d(3)), "BatchNorm has hooks"),
    (lambda: nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 3)),
     lambda: nn.BatchNorm2d(3), "is parametrized (weight"),
    (lambda: nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 3, 3)),
     lambda: nn.BatchNorm2d(3), "is parametrized (weight"),
    (lambda: _old_weight_norm(nn.Conv2d(2, 3, 3)), lambda: nn.BatchNorm2d(3), "has hooks"),
], ids=["hooked-conv", "hooked-bn", "weight_norm", "spectral_norm", "old-style-weight_norm"])
def test_fold_leaves_hooked_and_parametrized_layers(conv, bn, why):
    model = _warm(nn.Sequential(conv(), bn()).double(), _x(4, 2, 5, 5))
    x = _x(4, 2, 5, 5)
    with torch.no_grad():  # old-style weight_norm then holds a plain tensor as weight
        ref = model(x)
    folded, report = fold_with_report(model)
    assert report.folded == [] and why in report.left["1"]
    torch.testing.assert_close(folded(x), ref, **TOL)
    with pytest.raises(ValueError, match="fold_pair: cannot fold: the"):
        fold_pair(model[0], model[1])


# --- scripted models ---

def _tools(x: torch.Tensor):
    return {"fold": lambda m: fold(m.eval()), "convert": convert, "freeze": freeze,
            "unfreeze": unfreeze, "fuse": fuse, "precise_bn": lambda m: precise_bn(m, [x], 4)}


@pytest.mark.parametrize("tool", sorted(_tools(torch.zeros(1))))
def test_every_tool_refuses_a_scripted_model_in_one_line(tool):
    x = _x(4, 3, 4, 4)
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    with pytest.raises(ValueError, match=f"^{tool} cannot change a scripted model: it is a "
                                         f"torch.jit.ScriptModule; apply {tool} to the nn.Mod"):
        _tools(x)[tool](scripted)
    if tool != "fuse":  # a scripted part: its layers would be skipped silently
        with pytest.raises(ValueError, match=r"its submodule '1' is a torch\.jit\.ScriptModule"):
            _tools(x)[tool](nn.Sequential(nn.ReLU(), scripted))
