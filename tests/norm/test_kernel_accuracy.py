"""The kernels' float32 accuracy where |mean| >> std, and their statistics of non-finite values.

Accuracy. In every layout the kernels distinguish (rows: 2-D and channels_last, with wide rows,
chunks and tail rows; planes: contiguous) and at |mean|/std from 1e3 to 1e6, the kernels'
float32 results are held to a float64 truth: the reference run in float64 on the same float32
values, in training mode with momentum 1 (so the running buffers hold the batch mean and the
unbiased batch variance). u = 2^-24 is float32's unit roundoff.

The batch mean is a float32 number (the kernels, the reference and ATen all keep it in the
input's dtype), off from the truth by up to half an ulp of |mean|: 3e-5 std at 1e3, 1/32 std at
1e6. Nothing in float32 does better, and that one rounding dominates the error of y and of the
gradients (it shifts every x - mean). So each result is held to what float32 allows:

* mean: within half an ulp of the truth, plus 1e-6 std. Before that rounding it is a double
  average of float32 block sums of values of the order of std, good to about u std (measured:
  never past the half ulp).
* var: relative error <= 1e-6. Storing it rounds by u; each row block's m2 is a float32 sum of at
  most 32 squares, <= 35u = 2.1e-6 in the worst case, and about sqrt(32 / 3) u = 2e-7 typically
  (roundings of either sign); measured <= 3.6e-7 here (C = 256: only 4 blocks per channel).
  Block means of x itself in float32, the scheme before, gave 7e-6 to 4e-5 at 1e3, 2e-2 at 1e6.
* y, dx, dw, db: within 1e-6 of the largest value of the float64 truth evaluated at the kernels'
  own float32 mean (the same closed forms, with that mean and the true variance). What is left
  is a few float32 roundings per value (<= 4u = 2.4e-7) and inv_std's error, half the variance's;
  measured <= 1.9e-7 (the scheme before: 3e-6 to 1.5e-5 at 1e3).
* each of them, measured against the plain truth, at most twice the reference's own float32
  error, plus one float32 epsilon (2u) where both are at rounding level.

The bounds leave room for other thread counts (chunks) and SIMD widths (summation orders).

Non-finite values. An inf of either sign or a NaN anywhere in a channel (its first value, which
the rows layout's statistics are shifted by, a middle one, one in the tail rows) gives the
running statistics and output of torch.nn.functional.batch_norm, NaN pattern included, in
float32 and float64, in every layout.
"""

from __future__ import annotations

import functools
import zlib

import pytest
import torch
import torch.nn.functional as F

import bnlab.functional as BF
from bnlab.norm import backends

# Each below 32768 values (one thread does everything) but "chunks": one chunk per thread.
LAYOUTS = {
    "rows-2d-C6": ((2051, 6), torch.contiguous_format),  # k = 32: 2 blocks of wide rows, 3 tail
    "rows-2d-C16-chunks": ((2051, 16), torch.contiguous_format),  # k = 8, chunks, 3 tail rows
    "rows-2d-C84": ((259, 84), torch.contiguous_format),  # k = 4, 3 tail rows
    "rows-2d-C256": ((120, 256), torch.contiguous_format),  # k = 1
    "rows-channels_last-C16": ((17, 16, 9, 7), torch.channels_last),  # k = 8, 7 tail rows
    "rows-channels_last-C120": ((4, 120, 7, 9), torch.channels_last),  # k = 2
    "planes-C1": ((64, 1, 16, 16), torch.contiguous_format),
    "planes-C6": ((32, 6, 12, 12), torch.contiguous_format),
}
MEANS = [1e3, 1e4, 1e5, 1e6]  # |mean| / std, std = 1
QUANTITIES = ("y", "mean", "var", "dx", "dw", "db")
EPS32 = torch.finfo(torch.float32).eps


def _run(x, w, b, g, dtype, kernels):
    """Training forward + backward on private copies: {y, mean, var, dx, dw, db} in float64."""
    c = x.shape[1]
    xs = x.to(dtype).clone(memory_format=torch.preserve_format).requires_grad_()
    ws, bs = w.to(dtype).clone().requires_grad_(), b.to(dtype).clone().requires_grad_()
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    with backends.forced("kernels" if kernels else "reference"):
        y = BF.batch_norm(xs, rm, rv, ws, bs, True, 1.0, 1e-5)
    y.backward(g.to(dtype))
    out = (y, rm, rv, xs.grad, ws.grad, bs.grad)
    return {k: t.detach().double() for k, t in zip(QUANTITIES, out, strict=True)}


def _truth_at(x, w, b, g, mean):
    """y and the gradients in float64, with the batch mean replaced by `mean` (C,)."""
    x, w, b, g, mean = (t.double() for t in (x, w, b, g, mean))
    dims = (0, *range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = x.numel() // x.shape[1]
    var = (x - x.mean(dims, keepdim=True)).square().mean(dims)  # (N,C,*) -> (C,)
    inv_std = (var + 1e-5).rsqrt()
    x_hat = (x - mean.view(shape)) * inv_std.view(shape)
    sum_g, sum_g_xhat = g.sum(dims), (g * x_hat).sum(dims)  # (N,C,*) -> (C,)
    dx = (g - sum_g.view(shape) / m - x_hat * (sum_g_xhat / m).view(shape)) * (
        inv_std * w).view(shape)
    return {"y": x_hat * w.view(shape) + b.view(shape), "dx": dx, "dw": sum_g_xhat, "db": sum_g}


@functools.cache
def _results(layout, mean):
    """(kernels, reference, truth, inputs) for one case, computed once for all tests."""
    shape, fmt = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{layout} {mean}".encode()))
    x = (mean + torch.randn(shape, dtype=torch.float64, generator=gen)).float()
    x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, generator=gen) + 0.5
    b = torch.randn(c, generator=gen)
    g = torch.randn(shape, generator=gen)
    ours = _run(x, w, b, g, torch.float32, kernels=True)
    ref = _run(x, w, b, g, torch.float32, kernels=False)
    truth = _run(x, w, b, g, torch.float64, kernels=False)
    return ours, ref, truth, (x, w, b, g)


def _errors(out, truth):
    """Per quantity: mean in units of std, var relative, the rest relative to the largest."""
    std = truth["var"].sqrt()
    errs = {k: float((out[k] - truth[k]).abs().max() / truth[k].abs().max())
            for k in ("y", "dx", "dw", "db")}
    errs["mean"] = float(((out["mean"] - truth["mean"]).abs() / std).max())
    errs["var"] = float(((out["var"] - truth["var"]).abs() / truth["var"]).max())
    return errs


cases = pytest.mark.parametrize(("layout", "mean"), [(lay, m) for lay in LAYOUTS for m in MEANS],
                                ids=[f"{lay}-{m:.0e}" for lay in LAYOUTS for m in MEANS])


@cases
def test_statistics_to_float32_rounding(layout, mean):
    ours, _, truth, _ = _results(layout, mean)
    mu = truth["mean"].float().abs()
    half_ulp = (torch.nextafter(mu, torch.tensor(float("inf"))) - mu).double() / 2  # (C,)
    std = truth["var"].sqrt()
    assert ((ours["mean"] - truth["mean"]).abs() <= half_ulp + 1e-6 * std).all()
    assert ((ours["var"] - truth["var"]).abs() / truth["var"]).max() <= 1e-6


@cases
def test_output_and_gradients_to_float32_rounding(layout, mean):
    ours, _, _, (x, w, b, g) = _results(layout, mean)
    truth = _truth_at(x, w, b, g, ours["mean"])  # at the kernels' own float32 mean
    for k in ("y", "dx", "dw", "db"):
        err = float((ours[k] - truth[k]).abs().max() / truth[k].abs().max())
        assert err <= 1e-6, (k, err)


@cases
def test_no_worse_than_the_reference(layout, mean):
    ours, ref, truth, _ = _results(layout, mean)
    e_ours, e_ref = _errors(ours, truth), _errors(ref, truth)
    for k in QUANTITIES:
        assert e_ours[k] <= 2 * e_ref[k] + EPS32, (k, e_ours[k], e_ref[k])


NONFINITE_LAYOUTS = ["rows-2d-C6", "rows-channels_last-C16", "planes-C6"]
VALUES = {"+inf": (float("inf"),), "-inf": (float("-inf"),), "nan": (float("nan"),),
          "+inf,-inf": (float("inf"), float("-inf"))}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", NONFINITE_LAYOUTS)
def test_non_finite_like_torch(layout, dtype, value, where):
    """The values go into channel 1 at one place in memory order ("last" is in the rows
    layout's tail rows; "first" is the value the rows layout's statistics are shifted by)."""
    shape, fmt = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
    flat = x.as_strided((x.numel(),), (1,))  # x's values in memory order
    channel = torch.arange(shape[1]).view(1, -1, *[1] * (x.dim() - 2)).expand(shape)
    channel = channel.contiguous(memory_format=fmt).as_strided((x.numel(),), (1,))
    offsets = (channel == 1).nonzero().flatten()  # channel 1's values, in memory order
    at = {"first": 0, "middle": len(offsets) // 2, "last": len(offsets) - 1}[where]
    for i, v in enumerate(VALUES[value]):
        flat[offsets[at + 7 * i if where != "last" else at - 7 * i]] = v
    w, b = torch.rand(shape[1], dtype=dtype) + 0.5, torch.randn(shape[1], dtype=dtype)
    outs = []
    for impl in ("kernels", "torch"):
        rm, rv = torch.zeros(shape[1], dtype=dtype), torch.ones(shape[1], dtype=dtype)
        if impl == "torch":
            y = F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
        else:
            with backends.forced("kernels"):
                y = BF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
        outs.append((y, rm, rv))
    for ours, theirs in zip(*outs, strict=True):
        torch.testing.assert_close(ours, theirs, equal_nan=True)
