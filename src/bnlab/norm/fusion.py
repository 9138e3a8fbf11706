"""How ``fuse`` (``bnlab.norm.fused``) finds the [BatchNorm, Sigmoid, (AvgPool2d(2))] and
[BatchNorm, ReLU] runs of a model it may turn into fused layers: only where that is provably
the same model. The fused layer classes are passed in (this module does not import them).

Every ``nn.Sequential`` run [bnlab BatchNorm, nn.Sigmoid, (nn.AvgPool2d(2))] becomes one
``BatchNormSigmoid`` layer and [bnlab BatchNorm, nn.ReLU] one ``BatchNormReLU``; each keeps the
BatchNorm's parameter and buffer objects and state-dict keys (the absorbed slots become
``nn.Identity``), so checkpoints load into the unfused model and back, and a trainer holding
the tensors keeps training them.

Neighbours in a container prove nothing about what ``forward`` does with them: it may index,
slice or iterate the Sequential, call a layer twice or read an output twice. So a run is fused
only where the torch.fx dataflow proves it (``bnlab.norm.dataflow``): the BatchNorm called
once, its output going to the activation alone (and the activation's to the pool alone), and
the fused model tracing to the same graph (a forward that looks at its layers' types would
take another path). A model fx cannot trace is left unfused. ``fuse_with_report`` says why
each run was left; ``fuse`` is an optimization and says nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

import torch.fx as fx
from torch import nn

from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.checks import check_layer_at_use, check_tool_args
from bnlab.norm.dataflow import calls, hooked, module_uses, only_input, trace
from bnlab.norm.transaction import all_or_nothing

__all__ = ["FuseReport", "FusedKind", "fuse_runs"]


class FusedKind(Protocol):
    """A fused layer class: its activation's name, and how it absorbs a BatchNorm."""

    activation: str

    @classmethod
    def absorb(cls, bn: BatchNorm, pool: int = 1) -> nn.Module: ...

_PLAIN = (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)


def _is_pool_2x2(m: nn.Module) -> bool:
    if type(m) is not nn.AvgPool2d or hooked(m):
        return False
    k, s, p = m.kernel_size, m.stride, m.padding
    return (k in (2, (2, 2)) and s in (2, (2, 2)) and p in (0, (0, 0)) and not m.ceil_mode
            and m.divisor_override is None)


def _absorbable(act: nn.Module, kinds: dict[type[nn.Module], type[FusedKind]]
                ) -> type[FusedKind] | None:
    """The fused layer for a BatchNorm followed by `act`: exactly a key of `kinds` (a subclass
    may compute something else), with no hooks."""
    if hooked(act):
        return None
    return kinds.get(type(act))


@dataclass
class FuseReport:
    """What ``fuse_with_report`` did: the BatchNorm layers fused (by module name, with their
    activation), and those followed by a fusable activation in an ``nn.Sequential`` but left,
    each with why; `trace_error` says why the model could not be traced (then nothing is
    fused)."""

    fused: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    traced: bool = True
    trace_error: str | None = None


@dataclass
class _Run:
    seq: nn.Sequential
    index: int
    kind: type[FusedKind]
    pool: int
    names: list[str]  # the qualified names of the BatchNorm, the activation (, the pool)


def _runs(model: nn.Module, report: FuseReport,
          kinds: dict[type[nn.Module], type[FusedKind]]) -> list[_Run]:
    """The candidate runs: [plain bnlab BatchNorm, nn.Sigmoid/nn.ReLU (, nn.AvgPool2d(2))]
    neighbours in a plain nn.Sequential, no hooks, each module registered once."""
    names = {id(m): n for n, m in model.named_modules()}
    uses = module_uses(model)
    runs: list[_Run] = []
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        layers = list(seq)
        for i, layer in enumerate(layers[:-1]):
            kind = _absorbable(layers[i + 1], kinds)
            if type(layer) not in _PLAIN or kind is None:
                continue
            name = names[id(layer)]
            if layer.guard:
                report.left[name] = "a guarded layer (its skipped-batch counter is not fused)"
            elif hooked(layer):
                report.left[name] = "the BatchNorm has hooks (they would see another tensor)"
            elif uses[id(layer)] > 1 or uses[id(layers[i + 1])] > 1:
                report.left[name] = "the BatchNorm or its activation is registered at more " \
                                    "than one place (a shared module)"
            else:
                pool = (2 if kind.activation == "sigmoid" and i + 2 < len(layers)
                        and _is_pool_2x2(layers[i + 2]) and uses[id(layers[i + 2])] == 1 else 1)
                runs.append(_Run(seq, i, kind, pool,
                                 [names[id(m)] for m in layers[i:i + 1 + pool]]))
    return runs


def _proven(run: _Run, graph: fx.Graph) -> str | None:
    """Why the graph does not prove that forward runs act(bn(x)) (then the pool) and nothing
    else reads the BatchNorm's output; trims the pool from `run` if only it is not proven.
    None when proven."""
    count = calls(graph)
    nodes = {str(n.target): n for n in graph.nodes if n.op == "call_module"}
    bn_name, act_name = run.names[:2]
    for name in run.names[:2]:
        if count[name] != 1:
            return (f"{name!r} is called {count[name]} times in forward, not once (an "
                    f"nn.Sequential indexed, sliced or a layer reused)")
    bn, act = nodes[bn_name], nodes[act_name]
    if len(bn.args) != 1 or bn.kwargs:
        return "the BatchNorm is called with more than its input"
    if list(bn.users) != [act] or not only_input(act, bn):
        return (f"in forward the output of {bn_name!r} does not go to {act_name!r} alone (an "
                f"nn.Sequential indexed, sliced or iterated out of order, or the output "
                f"used twice)")
    if run.pool == 2:
        pool = nodes.get(run.names[2])
        if (count[run.names[2]] != 1 or pool is None or list(act.users) != [pool]
                or not only_input(pool, act)):
            run.pool, run.names = 1, run.names[:2]
    return None


def _graph_code(graph: fx.Graph) -> str:
    return graph.python_code("self").src


def fuse_runs(model: nn.Module, kinds: dict[type[nn.Module], type[FusedKind]], *,
              inplace: bool = False) -> tuple[nn.Module, FuseReport]:
    """``fuse_with_report`` with the fused layer class for each activation class in `kinds`."""
    check_tool_args("fuse", model, inplace=inplace)
    model = model if inplace else copy.deepcopy(model)
    report = FuseReport()
    with all_or_nothing(model) as snapshot:
        runs = _runs(model, report, kinds)
        if not runs:
            return model, report
        graph, report.trace_error = trace(model)
        snapshot.restore()  # tracing ran the model's own forward code: undo what it did
        if graph is None:
            report.traced = False
            for run in runs:
                report.left[run.names[0]] = "the model cannot be traced with torch.fx, so " \
                                            "its dataflow is unknown"
            return model, report
        proven = []
        for run in runs:
            why = _proven(run, graph)
            if why is None:
                proven.append(run)
            else:
                report.left[run.names[0]] = why
        for run in proven:
            check_layer_at_use(run.seq[run.index], False)  # eps/momentum set after construction
        for run in proven:
            bn = run.seq[run.index]
            assert isinstance(bn, BatchNorm)  # _runs chose a plain bnlab BatchNorm
            run.seq[run.index] = run.kind.absorb(bn, run.pool)
            for j in range(run.index + 1, run.index + 1 + run.pool):
                run.seq[j] = nn.Identity()
        # The fused model must call the same slots in the same dataflow: a forward that
        # branches on its layers' types would take another path now.
        with all_or_nothing(model) as fused_state:
            after, _ = trace(model)
            fused_state.restore()
        if proven and (after is None or _graph_code(after) != _graph_code(graph)):
            snapshot.restore()
            for run in proven:
                report.left[run.names[0]] = "forward takes another path once the layers are " \
                                            "fused (it looks at their types)"
            proven = []
        report.fused = [run.names[0] for run in proven]
    return model, report
