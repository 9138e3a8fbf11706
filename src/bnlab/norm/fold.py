r"""Fold each BatchNorm into the convolution or linear layer before it, for inference.

In eval mode BatchNorm is the per-channel affine map y = a * z + b with
a = gamma / sqrt(running_var + eps) and b = beta - a * running_mean. After z = W x + c::

    y = (a * W) x + (a * c + b)

so the pair becomes one layer with weight a * W (scaled per output channel) and bias a * c + b.

Which pairs: "before it" means in the model's real dataflow, found by tracing ``forward`` with
``torch.fx`` (BatchNorm, conv and linear layers are leaves of the trace). A Conv1d/2d/3d or
Linear whose output feeds exactly one BatchNorm (bnlab's, torch's or frozen), and nothing
else, is folded wherever it sits: in an ``nn.Sequential``, a residual block, a loop over an
``nn.ModuleList``. The BatchNorm becomes ``nn.Identity``; the model keeps its classes and
``forward``. Every BatchNorm left unfolded is reported with the reason (its input is a ReLU,
the conv's output also feeds a skip connection, no running statistics, ...). A model that
cannot be traced (control flow on tensor values) falls back to neighbours inside
``nn.Sequential`` containers, and the report says so.

All or nothing: every folded layer is computed before the model is touched, inside
``all_or_nothing``; what tracing ran of the model's own ``forward`` is undone too.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from bnlab.norm.base import is_batch_norm
from bnlab.norm.checks import check_limit, check_tool_args
from bnlab.norm.dataflow import trace, why_touched
from bnlab.norm.transaction import all_or_nothing

__all__ = ["FoldReport", "fold", "fold_pair", "fold_with_report"]

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class FoldReport:
    """What ``fold_with_report`` did: the (layer, BatchNorm) pairs folded, by module name; the
    BatchNorm layers left, each with why; whether the dataflow was traced (else only
    ``nn.Sequential`` neighbours were considered, and `trace_error` says why)."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    traced: bool = True
    trace_error: str | None = None


def fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of `layer` computing bn(layer(x)) with bn's eval-mode transform."""
    if not isinstance(layer, FOLDABLE):
        raise TypeError(f"fold_pair: cannot fold into {type(layer).__name__}; foldable layers "
                        f"are {', '.join(c.__name__ for c in FOLDABLE)}")
    if not is_batch_norm(bn):
        raise TypeError(f"fold_pair: {type(bn).__name__} is not a BatchNorm layer")
    why = why_touched(layer, type(layer).__name__) or why_touched(bn, "BatchNorm")
    if why is not None:
        raise ValueError(f"fold_pair: cannot fold: {why}; remove them first")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics "
                         f"(track_running_stats=False normalizes with batch statistics)")
    # eps may have been set after construction: a NaN or negative one would fold into NaNs.
    check_limit(f"cannot fold {type(bn).__name__}", "eps", bn.eps, minimum=0.0)
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    mean = bn.running_mean
    assert isinstance(mean, torch.Tensor)  # (tracked: checked above)
    if mean.dim() != 1 or mean.numel() != channels:
        raise ValueError(f"cannot fold {type(bn).__name__}: its statistics are not one per "
                         f"output channel of the {type(layer).__name__} before it")
    out = copy.deepcopy(layer)
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        a = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            a = a * bn.weight.double()
        b = -a * mean
        if bn.bias is not None:
            b = b + bn.bias.double()
        w = out.weight.double()
        out.weight.copy_((w * a.view(-1, *([1] * (w.dim() - 1)))).to(out.weight.dtype))
        c = out.bias.double() if out.bias is not None else torch.zeros_like(a)
        new_bias = (a * c + b).to(out.weight.dtype)
        if out.bias is None:
            out.bias = nn.Parameter(new_bias)
        else:
            out.bias.copy_(new_bias)
    return out


# Layers that keep the rank of their input (a Linear's input rank is its output's).
_SAME_RANK_MODULES = (nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU,
                      nn.LeakyReLU, nn.Dropout, nn.Identity, nn.Softplus, nn.Hardtanh)
_SAME_RANK_FUNCTIONS = {torch.relu, torch.sigmoid, torch.tanh, F.relu, F.gelu, F.silu,
                        F.dropout, F.leaky_relu}
_SAME_RANK_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "float", "double"}


def _flattens_to_2d(node: fx.Node, modules: dict[str, nn.Module]) -> bool | None:
    """True when `node` surely makes a 2-D tensor; None when it keeps its input's rank (follow
    its input); False when nothing is known."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if type(m) is nn.Flatten:
            return m.start_dim == 1 and m.end_dim == -1
        return None if isinstance(m, _SAME_RANK_MODULES) or is_batch_norm(m) else False
    if node.op == "call_function" and node.target is torch.flatten:
        return tuple(node.args[1:]) == (1,) and not node.kwargs
    if node.op == "call_function":
        return None if node.target in _SAME_RANK_FUNCTIONS else False
    if node.op == "call_method" and node.target == "flatten":
        return tuple(node.args[1:]) == (1,) and not node.kwargs
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return len(sizes) == 2
    return None if node.op == "call_method" and node.target in _SAME_RANK_METHODS else False


def _input_is_2d(linear: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the graph proves the Linear's input (so its output) 2-D: a flatten(1) or a
    view/reshape to two sizes, then only layers that keep the rank."""
    node = linear.args[0] if linear.args else None
    while isinstance(node, fx.Node) and node.args:  # a chain back through the graph
        verdict = _flattens_to_2d(node, modules)
        if verdict is not None:
            return verdict
        node = node.args[0]
    return False


def _after_flatten(before: list[nn.Module]) -> bool:
    """Whether the Sequential layers `before` a Linear end in a flatten(1) then only layers
    that keep the rank (the fallback's proof of a 2-D input)."""
    for m in reversed(before):
        if type(m) is nn.Flatten:
            return m.start_dim == 1 and m.end_dim == -1
        if not (isinstance(m, _SAME_RANK_MODULES) or is_batch_norm(m)):
            return False
    return False


def _linear_ranks(model: nn.Module, example_input: Any) -> dict[int, set[int]]:
    """The ranks each Linear's input had in one eval forward pass of `example_input`."""
    ranks: dict[int, set[int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: ranks.setdefault(id(mod), set()).add(args[0].dim()))
        for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return ranks


_RANK_UNPROVEN = ("a Linear -> BatchNorm pair is the same function only on 2-D input, and "
                  "nothing proves this Linear's input 2-D; pass example_input to fold it")


def _why_not(bn_node: fx.Node, modules: dict[str, nn.Module], calls: Counter[str],
             ranks: dict[int, set[int]] | None) -> str | None:
    """Why this BatchNorm call cannot be folded into its input's layer; None if it can."""
    bn = modules[str(bn_node.target)]
    if calls[str(bn_node.target)] > 1:
        return f"called {calls[str(bn_node.target)]} times in forward (a shared layer)"
    if len(bn_node.args) != 1 or bn_node.kwargs:
        return "called with more than its input"
    src = bn_node.args[0]
    if not isinstance(src, fx.Node) or src.op != "call_module":
        what = src.target if isinstance(src, fx.Node) else src
        name = getattr(what, "__name__", what)
        return f"its input comes from {name!r}, not from a conv or linear layer"
    layer = modules[str(src.target)]
    if not isinstance(layer, FOLDABLE):
        return f"its input comes from {src.target!r} ({type(layer).__name__}), not from a " \
               f"conv or linear layer"
    if calls[str(src.target)] > 1:
        return f"{src.target!r} is called {calls[str(src.target)]} times in forward"
    if len(src.users) != 1:
        others = sorted(str(u.target) for u in src.users if u is not bn_node)
        return f"the output of {src.target!r} also feeds {others} (folding would change it)"
    if len(src.args) != 1 or src.kwargs:
        return f"{src.target!r} is called with more than its input"
    why = _why_not_pair(layer, bn)
    if why is None and isinstance(layer, nn.Linear):
        return _why_not_linear(layer, ranks, lambda: _input_is_2d(src, modules))
    return why


def _why_not_linear(layer: nn.Module, ranks: dict[int, set[int]] | None,
                    proven: Callable[[], bool]) -> str | None:
    """A Linear acts on the last dim, a BatchNorm on dim 1: the same only for 2-D input."""
    if ranks is None:
        return None if proven() else _RANK_UNPROVEN
    seen = ranks.get(id(layer), set())
    if seen == {2}:
        return None
    if not seen:
        return "example_input did not reach the Linear before it, so its input rank is unknown"
    return (f"the Linear before it gets {'/'.join(map(str, sorted(seen)))}-D input: a Linear "
            f"scales the last dim, a BatchNorm dim 1, so folding would change the function")


def _why_not_pair(layer: nn.Module, bn: nn.Module) -> str | None:
    why = why_touched(layer, type(layer).__name__) or why_touched(bn, "BatchNorm")
    if why is not None:
        return why
    if getattr(bn, "activation", None) is not None:
        return f"fused with the {bn.activation} after it (bnlab.norm.fused)"
    if bn.running_mean is None:
        return "no running statistics (track_running_stats=False)"
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    mean = bn.running_mean
    assert isinstance(mean, torch.Tensor)  # (tracked: checked above)
    if mean.dim() != 1 or mean.numel() != channels:
        return "its statistics are not one per output channel of the layer before it"
    return None


def _plan_traced(model: nn.Module, graph: fx.Graph, ranks: dict[int, set[int]] | None
                 ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    pairs: list[tuple[str, str]] = []
    left: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "call_module" and is_batch_norm(modules[str(node.target)]):
            why = _why_not(node, modules, calls, ranks)
            if why is None:
                pairs.append((str(node.args[0].target), str(node.target)))
            else:
                left[str(node.target)] = why
    return pairs, left


def _plan_sequential(model: nn.Module, ranks: dict[int, set[int]] | None
                     ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The fallback: neighbours inside nn.Sequential, where the order is the dataflow."""
    pairs: list[tuple[str, str]] = []
    left: dict[str, str] = {}
    names = {id(m): n for n, m in model.named_modules()}
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        layers = list(parent)
        for i, (layer, bn) in enumerate(itertools.pairwise(layers)):
            if not (isinstance(layer, FOLDABLE) and is_batch_norm(bn)):
                continue
            why = ("a shared layer" if uses[id(layer)] > 1 or uses[id(bn)] > 1
                   else _why_not_pair(layer, bn))
            if why is None and isinstance(layer, nn.Linear):
                before = layers[:i]
                why = _why_not_linear(layer, ranks, lambda: _after_flatten(before))  # noqa: B023
            if why is None:
                pairs.append((names[id(layer)], names[id(bn)]))
            else:
                left[names[id(bn)]] = why
    return pairs, left


def _plan(model: nn.Module, ranks: dict[int, set[int]] | None) -> FoldReport:
    if is_batch_norm(model) or isinstance(model, FOLDABLE):
        return FoldReport(left={"": "a single layer: nothing to fold into"}
                          if is_batch_norm(model) else {})
    report = FoldReport()
    graph, report.trace_error = trace(model)
    if graph is None:
        report.traced = False
        report.folded, report.left = _plan_sequential(model, ranks)
    else:
        report.folded, report.left = _plan_traced(model, graph, ranks)
    done = {bn for _, bn in report.folded}
    for name, m in model.named_modules():
        if is_batch_norm(m) and name not in done and name not in report.left:
            report.left[name] = ("not right after a conv or linear layer in an nn.Sequential"
                                 if not report.traced else "not called by forward")
    return report


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` is a child (under every name it is registered as)."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new


def fold_with_report(model: nn.Module, *, inplace: bool = False,
                     example_input: Any = None) -> tuple[nn.Module, FoldReport]:
    """``fold``, also returning a ``FoldReport`` of what was folded and what was left, and why."""
    check_tool_args("fold", model, inplace=inplace)
    if model.training or any(m.training for m in model.modules() if is_batch_norm(m)):
        raise RuntimeError("fold needs eval mode: folding bakes the running statistics into the "
                           "weights, which is only the same function in eval; call "
                           "model.eval() first")
    model = model if inplace else copy.deepcopy(model)
    with all_or_nothing(model) as snapshot:
        ranks = None if example_input is None else _linear_ranks(model, example_input)
        report = _plan(model, ranks)
        snapshot.restore()  # tracing ran the model's own forward code: undo what it did
        modules = dict(model.named_modules())
        folded = [(modules[a], modules[b], fold_pair(modules[a], modules[b]))
                  for a, b in report.folded]  # may raise: nothing is replaced yet
        for layer, bn, new in folded:
            _replace(model, layer, new)
            _replace(model, bn, nn.Identity())
    return model, report


def fold(model: nn.Module, *, inplace: bool = False, example_input: Any = None) -> nn.Module:
    """Return `model` (eval mode required) with every (conv|linear -> BatchNorm) pair folded.

    A Linear -> BatchNorm pair is the same function only when the Linear's input is 2-D: it
    is folded when the traced graph shows a ``flatten(1)`` (or a view/reshape to two sizes)
    before it, or when `example_input` (one batch: a tensor or a tuple of forward's arguments;
    one eval forward pass measures every Linear's input rank) shows only 2-D input. Layers
    with hooks or parametrizations (weight_norm, spectral_norm) are left as they are.
    Warns once, naming each BatchNorm left unfolded and why (``fold_with_report`` returns the
    same account instead).
    """
    model, report = fold_with_report(model, inplace=inplace, example_input=example_input)
    if report.left or not report.traced:
        how = "" if report.traced else (
            f"the model could not be traced with torch.fx ({report.trace_error}), so only "
            f"conv/linear -> BatchNorm neighbours inside nn.Sequential were folded; ")
        left = "; ".join(f"{name or '<model>'!r}: {why}" for name, why in report.left.items())
        warnings.warn(f"fold: {how}{len(report.left)} BatchNorm layer(s) left unfolded"
                      f"{': ' + left if left else ''}", RuntimeWarning, stacklevel=2)
    return model
