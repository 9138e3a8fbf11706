"""The why-higher-lr probe against its oracles.

* Double backward through bnlab's BatchNorm (reference and kernels, plain and fused with the
  sigmoid): ``torch.autograd.gradgradcheck`` in float64 (finite differences of the analytic
  gradient, the standard tolerances atol 1e-5 / rtol 1e-3 of a float64 check).
* The Hessian-vector product through bnlab's LeNet-BN equals the one through the same network
  with ``torch.nn.BatchNorm*`` (float64: both are exact to rounding, 1e-10 relative).
* Lanczos against ``torch.linalg.eigvalsh`` (float64): on explicit symmetric matrices (the
  spectra where power iteration stalled, lambda_max ~ |lambda_min|; all negative; PSD), over
  200 random starts each, a converged estimate is never below lambda_max (1 - tol) nor above
  it (interlacing; 1e-12 for rounding), and on any spectrum a converged estimate carries its
  certificate (an eigenvalue within the residual bound); a budget too small is flagged
  unconverged. The largest eigenvalue of a tiny network's Hessian
  (``torch.autograd.functional.hessian`` + ``eigvalsh``, float64) to 1e-9 relative: stopped
  at residual 1e-10 |theta|, an eigenvalue lies within 1e-10 relative (the bound), and the
  float64 products add ~1e-14; 1e-9 leaves room for the Hessian's own rounding.
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
    lanczos,
    layers,
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


def _matrix(eigs):
    """Q diag(eigs) Q' with a random orthogonal Q (float64)."""
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _runs(h, *, iters, tol, starts=200):
    return [lanczos(lambda v: [h @ v[0]], [h[0]], iters=iters, tol=tol,
                    generator=torch.Generator().manual_seed(seed)) for seed in range(starts)]


SPECTRA = {
    "+-3": [3.0, -3.0] + [0.1] * 18,  # power iteration stalled between 3 and -3 here
    "3, -2.95": [3.0, -2.95] + [0.1] * 18,
    "all negative": [-1.0, -2.0] + [-3.0 - 0.1 * i for i in range(18)],
    "psd": [5.0, 1.0] + [0.05 * i for i in range(18)],
}


@pytest.mark.parametrize("name", SPECTRA)
def test_lanczos_never_reports_a_converged_value_below_lambda_max(name):
    h = _matrix(SPECTRA[name])
    top = float(torch.linalg.eigvalsh(h)[-1])
    tol = 1e-2
    runs = _runs(h, iters=12, tol=tol)
    converged = [r for r in runs if r.converged]
    assert len(converged) >= 20  # the check below is not vacuous
    for r in converged:
        # interlacing: theta <= lambda_max (1e-12: rounding of the float64 products)
        assert top - tol * abs(top) <= r.value <= top + 1e-12 * abs(top)
        assert r.residual <= tol * abs(r.value) and 1 <= r.products <= 12
    for r in runs:  # an unconverged one is flagged, never better than a lower bound
        assert r.converged or r.products == 12
        assert r.value <= top + 1e-12 * abs(top)


def test_lanczos_certificate_on_a_clustered_top():
    """Top eigenvalues 3 and 2.9 (within a few tol): the residual bound certifies *an*
    eigenvalue within it, which from a start poorly aligned with the top eigenvector can be
    2.9 (module docstring): the certificate itself always holds."""
    h = _matrix([3.0, 2.9] + [0.1] * 18)
    eig = torch.linalg.eigvalsh(h)
    for r in _runs(h, iters=12, tol=1e-2):
        assert r.converged
        assert float((eig - r.value).abs().min()) <= r.residual + 1e-12
        assert r.value <= float(eig[-1]) + 1e-12
        y = r.vector[0]  # the Ritz vector: unit, and ||H y - theta y|| is the residual bound
        assert float(y.norm()) == pytest.approx(1.0, rel=1e-12)
        assert float((h @ y - r.value * y).norm()) == pytest.approx(r.residual, abs=1e-12)


def test_lanczos_flags_a_budget_too_small():
    h = _matrix([float(i) for i in range(20)])  # evenly spaced: slow to converge
    runs = _runs(h, iters=2, tol=1e-6, starts=20)
    assert all(not r.converged and r.products == 2 for r in runs)
    assert all(r.residual > 1e-6 * abs(r.value) for r in runs)
    top = float(torch.linalg.eigvalsh(h)[-1])
    assert all(r.value < top for r in runs)  # a lower bound only


def test_lanczos_exact_cases_and_bad_input():
    zero = torch.zeros(5, 5, dtype=torch.float64)  # H = 0: theta 0, an invariant subspace
    r = lanczos(lambda v: [zero @ v[0]], [zero[0]], iters=5, tol=1e-2,
                generator=torch.Generator().manual_seed(0))
    assert (r.value, r.products, r.converged) == (0.0, 1, True)
    h = _matrix([2.0, -7.0, 0.5, 1.0])  # dimension 4: exact by 4 products at the latest
    r = lanczos(lambda v: [h @ v[0]], [h[0]], iters=50, tol=1e-14,
                generator=torch.Generator().manual_seed(0))
    assert r.converged and r.products <= 4 and r.value == pytest.approx(2.0, rel=1e-12)
    # a warm start on the top eigenvector: one product (H q = theta q: an invariant subspace)
    r = lanczos(lambda v: [h @ v[0]], [h[0]], iters=50, tol=1e-10,
                generator=torch.Generator().manual_seed(0), start=r.vector)
    assert r.converged and r.products == 1 and r.value == pytest.approx(2.0, rel=1e-12)
    nan = lanczos(lambda v: [v[0] * math.nan], [h[0]], iters=5, tol=1e-2,
                  generator=torch.Generator().manual_seed(0))
    assert math.isnan(nan.value) and not nan.converged and nan.products == 1
    with pytest.raises(ValueError, match="iters >= 1 and tol > 0"):
        lanczos(lambda v: v, [h[0]], iters=0, tol=1e-2, generator=torch.Generator())
    with pytest.raises(ValueError, match="iters >= 1 and tol > 0"):
        WhyProbe(1, 0.1, tol=0.0)


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
    probe = WhyProbe(1, 0.5, iters=len(flat), tol=1e-10)
    ritz, value = probe.sharpness(model, x, y)
    assert ritz.converged and ritz.value == pytest.approx(top, rel=1e-9)
    assert value == pytest.approx(float(loss(flat)), rel=1e-12)
    out = probe(model, x, y)  # warm-started from the first probe's Ritz vector
    assert out["lr_sharpness"] == pytest.approx(0.5 * top, rel=1e-9)
    assert out["sharpness_converged"] == 1.0 and 1 <= out["hvp_products"] <= len(flat)
    assert out["sharpness_residual"] <= 1e-10 * abs(top) * (1 + 1e-9)


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
    assert math.isfinite(out["sharpness"]) and 1 <= out["hvp_products"] <= 3
    assert out["sharpness_converged"] in (0.0, 1.0) and out["max_iters"] == 3.0
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


def test_a_warm_start_on_a_moved_top_direction_still_finds_the_top():
    """A warm start exactly on what is now the *second* eigenvector (the top direction moved
    between probes) has no weight on the top one: Lanczos from it alone certifies the second
    eigenvalue. The probe blends a fresh random vector into its warm start (module
    docstring), so every start finds the top. (With a start that has weight on the top, a
    certificate met at the second eigenvalue needs the two within a few tol of each other:
    an error of at most their gap, tested above.)"""
    eigs = [3.0, 1.5] + [0.1] * 18  # a wide gap: certifying the second is a 50% error
    h = _matrix(eigs)
    second = torch.linalg.eigh(h).eigenvectors[:, -2]
    alone = lanczos(lambda v: [h @ v[0]], [h[0]], iters=12, tol=1e-2,
                    generator=torch.Generator().manual_seed(0), start=[second])
    assert alone.converged and alone.value == pytest.approx(1.5, rel=1e-9)  # the hazard
    for seed in range(50):
        probe = WhyProbe(1, 0.1, iters=12, tol=1e-2, seed=seed)
        probe.start = [second * 5.0]  # any norm: the probe's start is unit plus unit
        start = probe._start([h[0]])
        assert start is not None
        r = lanczos(lambda v: [h @ v[0]], [h[0]], iters=12, tol=1e-2,
                    generator=probe.generator, start=start)
        assert r.converged and 3.0 * (1 - 1e-2) <= r.value <= 3.0 * (1 + 1e-12), (seed, r)
