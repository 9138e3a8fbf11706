"""BatchNorm fused with sigmoid (and 2x2 average pooling) or ReLU: bnlab.norm.fused.

Oracle: the unfused composite bnlab batch_norm -> torch.sigmoid / torch.relu -> F.avg_pool2d
(itself tested against torch). Tolerances: float64 <= 1e-12 relative to the largest value (the
same formulas in another order); sigmoid in float32 <= 2e-6 against the float64 computation
(the kernel's exp is within ~2 ulp; measured <= 3e-7). ReLU in float32 is held to the unfused
layers on the same kernels, bit for bit: the fused kernel computes z with the same arithmetic,
so the mask and every sum are the same (against float64 a z within rounding of 0 could flip).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlab.functional as BF
from bnlab.models import build_model
from bnlab.norm import BatchNorm2d, backends, kernels
from bnlab.norm.fold import fold
from bnlab.norm.fused import (
    BatchNormReLU,
    BatchNormSigmoid,
    batch_norm_act,
    batch_norm_relu,
    batch_norm_sigmoid,
    fuse,
)

CASES = {
    "pool-planes": ((16, 6, 8, 8), 2),
    "pool-odd-size": ((8, 3, 7, 6), 2),  # odd H: the composite path
    "planes": ((16, 6, 5, 5), 1),
    "rows": ((64, 20), 1),
    "rows-tail": ((67, 20), 1),  # 8 wide rows of 8 rows each, then 3 rows
    "rows-channels_last": ((8, 4, 6, 6), 1),
    "rows-channels_last-tail": ((3, 4, 6, 5), 1),  # 90 rows: 2 wide rows of 32, then 26
}


def _run(fn, x, w, b, training, pool, dtype):
    xs = x.detach().to(dtype).clone(memory_format=torch.preserve_format).requires_grad_()
    ws, bs = w.detach().to(dtype).requires_grad_(), b.detach().to(dtype).requires_grad_()
    c = x.shape[1]
    rm, rv = torch.linspace(-1, 1, c, dtype=dtype), torch.linspace(0.5, 2, c, dtype=dtype)
    y = fn(xs, rm, rv, ws, bs, training, 0.1, 1e-5, pool)
    g = torch.linspace(-1, 1, y.numel(), dtype=dtype).view(y.shape)
    y.backward(g)
    return [t.detach() for t in (y, xs.grad, ws.grad, bs.grad, rm, rv)]


def _composite(x, rm, rv, w, b, training, momentum, eps, pool):
    """The definition, on the readable reference: bnlab BatchNorm -> sigmoid -> avg pool."""
    with backends.forced("reference"):
        s = torch.sigmoid(BF.batch_norm(x, rm, rv, w, b, training, momentum, eps))
    return F.avg_pool2d(s, 2) if pool == 2 else s


def _fused(x, rm, rv, w, b, training, momentum, eps, pool):
    return batch_norm_sigmoid(x, rm, rv, w, b, training, momentum, eps, pool=pool)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _input(shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    if len(shape) == 4 and shape[2] == 6:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    return x, torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_matches_composite_in_float64(case, training, dtype):
    """Outputs, the three gradients and both running buffers against the float64 composite."""
    shape, pool = CASES[case]
    x, w, b = _input(shape)
    ours = _run(_fused, x, w, b, training, pool, dtype)
    truth = _run(_composite, x, w, b, training, pool, torch.float64)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    for a, t in zip(ours, truth, strict=True):
        assert a.shape == t.shape and a.dtype == dtype
        assert _rel(a, t) <= tolerance


def test_sigmoid_saturates_cleanly():
    """Large |z| (exp far out of range) gives 0 or 1 and zero gradient, never NaN or Inf."""
    x = torch.tensor([[-1e4, 1e4], [1e4, -1e4], [0.0, 0.0]]).requires_grad_()
    w = torch.tensor([1e3, 1e3])
    y = batch_norm_sigmoid(x, None, None, w, None, True)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert ((y < 1e-30) | (y > 1 - 1e-6) | ((y - 0.5).abs() < 1e-6)).all()


@pytest.mark.parametrize("act, pool", [("sigmoid", 2), ("relu", 1)])
def test_double_backward(act, pool):
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        assert torch.autograd.gradgradcheck(
            lambda x, w, b, t=training, rm=rm, rv=rv: batch_norm_act(
                x, rm, rv, w, b, t, 0.0, act=act, pool=pool),
            (x, w, b))


def test_bad_pool_is_named():
    with pytest.raises(ValueError, match="pool must be 1"):
        batch_norm_sigmoid(torch.randn(4, 3), None, None, training=True, pool=3)
    with pytest.raises(ValueError, match="pool=2 needs a 4-D"):
        batch_norm_sigmoid(torch.randn(4, 3), None, None, training=True, pool=2)


def test_fuse_lenet_bn_same_function_and_state():
    assert kernels.available(), kernels.status()
    model = build_model("lenet-bn", "bnlab")
    fused = fuse(model)
    kinds = [type(m).__name__ for m in fused]
    assert kinds.count("BatchNormSigmoid") == 4 and "Sigmoid" not in kinds
    assert "AvgPool2d" not in kinds
    assert [m.pool for m in fused if isinstance(m, BatchNormSigmoid)] == [2, 2, 1, 1]
    assert list(fused.state_dict()) == list(model.state_dict())  # same keys, same layout
    x = torch.rand(32, 1, 28, 28)
    for training in (True, False):
        model.train(training)
        fused.train(training)
        assert _rel(fused(x), model(x)) <= 1e-6
    # The running statistics advanced the same way; counters too.
    for (k, a), b in zip(model.state_dict().items(), fused.state_dict().values(), strict=True):
        assert _rel(a.double(), b.double()) <= 1e-6 if a.is_floating_point() else torch.equal(
            a, b), k
    # A fused model's checkpoint loads into the unfused model, and back.
    fresh = build_model("lenet-bn", "bnlab")
    fresh.load_state_dict(fused.state_dict())
    fuse(fresh, inplace=True).load_state_dict(model.state_dict())


def test_fuse_leaves_other_layers_alone():
    guarded = nn.Sequential(BatchNorm2d(3, guard=True), nn.Sigmoid())
    torch_bn = nn.Sequential(nn.BatchNorm2d(3), nn.Sigmoid())
    torch_relu = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    other_act = nn.Sequential(BatchNorm2d(3), nn.Tanh())
    maxpool = nn.Sequential(BatchNorm2d(3), nn.Sigmoid(), nn.MaxPool2d(2))
    for seq in (guarded, torch_bn, torch_relu, other_act):
        assert [type(m) for m in fuse(seq)] == [type(m) for m in seq]
    assert [type(m).__name__ for m in fuse(maxpool)] == ["BatchNormSigmoid", "Identity",
                                                          "MaxPool2d"]
    with pytest.raises(ValueError, match="expected 4D input"):  # BatchNorm2d's rank check kept
        fuse(nn.Sequential(BatchNorm2d(3), nn.Sigmoid()))(torch.randn(4, 3))


def test_fold_does_not_fold_a_fused_layer():
    model = fuse(nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm2d(3), nn.Sigmoid())).eval()
    folded = fold(model)
    assert isinstance(folded[1], BatchNormSigmoid)
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(folded(x), model(x))
    assert torch.allclose(model(x), torch.sigmoid(F.batch_norm(
        model[0](x), model[1].running_mean, model[1].running_var, model[1].weight,
        model[1].bias, False)), atol=1e-6)


def test_convert_refuses_a_fused_model():
    """A fused layer carries its sigmoid: swapping it for torch's BatchNorm would drop it."""
    import bnlab

    with pytest.raises(TypeError, match="BatchNormSigmoid at '1' has no torch counterpart"):
        bnlab.convert(fuse(build_model("lenet-bn", "bnlab")), to="torch")


# ---- ReLU ----------------------------------------------------------------------------------

RELU_CASES = {k: v[0] for k, v in CASES.items() if v[1] == 1}


def _relu_composite(x, rm, rv, w, b, training, momentum, eps, pool):
    return torch.relu(BF.batch_norm(x, rm, rv, w, b, training, momentum, eps))


def _relu_fused(x, rm, rv, w, b, training, momentum, eps, pool):
    return batch_norm_relu(x, rm, rv, w, b, training, momentum, eps)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", RELU_CASES)
def test_relu_matches_composite(case, training):
    """float64 against the reference composite; float32 against the unfused layers on the same
    kernels, bit for bit (outputs, three gradients, running buffers)."""
    assert kernels.available(), kernels.status()
    x, w, b = _input(RELU_CASES[case])
    ours = _run(_relu_fused, x, w, b, training, 1, torch.float64)
    with backends.forced("reference"):
        truth = _run(_relu_composite, x, w, b, training, 1, torch.float64)
    assert (ours[0] == 0).any() and (ours[0] > 0).any()  # both sides of the ReLU are exercised
    for a, t in zip(ours, truth, strict=True):
        assert a.shape == t.shape and _rel(a, t) <= 1e-12
    ours = _run(_relu_fused, x, w, b, training, 1, torch.float32)
    unfused = _run(_relu_composite, x, w, b, training, 1, torch.float32)
    for a, t in zip(ours, unfused, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, t)


def test_relu_nan_and_zero_follow_torch():
    """relu(NaN) is NaN and keeps its gradient; z == 0 exactly gets no gradient (torch's
    threshold_backward), on the kernels as in the composite."""
    x = torch.tensor([[1.0, 2.0], [-1.0, float("nan")], [0.0, 0.0]], requires_grad=True)
    b = torch.tensor([0.0, 0.0])
    fused = batch_norm_relu(x, None, None, None, b, True)
    ref = torch.relu(BF.batch_norm(x, None, None, None, b, True))
    assert torch.equal(fused.isnan(), ref.isnan()) and fused[:, 1].isnan().all()
    fused.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    ref.sum().backward()
    assert torch.equal(gx.isnan(), x.grad.isnan())
    assert torch.allclose(gx[:, 0], x.grad[:, 0], atol=1e-7)


def test_bad_act_is_named():
    with pytest.raises(ValueError, match="act must be one of sigmoid, relu"):
        batch_norm_act(torch.randn(4, 3), None, None, training=True, act="tanh")
    with pytest.raises(ValueError, match="pool=2 is fused after a sigmoid only"):
        batch_norm_act(torch.randn(4, 3, 4, 4), None, None, training=True, act="relu", pool=2)


def test_fuse_resnet18_same_function_and_state():
    """Every [BatchNorm, ReLU] of ResNet-18 (the stem and each block's first) becomes one
    BatchNormReLU: the same outputs and gradients bit for bit, the same state-dict keys."""
    assert kernels.available(), kernels.status()
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", "bnlab")
    fused = fuse(model)
    assert sum(isinstance(m, BatchNormReLU) for m in fused.modules()) == 9
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xs = x.contiguous(memory_format=fmt)
        model.train()
        fused.train()
        y, yf = model(xs), fused(xs)
        assert torch.equal(y, yf)
        y.sum().backward()
        yf.sum().backward()
        for (k, p), q in zip(model.named_parameters(), fused.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad), k
            p.grad = q.grad = None
        model.eval()
        fused.eval()
        assert torch.equal(model(xs), fused(xs))
    for (k, a), b in zip(model.state_dict().items(), fused.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_convert_refuses_a_fused_relu_layer():
    import bnlab

    with pytest.raises(TypeError, match="BatchNormReLU at '0' has no torch counterpart"):
        bnlab.convert(fuse(nn.Sequential(BatchNorm2d(3), nn.ReLU())), to="torch")


def test_meta_tensors_refuse_what_the_kernel_refuses():
    """Traced without data (meta tensors: the fake implementations), a bad act or pool is
    refused as the CPU kernel refuses it."""
    assert kernels.available(), kernels.status()
    x = torch.empty(4, 3, 4, 4, device="meta")
    for act, pool in ((7, 1), (kernels.RELU, 2)):
        for device_x in (x, torch.zeros(4, 3, 4, 4)):
            with pytest.raises((ValueError, RuntimeError), match="act"):
                torch.ops.bnlab.batch_norm(device_x, None, None, None, None, True, 0.1, 1e-5,
                                           act, pool)
    y = torch.ops.bnlab.batch_norm(x, None, None, None, None, True, 0.1, 1e-5, kernels.RELU, 1)
    assert y.shape == x.shape and y.device.type == "meta"


class _ClampReLU(nn.ReLU):
    """A subclass that computes something else: not a ReLU to fuse."""

    def forward(self, x):
        return torch.clamp(x, 0, 1)


class _Residual(nn.Sequential):
    """A Sequential subclass whose forward uses the BatchNorm's output twice."""

    def forward(self, x):
        h = self[0](x)
        return self[1](h) + h


def test_fuse_only_what_cannot_be_told_apart():
    """Exact nn.ReLU / nn.Sigmoid / nn.AvgPool2d, a plain nn.Sequential, no hooks: anything else
    is left as it is (a subclass may compute something else, a hook would lose its module or
    see another tensor)."""
    kept = [nn.Sequential(BatchNorm2d(3), _ClampReLU()),
            nn.Sequential(BatchNorm2d(3), type("MySigmoid", (nn.Sigmoid,), {})()),
            _Residual(BatchNorm2d(3), nn.ReLU())]
    hooked_act = nn.Sequential(BatchNorm2d(3), nn.ReLU())
    hooked_act[1].register_forward_hook(lambda m, i, o: None)
    hooked_bn = nn.Sequential(BatchNorm2d(3), nn.ReLU())
    hooked_bn[0].register_forward_pre_hook(lambda m, i: None)
    kept += [hooked_act, hooked_bn]
    for seq in kept:
        assert [type(m) for m in fuse(seq)] == [type(m) for m in seq]
    hooked_pool = nn.Sequential(BatchNorm2d(3), nn.Sigmoid(), nn.AvgPool2d(2))
    hooked_pool[2].register_forward_hook(lambda m, i, o: None)
    fused = fuse(hooked_pool)
    assert isinstance(fused[0], BatchNormSigmoid) and fused[0].pool == 1
    assert type(fused[2]) is nn.AvgPool2d
    x = torch.randn(4, 3, 4, 4)
    for seq in kept[:3]:
        assert torch.equal(fuse(seq)(x), seq(x))


def test_absorb_needs_an_activation():
    from bnlab.norm.fused import BatchNormAct

    with pytest.raises(TypeError, match="names no activation"):
        BatchNormAct.absorb(BatchNorm2d(3))
    with pytest.raises(ValueError, match="only a sigmoid is fused with pooling"):
        BatchNormReLU.absorb(BatchNorm2d(3), 2)
