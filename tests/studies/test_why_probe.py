"""The why-higher-lr probe against its oracles.

* Double backward through bnlab's BatchNorm (reference and kernels, plain and fused with the
  sigmoid): ``torch.autograd.gradgradcheck`` in float64 (finite differences of the analytic
  gradient, the standard tolerances atol 1e-5 / rtol 1e-3 of a float64 check).
* The Hessian-vector product through bnlab's LeNet-BN equals the one through the same network
  with ``torch.nn.BatchNorm*`` (float64: both are exact to rounding, 1e-10 relative).
* Power iteration against the exact eigenvalues: of a known matrix (the largest in magnitude,
  and through the shift the largest), and the largest of a tiny network's Hessian
  (``torch.autograd.functional.hessian`` + ``eigvalsh``, float64); stopped at 1e-12 relative
  change, good to ~1e-7 relative.
* Weight norm, gradient norm and effective step by hand.
* The probe leaves parameters, gradients, buffers, mode and RNG as found; a probed run trains
  bit for bit like an unprobed one.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bnlab.models import build_model
from bnlab.norm import backends, kernels
from bnlab.norm.batchnorm import BatchNorm1d, BatchNorm2d
from bnlab.norm.fused import fuse
from bnlab.studies.probes.why import (
    WhyProbe,
    layers,
    power_iteration,
    top_eigenvalue,
    weight_stats,
)
from bnlab.train import TrainConfig, train

BACKENDS = ["reference"] + (["kernels"] if kernels.available() else [])


def _tiny(norm: bool) -> nn.Sequential:
    """Conv(1->2, 3x3) [-> BN] -> sigmoid -> linear(8 -> 3): 20 + 4 + 27 parameters."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), *([BatchNorm2d(2)] if norm else []), nn.Sigmoid(),
                         nn.Flatten(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_double_backward_through_bnlab_batchnorm(backend, fused):
    torch.manual_seed(0)
    model = nn.Sequential(BatchNorm2d(3), nn.Sigmoid(), nn.AvgPool2d(2)).double()
    if fused:
        model = fuse(model, inplace=True)
        assert type(model[0]).__name__ == "BatchNormSigmoid"
    norm = model[0]
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    buffers = {k: v.clone() for k, v in norm.named_buffers()}

    def f(x, w, b):
        return functional_call(model, {"0.weight": w, "0.bias": b,
                                       **{f"0.{k}": v.clone() for k, v in buffers.items()}},
                               (x,))

    with backends.forced(backend):
        assert torch.autograd.gradgradcheck(f, (x, w, b))
        bn1 = BatchNorm1d(3).double()
        z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda z: bn1(z), (z,))


def _hvp(model, x, y, v):
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(g, params, grad_outputs=v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hvp_through_lenet_bn_matches_torch_batchnorm(backend):
    torch.manual_seed(0)
    ref = build_model("lenet-bn", "bnlab").double()
    ours = fuse(copy.deepcopy(ref), inplace=True)
    theirs = build_model("lenet-bn", "torch").double()
    theirs.load_state_dict(ref.state_dict())
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(16) % 10
    v = [torch.randn_like(p) for p in theirs.parameters()]
    expected = _hvp(theirs, x, y, v)
    with backends.forced(backend):
        got = _hvp(ours, x, y, v)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_power_iteration_on_a_known_matrix():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    eig = torch.tensor([-1.0, 0.5, 2.0, 3.0, -4.0, 7.0], dtype=torch.float64)
    h = q @ torch.diag(eig) @ q.T
    lam, n, _ = power_iteration(lambda v: [h @ v[0]], [h[0]], iters=1000, tol=1e-14,
                             generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(7.0, rel=1e-10) and n < 1000
    # the largest *magnitude* wins, with its sign
    lam, *_ = power_iteration(lambda v: [-h @ v[0]], [h[0]], iters=1000, tol=1e-14,
                             generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(-7.0, rel=1e-10)
    # the largest (most positive) eigenvalue of -h is 4: found through the shift
    top, n, _ = top_eigenvalue(lambda v: [-h @ v[0]], [h[0]], iters=5000, tol=1e-15,
                               generator=torch.Generator().manual_seed(0))
    assert top == pytest.approx(4.0, rel=1e-8) and n > 1


@pytest.mark.parametrize("norm", [True, False])
def test_probe_sharpness_is_the_exact_top_eigenvalue(norm):
    model = _tiny(norm)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 3
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def loss(flat):
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, {**params, **{
            n: b.clone() for n, b in buffers.items()}}, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    top = float(eig.max())
    probe = WhyProbe(1, 0.5, iters=5000, tol=1e-12)
    lam, value, _ = probe.sharpness(model, x, y)
    assert lam == pytest.approx(top, rel=1e-7)
    assert value == pytest.approx(float(loss(flat)), rel=1e-12)
    out = probe(model, x, y)
    assert out["lr_sharpness"] == pytest.approx(0.5 * top, rel=1e-7)


def test_weight_norms_and_effective_steps_by_hand():
    model = _tiny(True)
    assert [(type(m).__name__, feeds) for m, feeds in layers(model)] == [
        ("Conv2d", True), ("Linear", False)]
    model(torch.randn(4, 1, 4, 4, dtype=torch.float64)).square().sum().backward()
    out = weight_stats(model, 0.3)
    for k, m in enumerate((model[0], model[4]), 1):
        w = m.weight.detach().flatten().tolist()
        g = m.weight.grad.flatten().tolist()
        norm = math.sqrt(sum(v * v for v in w))
        assert out[f"weight_norm.layer{k}"] == pytest.approx(norm, rel=1e-12)
        assert out[f"grad_norm.layer{k}"] == pytest.approx(math.sqrt(sum(v * v for v in g)),
                                                           rel=1e-12)
        assert out[f"eff_step.layer{k}"] == pytest.approx(0.3 / norm ** 2, rel=1e-12)
    assert (out["feeds_norm.layer1"], out["feeds_norm.layer2"]) == (1.0, 0.0)
    # fused LeNet-BN: the four layers before a BN, not the classifier
    lenet = fuse(build_model("lenet-bn", "bnlab"), inplace=True)
    assert [feeds for _, feeds in layers(lenet)] == [True, True, True, True, False]
    assert [feeds for _, feeds in layers(build_model("lenet-bn", "none"))] == [False] * 5


def test_probe_leaves_everything_as_found():
    model = fuse(build_model("lenet-bn", "bnlab"), inplace=True)
    x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    F.cross_entropy(model(x), y).backward()
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    model.eval()
    out = WhyProbe(1, 10.0, iters=3)(model, x, y)
    assert math.isfinite(out["sharpness"]) and out["power_iters"] >= 1
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_probed_run_trains_bit_for_bit_like_an_unprobed_one(tmp_path):
    cfg = TrainConfig(model="lenet-bn", norm="bnlab", lr=10.0, epochs=1, batch_size=64,
                      limit_train=256, limit_test=100, progress=False, threads=2)
    plain = train(cfg, tmp_path / "plain", log=lambda m: None)
    probed = train(cfg, tmp_path / "probed", log=lambda m: None,
                   probe=WhyProbe(1, 10.0, sharp_every=2, iters=3))
    assert [p["step"] for p in probed.probes] == [0, 1, 2, 3]
    assert "sharpness" in probed.probes[0] and "sharpness" not in probed.probes[1]
    def timeless(rows):
        return [{k: v for k, v in r.items() if "time" not in k and "per_sec" not in k}
                for r in rows]

    assert timeless(plain.metrics) == timeless(probed.metrics)
    a, b = plain.state_dict(), probed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
