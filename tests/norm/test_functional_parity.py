"""bnlab.functional.batch_norm against torch.nn.functional.batch_norm: the parity matrix.

Tolerances: float64 <= 1e-10 absolute (both sides round at ~1e-16; the margin covers sums of
~1e3 terms); float32 <= 1e-5 relative to max(|torch|, 1) (float32 epsilon is 6e-8, so this
allows ~100 ulp of accumulated reduction-order difference and nothing more).
"""

import pytest
import torch

from bnlab.norm import backends
from tests.norm.oracle import max_abs, max_rel, run_functional

SHAPES = {
    "2d": ((16, 5), torch.contiguous_format),
    "3d": ((8, 5, 7), torch.contiguous_format),
    "4d": ((4, 5, 6, 7), torch.contiguous_format),
    "4d-channels_last": ((4, 5, 6, 7), torch.channels_last),
    "5d": ((2, 5, 3, 4, 5), torch.contiguous_format),
    "5d-channels_last_3d": ((2, 5, 3, 4, 5), torch.channels_last_3d),
}
AFFINE = ["weight+bias", "weight-only", "bias-only", "none"]
MODES = ["train", "train-no-running", "eval"]


def make_case(shape, fmt, dtype, affine):
    x = (torch.randn(shape, dtype=dtype) * 3 + 2).contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, dtype=dtype) + 0.5 if "weight" in affine else None
    b = torch.randn(c, dtype=dtype) if "bias" in affine else None
    running = (torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5)
    return x, w, b, running


def check(a, b, dtype):
    if dtype == torch.float64:
        assert max_abs(a, b) <= 1e-10
    else:
        assert a is not None and b is not None
        assert max_rel(a, b) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape_id", SHAPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", backends.BACKENDS)
def test_matches_torch(dtype, shape_id, affine, mode, path):
    """Every backend: the compiled kernels (the CPU default), the readable reference and ATen."""
    with backends.forced(path):
        _check_matches_torch(dtype, shape_id, affine, mode)


def _check_matches_torch(dtype, shape_id, affine, mode):
    shape, fmt = SHAPES[shape_id]
    x, w, b, running = make_case(shape, fmt, dtype, affine)
    if mode == "train-no-running":
        running = None
    training = mode != "eval"
    g = torch.randn(shape, dtype=dtype)
    ours = run_functional("bnlab", x, w, b, running, training, g, momentum=0.3)
    ref = run_functional("torch", x, w, b, running, training, g, momentum=0.3)

    check(ours.out, ref.out, dtype)
    for name in ("input", "weight", "bias"):
        if ref.grads[name] is None:
            assert ours.grads[name] is None
        else:
            check(ours.grads[name], ref.grads[name], dtype)
    if running is not None:
        check(ours.running_mean, ref.running_mean, dtype)
        check(ours.running_var, ref.running_var, dtype)
    # Same memory format out as in (channels_last stays channels_last).
    assert ours.out.is_contiguous(memory_format=fmt)
    assert ours.out.dtype == dtype


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_running_update_momentum(momentum):
    x = torch.randn(32, 4, 3, dtype=torch.float64) * 2 + 1
    g = torch.ones_like(x)
    running = (torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 1)
    ours = run_functional("bnlab", x, None, None, running, True, g, momentum=momentum)
    ref = run_functional("torch", x, None, None, running, True, g, momentum=momentum)
    assert max_abs(ours.running_mean, ref.running_mean) <= 1e-12
    assert max_abs(ours.running_var, ref.running_var) <= 1e-12


def test_running_var_is_unbiased_and_normalization_biased():
    x = torch.randn(10, 3, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    import bnlab.functional as BF

    y = BF.batch_norm(x, rm, rv, training=True, momentum=1.0, eps=0.0 + 1e-300)
    torch.testing.assert_close(rv, x.var(dim=0, unbiased=True), rtol=0, atol=1e-14)
    torch.testing.assert_close(rm, x.mean(dim=0), rtol=0, atol=1e-14)
    # Normalized with the biased variance: the output has population std exactly 1.
    torch.testing.assert_close(y.var(dim=0, unbiased=False), torch.ones(3, dtype=torch.float64))


def test_running_buffers_carry_no_autograd_history():
    import bnlab.functional as BF

    x = torch.randn(8, 3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    BF.batch_norm(x, rm, rv, training=True).sum().backward()
    assert rm.grad_fn is None and rv.grad_fn is None
    assert not rm.requires_grad and not rv.requires_grad


def test_running_buffers_updated_in_place():
    import bnlab.functional as BF

    rm, rv = torch.zeros(3), torch.ones(3)
    ptr_m, ptr_v = rm.data_ptr(), rv.data_ptr()
    BF.batch_norm(torch.randn(8, 3), rm, rv, training=True)
    assert rm.data_ptr() == ptr_m and rv.data_ptr() == ptr_v
    assert not torch.equal(rm, torch.zeros(3))
