"""The same parity checks on a CUDA device (against torch's CUDA/cuDNN kernels)."""

import pytest
import torch

from tests.norm.oracle import max_abs, max_rel, run_functional

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_matches_torch(dtype, fmt, training):
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    dev = "cuda"
    x = (torch.randn(16, 6, 12, 12, device=dev, dtype=dtype) * 3 + 2).contiguous(memory_format=mf)
    w = torch.rand(6, device=dev, dtype=dtype) + 0.5
    b = torch.randn(6, device=dev, dtype=dtype)
    running = (torch.randn(6, device=dev, dtype=dtype), torch.rand(6, device=dev, dtype=dtype) + 1)
    g = torch.randn_like(x)
    ours = run_functional("bnlab", x, w, b, running, training, g)
    ref = run_functional("torch", x, w, b, running, training, g)
    pairs = [(ours.out, ref.out), (ours.grads["input"], ref.grads["input"]),
             (ours.grads["weight"], ref.grads["weight"]), (ours.grads["bias"], ref.grads["bias"]),
             (ours.running_mean, ref.running_mean), (ours.running_var, ref.running_var)]
    for a, r in pairs:
        assert a.device.type == "cuda"
        if dtype == torch.float64:
            assert max_abs(a, r) <= 1e-10
        else:
            assert max_rel(a, r) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_half_close_to_float64_truth(dtype):
    x = (torch.randn(16, 6, 12, 12, device="cuda") * 3 + 2).to(dtype)
    g = torch.randn_like(x)
    w, b = torch.rand(6, device="cuda") + 0.5, torch.randn(6, device="cuda")
    running = (torch.zeros(6, device="cuda"), torch.ones(6, device="cuda"))
    ours = run_functional("bnlab", x, w, b, running, True, g)
    ref = run_functional("torch", x, w, b, running, True, g)
    truth = run_functional("torch", x.double(), w.double(), b.double(),
                           tuple(t.double() for t in running), True, g.double())
    eps = torch.finfo(dtype).eps
    for o, r, t in [(ours.out, ref.out, truth.out),
                    (ours.grads["input"], ref.grads["input"], truth.grads["input"])]:
        err_o = float(((o.double() - t).abs() / (t.abs().clamp_min(1e-2) * eps)).max())
        err_r = float(((r.double() - t).abs() / (t.abs().clamp_min(1e-2) * eps)).max())
        assert err_o <= max(err_r, 1.0)


def test_cuda_device_mismatch_is_clear():
    with pytest.raises(RuntimeError, match="running_mean is on cpu but the input is on cuda"):
        import bnlab.functional as BF

        BF.batch_norm(torch.randn(4, 3, device="cuda"), torch.zeros(3), torch.ones(3), True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_runs_aten_held_to_the_reference(training):
    """On CUDA the rule picks ATen (cuDNN); the reference, forced, is its oracle in float64."""
    import bnlab.functional as BF
    from bnlab.norm import backends

    x = (torch.randn(16, 6, 12, 12, device="cuda", dtype=torch.float64) * 3 + 2)
    assert backends.select(x) == "aten"
    w = torch.rand(6, device="cuda", dtype=torch.float64) + 0.5
    results = {}
    for backend in ("aten", "reference"):
        xs = x.clone().requires_grad_()
        rm = torch.zeros(6, device="cuda", dtype=torch.float64)
        rv = torch.ones(6, device="cuda", dtype=torch.float64)
        with backends.forced(backend):
            y = BF.batch_norm(xs, rm, rv, w, None, training, 0.1)
        y.square().sum().backward()
        results[backend] = (y.detach(), xs.grad, rm, rv)
    for a, r in zip(results["aten"], results["reference"], strict=True):
        assert max_abs(a, r) <= 1e-10
