r"""BatchNorm fused with the activation after it: a sigmoid (optionally then a 2x2 average pool)
or a ReLU.

The chapter's LeNet-BN runs ``conv -> BatchNorm -> sigmoid -> AvgPool2d(2)``, ResNet-18
``conv -> BatchNorm -> ReLU``. As separate layers each is a pass over the activation forward
and one backward, each writing a full tensor. ``batch_norm_act`` computes the same function in
one forward pass and two backward passes (the compiled kernels of ``bnlab.norm.kernels``, with
act=SIGMOID or RELU)::

    z   = gamma * x_hat + beta          BatchNorm (bnlab.norm.reference)
    s   = sigmoid(z) = 1 / (1 + exp(-z))   or   s = relu(z) = max(z, 0)
    out = s, or avg_pool_2x2(s)         pool = 1 or 2 (stride 2, no padding; sigmoid only)

Backward: with g = dL/d out, the gradient at z is::

    sigmoid:  dz = P^T g * s * (1 - s)  P^T spreads g / 4 over each 2x2 window (pool = 2)
    relu:     dz = g where z > 0, else 0  (torch's rule: a NaN z keeps its gradient)

and then BatchNorm's closed-form backward with dz in place of dL/dy. The kernel recomputes z
from x instead of storing s, so the only saved tensor is x (as for plain BatchNorm).

Where the kernels do not apply (half types, CUDA, odd sizes, BNLAB_FAST=0), the same function
runs as the composite bnlab batch_norm -> activation -> F.avg_pool2d, which is also the oracle
of the tests.

``fuse(model)`` rewrites every ``nn.Sequential`` run [bnlab BatchNorm, nn.Sigmoid,
(nn.AvgPool2d(2))] into one ``BatchNormSigmoid`` layer and [bnlab BatchNorm, nn.ReLU] into one
``BatchNormReLU``; each keeps the BatchNorm's parameters, buffers and state-dict keys (the
absorbed slots become ``nn.Identity``), so checkpoints load into the unfused model and back.
Neighbours in a container prove nothing about what ``forward`` does with them (it may index,
slice or iterate the Sequential): a run is fused only where the torch.fx dataflow proves it
(``bnlab.norm.dataflow``), and ``fuse_with_report`` says why each other run was left.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.norm import backends, kernels, reference
from bnlab.norm.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase
from bnlab.norm.checks import check_batch_norm_args, check_layer_at_use, check_tool_args
from bnlab.norm.dataflow import calls, hooked, module_uses, only_input, trace
from bnlab.norm.functional import batch_norm
from bnlab.norm.transaction import all_or_nothing

__all__ = ["ACTIVATIONS", "Activation", "BatchNormAct", "BatchNormReLU", "BatchNormSigmoid",
           "FuseReport", "batch_norm_act", "batch_norm_relu", "batch_norm_sigmoid", "fuse",
           "fuse_with_report"]


@dataclass(frozen=True)
class Activation:
    """An activation the kernels fuse: its name, the operators' `act` code, its function, and
    the module ``fuse`` absorbs."""

    name: str
    code: int
    fn: Callable[[Tensor], Tensor]
    module: type[nn.Module]


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", kernels.SIGMOID, torch.sigmoid, nn.Sigmoid),
    "relu": Activation("relu", kernels.RELU, torch.relu, nn.ReLU),
}


def _activation(name: str) -> Activation:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _composite(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
               eps: float, act: Activation, pool: int) -> Tensor:
    """The unfused composite: the definition, and the path where the kernels do not serve."""
    s = act.fn(batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    return F.avg_pool2d(s, 2) if pool == 2 else s


def composite_backward(
    act: Activation, grad_out: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
    mean: Tensor, invstd: Tensor, training: bool, eps: float, pool: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The fused layer's gradients under create_graph=True (registered with the kernels):
    differentiate the composite, its statistics recomputed from x in training and the saved
    constants in eval, so that the gradient has a graph of its own."""
    inputs = (x, weight, bias)
    if training:
        z = reference.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    else:
        z = reference.normalize(x, mean, invstd, weight, bias)
    out = F.avg_pool2d(act.fn(z), 2) if pool == 2 else act.fn(z)
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n and t is not None]
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    gx, gw, gb = (next(grads) if n and t is not None else None
                  for t, n in zip(inputs, needs, strict=True))
    return gx, gw, gb


for _act in ACTIVATIONS.values():
    kernels.register_double_backward(_act.code, functools.partial(composite_backward, _act))


def batch_norm_act(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5, *, act: str = "sigmoid", pool: int = 1,
) -> Tensor:
    """``act(batch_norm(...))``, average-pooled 2x2 when ``pool=2``, in one fused kernel.

    Same arguments and contract as ``bnlab.functional.batch_norm`` (running buffers updated in
    place when training), plus ``act`` ("sigmoid" or "relu") and ``pool``: 1 (none) or 2
    (``F.avg_pool2d(., 2)`` on a 4-D input; after a sigmoid only).
    """
    activation = _activation(act)
    if isinstance(pool, bool) or pool not in (1, 2):
        raise ValueError(f"pool must be 1 (no pooling) or 2 (2x2 average pooling), got {pool!r}")
    if pool == 2 and activation.code != kernels.SIGMOID:
        raise ValueError(f"pool=2 is fused after a sigmoid only, not after {act}; "
                         f"apply F.avg_pool2d to the output instead")
    if pool == 2 and input.dim() != 4:
        raise ValueError(f"pool=2 needs a 4-D (N, C, H, W) input, got {input.dim()}-D")
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum,
                          eps)
    momentum, eps = float(momentum), float(eps)
    # The kernels pool only even heights and widths; everything else runs as the composite.
    if backends.select(input) == "kernels" and (pool == 1 or (input.shape[2] % 2 == 0
                                                              and input.shape[3] % 2 == 0)):
        y = kernels.batch_norm(input, weight, bias, running_mean, running_var, training,
                               momentum, eps, activation.code, pool)
        if y is not None:
            return y
    return _composite(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      activation, pool)


def batch_norm_sigmoid(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5, *, pool: int = 1,
) -> Tensor:
    """``sigmoid(batch_norm(...))``, pooled 2x2 when ``pool=2``: ``batch_norm_act`` with
    ``act="sigmoid"``."""
    return batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, act="sigmoid", pool=pool)


def batch_norm_relu(
    input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5,
) -> Tensor:
    """``relu(batch_norm(...))``: ``batch_norm_act`` with ``act="relu"``."""
    return batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, act="relu")


class BatchNormAct(BatchNormBase):
    """A bnlab BatchNorm followed by an activation (and, after a sigmoid, a 2x2 average pooling
    when ``pool=2``): the base of the fused layers.

    Made by ``fuse`` from an existing layer, whose parameters, buffers, hyper-parameters and
    rank check it keeps; its state dict is the BatchNorm's.
    """

    activation: str  # a key of ACTIVATIONS, set by each subclass
    pool: int
    _rank_check: type[BatchNorm]

    @classmethod
    def absorb(cls, bn: BatchNorm, pool: int = 1) -> BatchNormAct:
        if cls.__dict__.get("activation") is None:
            raise TypeError(f"{cls.__name__} names no activation; absorb with BatchNormSigmoid "
                            f"or BatchNormReLU")
        if pool != 1 and cls.activation != "sigmoid":
            raise ValueError(f"pool={pool!r}: only a sigmoid is fused with pooling")
        fused = cls.__new__(cls)
        fused.__dict__.update(bn.__dict__)  # the same Parameter and buffer objects
        fused.pool = pool
        fused._rank_check = type(bn)
        return fused

    def _check_input_dim(self, input: Tensor) -> None:
        self._rank_check._check_input_dim(self, input)  # type: ignore[arg-type]

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        return batch_norm_act(input, running_mean, running_var, self.weight, self.bias,
                              use_batch_stats, momentum, self.eps, act=self.activation,
                              pool=self.pool)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", then {self.activation}"
                + (", avg_pool 2x2" if self.pool == 2 else ""))


class BatchNormSigmoid(BatchNormAct):
    """A bnlab BatchNorm followed by a sigmoid (and a 2x2 average pooling when ``pool=2``)."""

    activation = "sigmoid"


class BatchNormReLU(BatchNormAct):
    """A bnlab BatchNorm followed by a ReLU."""

    activation = "relu"


_PLAIN = (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)


def _is_pool_2x2(m: nn.Module) -> bool:
    if type(m) is not nn.AvgPool2d or hooked(m):
        return False
    k, s, p = m.kernel_size, m.stride, m.padding
    return (k in (2, (2, 2)) and s in (2, (2, 2)) and p in (0, (0, 0)) and not m.ceil_mode
            and m.divisor_override is None)


def _absorbable(act: nn.Module) -> type[BatchNormAct] | None:
    """The fused layer for a BatchNorm followed by `act`: exactly nn.Sigmoid or nn.ReLU (a
    subclass may compute something else), with no hooks."""
    if hooked(act):
        return None
    return {nn.Sigmoid: BatchNormSigmoid, nn.ReLU: BatchNormReLU}.get(type(act))


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
    kind: type[BatchNormAct]
    pool: int
    names: list[str]  # the qualified names of the BatchNorm, the activation (, the pool)


def _runs(model: nn.Module, report: FuseReport) -> list[_Run]:
    """The candidate runs: [plain bnlab BatchNorm, nn.Sigmoid/nn.ReLU (, nn.AvgPool2d(2))]
    neighbours in a plain nn.Sequential, no hooks, each module registered once."""
    names = {id(m): n for n, m in model.named_modules()}
    uses = module_uses(model)
    runs: list[_Run] = []
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        layers = list(seq)
        for i, layer in enumerate(layers[:-1]):
            kind = _absorbable(layers[i + 1])
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
                pool = (2 if kind is BatchNormSigmoid and i + 2 < len(layers)
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


def fuse_with_report(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module,
                                                                          FuseReport]:
    """``fuse``, also returning a ``FuseReport`` of what was fused and what was left, and why."""
    check_tool_args("fuse", model, inplace=inplace)
    model = model if inplace else copy.deepcopy(model)
    report = FuseReport()
    with all_or_nothing(model) as snapshot:
        runs = _runs(model, report)
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
            run.seq[run.index] = run.kind.absorb(run.seq[run.index], run.pool)
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


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fuse [BatchNorm, Sigmoid, (AvgPool2d(2))] and [BatchNorm, ReLU] runs inside every
    nn.Sequential of `model`, where the model's dataflow proves it the same function.

    Candidates are neighbours in a plain ``nn.Sequential``: a plain bnlab BatchNorm layer (not
    a variant, not guarded) then exactly ``nn.Sigmoid`` or ``nn.ReLU`` (and exactly
    ``nn.AvgPool2d(2)``), none of them with hooks or registered twice. A candidate is fused
    only when the torch.fx trace of ``forward`` shows the BatchNorm called once, its output
    going to the activation alone (and the activation's to the pool alone), and the fused
    model traces to the same graph; a model fx cannot trace is left unfused.
    ``fuse_with_report`` says what was left and why. Returns the fused model (a copy unless
    ``inplace``; in place, all or nothing: an error leaves the model as it was); the math is
    unchanged, the fused layers share the BatchNorm's Parameter and buffer objects, and the
    state-dict keys stay the same.
    """
    return fuse_with_report(model, inplace=inplace)[0]
