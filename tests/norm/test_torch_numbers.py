"""Numbers as torch's where the values are extreme: inf and NaN inputs, float32 values whose
squared deviations overflow, eps = 0 with a zero variance, and sigmoid(-inf) in the fused tail.

The oracle is torch itself (``F.batch_norm`` followed by ``torch.sigmoid`` / ``torch.relu`` /
``F.avg_pool2d``), run on the same inputs. Each case is checked on every backend that computes
the call itself (the reference and the kernels; ATen is the oracle). Where torch gives inf or
NaN the backends must give it at the same places (``assert_close`` compares non-finite values
exactly); finite values agree to float rounding: float32 1e-5 relative (the kernels' exp is
within about 1 ulp of torch's, products of a few roundings), float64 1e-12.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import bnlab.functional as BF
from bnlab.norm import backends, kernels
from bnlab.norm.fused import batch_norm_act

BACKENDS = ("reference", "kernels")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def setup_module() -> None:
    assert kernels.available(), kernels.status()  # the kernels' cases would test nothing


def _torch_act(x, rm, rv, w, b, training, eps, act, pool):
    z = F.batch_norm(x, rm, rv, w, b, training, 0.1, eps)
    if act is None:
        return z
    s = torch.sigmoid(z) if act == "sigmoid" else torch.relu(z)
    return F.avg_pool2d(s, 2) if pool == 2 else s


def _ours(backend, x, rm, rv, w, b, training, eps, act, pool):
    with backends.forced(backend):
        if act is None:
            return BF.batch_norm(x, rm, rv, w, b, training, 0.1, eps)
        return batch_norm_act(x, rm, rv, w, b, training, 0.1, eps, act=act, pool=pool)


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "rows":
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return x


def _poison(x):
    """x with +inf, -inf and NaN at a few places of two channels."""
    x = x.clone()
    x[0, 0, 0, 0], x[1, 0, 1, 1], x[0, 1, 2, 3] = float("inf"), float("-inf"), float("nan")
    return x


# (act, pool, layout): every combination but pooling of a 2-D input
EPILOGUES = [(act, pool, layout) for act, pool in ((None, 1), ("sigmoid", 1), ("sigmoid", 2),
                                                  ("relu", 1))
             for layout in ("planes", "channels_last", "rows") if (pool, layout) != (2, "rows")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act,pool,layout", EPILOGUES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_input_gradients_of_inf_and_nan_inputs_are_torchs(backend, act, pool, layout,
                                                               dtype):
    """Eval mode: dL/dx = dz * gamma * inv_std does not depend on x, so an inf or NaN input gets
    a finite gradient from torch (except where the activation's own gradient is NaN); the
    kernels once computed (x - mean) * 0 into it: NaN."""
    x = _layout(_poison(torch.randn(2, 3, 4, 4, dtype=dtype)), layout)
    rm, rv = torch.randn(3, dtype=dtype), torch.rand(3, dtype=dtype) + 0.5
    w, b = torch.randn(3, dtype=dtype), torch.randn(3, dtype=dtype)
    grads, outs = [], []
    for run in (lambda t: _torch_act(t, rm, rv, w, b, False, 1e-5, act, pool),
                lambda t: _ours(backend, t, rm, rv, w, b, False, 1e-5, act, pool)):
        t = x.detach().clone().requires_grad_()
        y = run(t)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape))
        grads.append(t.grad)
        outs.append(y.detach())
    assert_close(outs[1], outs[0], equal_nan=True, **TOL[dtype])
    assert_close(grads[1], grads[0], equal_nan=True, **TOL[dtype])
    assert grads[0].isfinite().sum() > 0.9 * x.numel()  # the case is not vacuous


def _overflowing(kind: str) -> torch.Tensor:
    """float32 inputs whose per-channel sum of squared deviations exceeds FLT_MAX."""
    if kind == "1e20":  # var ~ 1e40
        return torch.randn(4, 3, 5) * 1e20
    if kind == "sum only":  # var = 2.25e38 < FLT_MAX, its sum over 4 values 9e38 > FLT_MAX
        return torch.tensor([1.5e19, -1.5e19]).repeat(2, 3, 1)
    x = torch.full((4, 3, 5), 3e38)  # the float32 sum of the values overflows too
    x[0], x[1, :, 1] = -3e38, 3.3e38
    return x


@pytest.mark.parametrize("kind", ["1e20", "sum only", "3e38"])
@pytest.mark.parametrize("layout", ["planes", "rows", "channels_last"])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_variance_overflow_normalizes_as_aten(backend, affine, layout, kind):
    """ATen sums float32 squared deviations in float32: past FLT_MAX the variance is inf,
    inv_std 0 and y = beta exactly, the running variance inf, the running mean finite. The
    kernels (summing in double) once normalized instead; the reference (a float32 sum of the
    values) gave NaN outputs and NaN running statistics near 3e38.

    The oracle is torch's (N, C, L) path on the same values: its rows and channels_last paths
    sum the values in float32 too, and at 3e38 give NaN where its (N, C, L) path does not."""
    planes = _overflowing(kind)  # (N, C, L)
    x = {"planes": planes, "rows": planes.transpose(1, 2).reshape(-1, 3),
         "channels_last": planes.unsqueeze(-1).contiguous(memory_format=torch.channels_last)}
    x = x[layout]
    w, b = (torch.randn(3), torch.randn(3)) if affine else (None, None)
    (rm0, rv0), (rm1, rv1) = [(torch.zeros(3), torch.ones(3)) for _ in range(2)]
    want = F.batch_norm(planes, rm0, rv0, w, b, True, 0.1, 1e-5)
    want = want.transpose(1, 2).reshape(-1, 3) if layout == "rows" else want.reshape(x.shape)
    got = _ours(backend, x, rm1, rv1, w, b, True, 1e-5, None, 1)
    assert want.isfinite().all() and rv0.isinf().all()  # the oracle's answer, stated
    assert torch.equal(got, want)  # beta (or 0) exactly
    assert torch.equal(rv1, rv0)
    assert_close(rm1, rm0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", ["planes", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_zero_with_zero_variance_is_torchs(backend, dtype, layout):
    """Eval, eps = 0: a zero running variance makes inv_std inf; torch's x * alpha + beta gives
    NaN (beta = bias - mean * inf, or 0 * inf) or +-inf where (x - mean) * inf gave other
    infinities. Channels with a positive variance stay ordinary."""
    x = _layout(torch.randn(2, 4, 3, 3, dtype=dtype), layout)
    x.view(-1)[:5] = 0.0
    rm = torch.tensor([0.0, 0.5, -1.0, 0.3], dtype=dtype)
    rv = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=dtype)
    w, b = torch.tensor([1.0, -2.0, 0.0, 1.5], dtype=dtype), torch.randn(4, dtype=dtype)
    for weight, bias in ((None, None), (w, b)):
        want = F.batch_norm(x, rm, rv, weight, bias, False, 0.1, 0.0)
        got = _ours(backend, x, rm, rv, weight, bias, False, 0.0, None, 1)
        assert not want.isfinite().all()
        assert_close(got, want, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_tail_of_large_negative_values_is_torchs(backend, pool):
    """z = -inf and z < -88.73 (exp(-z) beyond FLT_MAX): sigmoid is exactly 0 as torch's (the
    kernels' exp once stopped at e^88: 6e-39); the values around the limit agree too."""
    z = torch.tensor([-float("inf"), -1e30, -100.0, -89.0, -88.8, -88.5, -87.5, -50.0, 0.0,
                      20.0, 88.5, float("inf")])
    # eps = 0, unit variance, no shift: the normalized value is z itself; each value fills a
    # 2x2 window, so that the pooled output is sigmoid(z) too
    x = z.repeat_interleave(2).expand(2, 1, 4, 24).contiguous()
    rm, rv, w, b = torch.zeros(1), torch.ones(1), torch.ones(1), torch.zeros(1)
    want = _torch_act(x, rm, rv, w, b, False, 0.0, "sigmoid", pool)
    got = _ours(backend, x, rm, rv, w, b, False, 0.0, "sigmoid", pool)
    zeros = 5 * (2 // pool)  # the outputs of z < -88.73
    assert (want[..., :zeros] == 0).all() and (want[..., zeros:] > 0).all()
    assert (got[..., :zeros] == 0).all()
    assert_close(got, want, rtol=1e-5, atol=0)
