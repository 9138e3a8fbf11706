"""float16 / bfloat16: statistics in float32, output rounded once to the input dtype.

Oracle: the same computation in float64. bnlab's error against it must be no larger than
torch's own CPU kernel's error against it (or 1 ulp of the dtype, whichever is larger): "within
what torch's own kernels differ by". float32 parameter gradients and float32 running statistics
are held to the float32 contract (1e-5 norm-wise relative) against the same truth.
Measured: bnlab stays within 0.5 ulp (correctly rounded); torch's all-half-parameter training
kernel is off by up to ~70 ulp on the same inputs.
"""

import pytest
import torch

from tests.norm.oracle import max_rel, run_functional

HALF = [torch.float16, torch.bfloat16]
CASES = {
    "2d": ((64, 7), torch.contiguous_format),
    "4d": ((8, 7, 9, 9), torch.contiguous_format),
    "4d-channels_last": ((8, 7, 9, 9), torch.channels_last),
}


def ulp_error(a: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype) -> float:
    """max |a - truth| in units of dtype's epsilon at the value's magnitude (>= 1e-2)."""
    scale = truth.double().abs().clamp_min(1e-2) * torch.finfo(dtype).eps
    return float(((a.double() - truth.double()).abs() / scale).max())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("param_dtype", ["float32", "same"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_half_within_torch_error(dtype, param_dtype, case, training):
    shape, fmt = CASES[case]
    pdt = torch.float32 if param_dtype == "float32" else dtype
    x = (torch.randn(shape) * 3 + 2).to(dtype).contiguous(memory_format=fmt)
    w, b = (torch.rand(7) + 0.5).to(pdt), torch.randn(7).to(pdt)
    running = (torch.randn(7).to(pdt), (torch.rand(7) + 0.5).to(pdt))
    g = torch.randn(shape).to(dtype)

    ours = run_functional("bnlab", x, w, b, running, training, g)
    ref = run_functional("torch", x, w, b, running, training, g)
    truth = run_functional("torch", x.double(), w.double(), b.double(),
                           tuple(t.double() for t in running), training, g.double())

    assert ours.out.dtype == dtype and ours.out.is_contiguous(memory_format=fmt)
    pairs = [(ours.out, ref.out, truth.out, dtype)]
    pairs.append((ours.grads["input"], ref.grads["input"], truth.grads["input"], dtype))
    for k in ("weight", "bias"):
        assert ours.grads[k].dtype == ref.grads[k].dtype == pdt
        pairs.append((ours.grads[k], ref.grads[k], truth.grads[k], pdt))
    pairs.append((ours.running_mean, ref.running_mean, truth.running_mean, pdt))
    pairs.append((ours.running_var, ref.running_var, truth.running_var, pdt))
    for o, r, t, dt in pairs:
        if dt == torch.float32:
            # float32 parameter gradients and statistics: the float32 contract (1e-5 relative),
            # or torch's own error if that is larger (its bf16-input kernel rounds these to bf16).
            assert max_rel(o, t) <= max(max_rel(r, t), 1e-5)
        else:
            assert ulp_error(o, t, dt) <= max(ulp_error(r, t, dt), 1.0)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_statistics_do_not_overflow(dtype):
    # 300^2 = 90000 overflows float16 (max 65504): statistics must be accumulated in float32.
    x = (torch.randn(64, 3) * 300).to(dtype)
    import bnlab.functional as BF

    rm, rv = torch.zeros(3), torch.ones(3)
    y = BF.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert torch.isfinite(y).all() and torch.isfinite(rv).all()
    truth = x.double().var(dim=0, unbiased=True)
    torch.testing.assert_close(rv.double(), truth, rtol=1e-5, atol=0)
