"""bnlab layers where PyTorch users put them: a small model zoo through PyTorch's tools.

Each model (LeNet-BN plain and fused, the small CNN, a ResNet-style network with BatchNorm
inside residual blocks, all with bnlab layers) goes through jit.trace, torch.export,
torch.compile(fullgraph=True) with the aot_eager and inductor backends, torch.func and
swa_utils.update_bn, in training and in eval, and must equal eager mode on new inputs: outputs,
parameter gradients, running statistics and batch counters.

Tolerances (float64 throughout, so that rounding differences show as ~1e-15, not as float32's
1e-7): traced and exported programs call the same operators in the same order as eager, so
they agree to 1e-12 relative; compiled programs may fuse and reorder the surrounding
elementwise and pooling arithmetic (inductor), so they are held to 1e-10 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

import bnlab
from bnlab.models import build_model
from bnlab.norm import backends, kernels
from bnlab.norm.convert import convert
from bnlab.norm.fused import fuse
from bnlab.norm.variants import (
    BatchRenorm,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    PerActivationBatchNorm,
    SyncBatchNorm,
)


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus a shortcut (conv 1x1-BN when it must
    change shape), then ReLU: BatchNorm on both branches of a residual sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = bnlab.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = bnlab.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          bnlab.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False), bnlab.BatchNorm2d(8), nn.ReLU(),
        Block(8, 8, 1), Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5), bnlab.BatchNorm1d(5))


ZOO = {
    "lenet-bn": (lambda: build_model("lenet-bn", "bnlab"), (6, 1, 28, 28)),
    "lenet-bn-fused": (lambda: fuse(build_model("lenet-bn", "bnlab")), (6, 1, 28, 28)),
    "cnn": (lambda: build_model("cnn", "bnlab"), (6, 1, 28, 28)),
    "resnet": (resnet, (6, 3, 12, 12)),
}
MODES = {"train": True, "eval": False}


def _model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model in float64 with non-trivial statistics, and two inputs (trace, then check)."""
    make, shape = ZOO[name]
    torch.manual_seed(0)
    model = make().double()
    with torch.no_grad():  # move the running statistics away from (0, 1)
        model.train()(torch.randn(shape, dtype=torch.float64) * 2 + 1)
    return model, torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)


def _step(model: nn.Module, x: torch.Tensor, training: bool | None) -> dict[str, torch.Tensor]:
    """One forward (+ backward): output, parameter gradients and the state afterwards
    (``training=None``: the model keeps its mode, as an exported program must)."""
    if training is not None:
        model.train(training)
    for p in model.parameters():
        p.grad = None
    y = model(x)
    y.square().sum().backward()
    out = {"y": y.detach()}
    out.update({f"grad:{n}": p.grad for n, p in model.named_parameters()})
    out.update({f"state:{k}": v.detach().clone() for k, v in model.state_dict().items()})
    return out


def _assert_same(got: dict, want: dict, rtol: float) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert g is not None and g.shape == w.shape, key
        scale = w.double().abs().max().clamp_min(1.0)
        err = float((g.double() - w.double()).abs().max() / scale)
        assert err <= rtol, f"{key}: {err:.2e}"


def _uses_bnlab_operator(code: str) -> bool:
    return "bnlab.batch_norm" in code or "bnlab::batch_norm" in code


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ZOO)
def test_jit_trace(name, mode):
    model, x, x2 = _model(name)
    eager = copy.deepcopy(model)
    traced = torch.jit.trace(copy.deepcopy(model).train(MODES[mode]), x, check_trace=False)
    assert _uses_bnlab_operator(str(traced.inlined_graph))
    traced.load_state_dict(model.state_dict())  # undo the tracing call's own update
    _assert_same(_step(traced, x2, MODES[mode]), _step(eager, x2, MODES[mode]), 1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ZOO)
def test_torch_export(name, mode):
    model, x, x2 = _model(name)
    eager = copy.deepcopy(model)
    exported = torch.export.export(copy.deepcopy(model).train(MODES[mode]), (x,))
    assert _uses_bnlab_operator(exported.graph_module.code)
    program = exported.module()
    program.load_state_dict(model.state_dict())
    # (an exported program keeps the mode it was exported in)
    _assert_same(_step(program, x2, None), _step(eager, x2, MODES[mode]), 1e-12)


# inductor compiles C++ for every graph (about 10 s each here): the two models that cover the
# plain and the fused operator; aot_eager (the same graphs, run by eager kernels) covers all.
COMPILED = [(name, "aot_eager") for name in ZOO] + [("lenet-bn-fused", "inductor"),
                                                      ("resnet", "inductor")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "backend"), COMPILED)
def test_torch_compile_fullgraph(name, backend, mode):
    torch._dynamo.reset()
    model, _, x2 = _model(name)
    eager = copy.deepcopy(model)
    compiled = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True)
    got = _step(compiled, x2, MODES[mode])
    _assert_same({k.replace("_orig_mod.", ""): v for k, v in got.items()},
                 _step(eager, x2, MODES[mode]), 1e-10)


def test_compiled_graph_calls_the_kernels_operator():
    """fullgraph=True already rules out graph breaks; here: the kernels are in the graph."""
    torch._dynamo.reset()
    graphs: list[str] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward

    model, x, _ = _model("resnet")
    torch.compile(model, backend=capture, fullgraph=True)(x)
    assert len(graphs) == 1 and graphs[0].count("bnlab.batch_norm") == 7


def _torch_twin(model: nn.Module) -> nn.Module:
    return convert(model, to="torch")


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_functional_call(name):
    model, x, _ = _model(name)
    twin = _torch_twin(model)
    for training in (True, False):
        got = torch.func.functional_call(model.train(training), dict(model.state_dict()), (x,))
        want = torch.func.functional_call(twin.train(training), dict(twin.state_dict()), (x,))
        assert (got - want).abs().max() <= 1e-12


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_func_grad_and_vmap_where_torch_has_them(name):
    """torch.func.grad of a loss over the parameters (eval: no in-place buffer update, as
    torch requires), and vmap over a batch of models' inputs in eval and, with the running
    statistics removed (replace_all_batch_norm_modules_), in training."""
    model, x, _ = _model(name)
    twin = _torch_twin(model)
    results = []
    for m in (model, twin):
        params = dict(m.named_parameters())
        buffers = dict(m.named_buffers())
        m.eval()
        grads = torch.func.grad(
            lambda p, m=m, b=buffers: torch.func.functional_call(m, {**p, **b}, (x,)).sum())(
                params)
        batched = x.unsqueeze(0).expand(3, *x.shape) * torch.tensor([1.0, 2.0, -1.0],
                                                                     dtype=x.dtype).view(3, 1,
                                                                                         1, 1, 1)
        vmapped_eval = torch.func.vmap(m)(batched)
        m_free = torch.func.replace_all_batch_norm_modules_(copy.deepcopy(m).train())
        vmapped_train = torch.func.vmap(m_free)(batched)
        results.append((grads, vmapped_eval, vmapped_train))
    (g1, e1, t1), (g2, e2, t2) = results
    assert g1.keys() == g2.keys()
    assert all((g1[k] - g2[k]).abs().max() <= 1e-10 for k in g1)
    assert (e1 - e2).abs().max() <= 1e-12
    assert (t1 - t2).abs().max() <= 1e-10


def test_func_transforms_fail_where_torch_fails_and_change_nothing():
    """In training with running statistics both libraries refuse vmap (the buffers would be
    updated per example) and grad/jacrev (the update would write tensors captured from outside
    the transform); bnlab with torch's own messages and with every parameter and buffer as it
    was (ATen's kernel writes the buffers before torch refuses: bnlab gives it copies; torch's
    own layer advances num_batches_tracked before refusing, and without that counter it writes
    its running statistics before refusing)."""
    model, x, _ = _model("cnn")
    for m in (model, _torch_twin(model)):
        m.train()
        state = copy.deepcopy(m.state_dict())
        with pytest.raises(RuntimeError, match="running_mean or running_var"):
            torch.func.vmap(m)(x.unsqueeze(0).expand(2, *x.shape))
        with pytest.raises(RuntimeError, match="in-place operation"):
            torch.func.jacrev(m)(x[:2])
        params = dict(m.named_parameters())
        with pytest.raises(RuntimeError, match="in-place operation"):
            torch.func.grad(lambda p, m=m: torch.func.functional_call(m, p, (x,)).sum())(params)
        changed = [k for k, v in m.state_dict().items() if not torch.equal(v, state[k])]
        assert not changed or not isinstance(m[1], bnlab.BatchNorm2d), changed
    assert isinstance(model[1], bnlab.BatchNorm2d)


@pytest.mark.parametrize("mode", MODES)
def test_functionalize(mode):
    """torch.func.functionalize: bnlab's layers run there as torch's do (on ATen: a
    functionalized program cannot call an operator that writes its arguments)."""
    model, x, _ = _model("resnet")
    eager = copy.deepcopy(model).train(MODES[mode])
    functional = copy.deepcopy(model).train(MODES[mode])
    y = torch.func.functionalize(functional)(x)
    assert (y - eager(x)).abs().max() <= 1e-12
    for k, v in eager.state_dict().items():
        assert (functional.state_dict()[k].double() - v.double()).abs().max() <= 1e-12, k


@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_jit_trace_on_every_backend(backend):
    """A traced training step folds each batch into the running statistics once, whichever
    backend ran while tracing (the reference's update once sat inside its autograd node,
    which the tracer records and replays, besides recording the update itself)."""
    model, x, x2 = _model("resnet")
    eager = copy.deepcopy(model)
    with backends.forced(backend):
        traced = torch.jit.trace(copy.deepcopy(model).train(), x, check_trace=False)
        traced.load_state_dict(model.state_dict())
        _assert_same(_step(traced, x2, True), _step(eager, x2, True), 1e-12)


@pytest.mark.parametrize("name", ["lenet-bn", "cnn", "resnet"])
def test_swa_update_bn_sees_bnlab_layers(name):
    """Every bnlab BatchNorm re-estimated, to the statistics torch's layers get."""
    model, x, _ = _model(name)
    twin = _torch_twin(model)
    loader = [torch.randn(x.shape, dtype=x.dtype) * 3 - 1 for _ in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update_bn(loader, model)
    changed = [k for k, v in model.state_dict().items()
               if k.endswith("running_mean") and not torch.equal(v, before[k])]
    assert len(changed) == len([m for m in model.modules() if isinstance(m, bnlab.BatchNorm)])
    assert changed
    update_bn(loader, twin)
    for k, v in twin.state_dict().items():
        assert (model.state_dict()[k].double() - v.double()).abs().max() <= 1e-12, k


def test_fused_layers_are_not_torch_batchnorms():
    """A fused layer is BatchNorm -> sigmoid (-> pool): a tool that replaces torch BatchNorms
    (convert_sync_batchnorm, hence Lightning's sync_batchnorm) would drop the rest, so it does
    not claim torch's class, and those tools leave it as it is; bnlab's precise_bn, which
    knows it, re-estimates its statistics."""
    from bnlab.norm.precise import precise_bn

    model, x, _ = _model("lenet-bn-fused")
    state = copy.deepcopy(model.state_dict())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert [type(m) for m in synced.modules()] == [type(m) for m in model.modules()]
    update_bn([x], model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    precise_bn(model, [x * 3], x.shape[0])
    assert not torch.equal(model.state_dict()["1.running_mean"], state["1.running_mean"])


def test_convert_sync_batchnorm_takes_bnlab_layers_and_keeps_their_state():
    model, x, _ = _model("resnet")
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    bns = [m for m in model.modules() if isinstance(m, bnlab.BatchNorm)]
    assert len([m for m in synced.modules() if isinstance(m, nn.SyncBatchNorm)]) == len(bns) == 7
    assert synced.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(synced.state_dict()[k], v)
    synced.eval(), model.eval()
    assert (synced(x) - model(x)).abs().max() <= 1e-12


def test_batchnorm_identity_only_where_the_function_is_batchnorm():
    """BatchNorm layers and the variants that compute BatchNorm claim torch's class; layers
    whose function is another (per-sample norms) or that a BatchNorm tool must not reset or
    replace (frozen: update_bn would zero its statistics; fused: a SyncBatchNorm would drop
    its sigmoid; per-activation: a per-channel replacement would change its axes) do not."""
    claims = [bnlab.BatchNorm(3), bnlab.BatchNorm1d(3), bnlab.BatchNorm2d(3),
              bnlab.BatchNorm3d(3), bnlab.BatchNorm2d(3, guard=True), GhostBatchNorm(3),
              BatchRenorm(3), SyncBatchNorm(3)]
    assert all(isinstance(m, _BatchNorm) for m in claims)
    others = [FrozenBatchNorm2d(3), LayerNorm(3), GroupNorm(3, 1), InstanceNorm(3),
              PerActivationBatchNorm(3, (2,)), fuse(nn.Sequential(bnlab.BatchNorm2d(3),
                                                                  nn.Sigmoid()))[0]]
    assert not any(isinstance(m, _BatchNorm) for m in others)
    # State dicts unchanged in both directions.
    for layer in claims[:4]:
        twin = nn.BatchNorm2d(3)
        twin.load_state_dict(layer.state_dict())
        layer.load_state_dict(twin.state_dict())
        assert list(layer.state_dict()) == list(twin.state_dict())


def test_tools_leave_frozen_layers_alone():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), FrozenBatchNorm2d(3), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    state = copy.deepcopy(model.state_dict())
    update_bn([torch.randn(4, 1, 6, 6) for _ in range(2)], model)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced[1], FrozenBatchNorm2d)
    assert all(torch.equal(v, state[k]) for k, v in synced.state_dict().items())


def test_every_backend_agrees_on_the_zoo():
    """The rule's three backends, each forced, on a whole model step: same everything."""
    results = {}
    for backend in backends.BACKENDS:
        model, _, x2 = _model("resnet")
        with backends.forced(backend):
            results[backend] = _step(model, x2, True)
    _assert_same(results["kernels"], results["reference"], 1e-12)
    _assert_same(results["aten"], results["reference"], 1e-12)
    assert kernels.loaded()
