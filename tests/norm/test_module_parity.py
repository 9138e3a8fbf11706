"""bnlab.BatchNorm1d/2d/3d against torch.nn.BatchNorm1d/2d/3d over training steps then eval.

Each step feeds both layers the same batch and upstream gradient, compares outputs, gradients
and every buffer, then applies the same SGD update to both, so drift would accumulate and show.
Tolerances as in test_functional_parity.
"""

import pytest
import torch
from torch import nn

import bnlab
from tests.norm.oracle import max_abs, max_rel

PAIRS = {
    "1d-2D": (bnlab.BatchNorm1d, nn.BatchNorm1d, (16, 6)),
    "1d-3D": (bnlab.BatchNorm1d, nn.BatchNorm1d, (8, 6, 5)),
    "2d": (bnlab.BatchNorm2d, nn.BatchNorm2d, (4, 6, 5, 5)),
    "3d": (bnlab.BatchNorm3d, nn.BatchNorm3d, (2, 6, 3, 4, 4)),
}
CONFIGS = {
    "default": {},
    "momentum-None": {"momentum": None},
    "momentum-0.5": {"momentum": 0.5},
    "affine-False": {"affine": False},
    "bias-False": {"bias": False},
    "no-running-stats": {"track_running_stats": False},
    "eps-1e-3": {"eps": 1e-3},
}


def close(a, b, dtype):
    if a is None or b is None:
        return a is None and b is None
    if dtype == torch.float64:
        return max_abs(a, b) <= 1e-10
    return max_rel(a, b) <= 1e-5


def assert_same_state(ours: nn.Module, ref: nn.Module, dtype):
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert sd_o.keys() == sd_r.keys()
    for k in sd_r:
        if k.endswith("num_batches_tracked"):
            assert torch.equal(sd_o[k], sd_r[k]), k
        else:
            assert close(sd_o[k], sd_r[k], dtype), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("pair", PAIRS)
def test_training_steps_then_eval(pair, config, dtype):
    ours_cls, ref_cls, shape = PAIRS[pair]
    kw = CONFIGS[config]
    ours = ours_cls(6, dtype=dtype, **kw)
    ref = ref_cls(6, dtype=dtype, **kw)
    if ref.weight is not None:  # start from non-trivial gamma/beta
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]

    for step in range(4):
        x = torch.randn(shape, dtype=dtype) * (step + 1) + step
        g = torch.randn(shape, dtype=dtype)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        assert close(yo, yr, dtype)
        yo.backward(g)
        yr.backward(g)
        assert close(xo.grad, xr.grad, dtype)
        for (n, po), (_, pr) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            assert close(po.grad, pr.grad, dtype), n
            with torch.no_grad():
                po -= 0.1 * po.grad
                pr -= 0.1 * pr.grad
            po.grad = pr.grad = None
        assert_same_state(ours, ref, dtype)

    ours.eval()
    ref.eval()
    x = torch.randn(shape, dtype=dtype) * 2 + 1
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = ours(xo), ref(xr)
    assert close(yo, yr, dtype)
    # A random upstream gradient: with sum() and batch statistics (track_running_stats=False)
    # the true input gradient is exactly 0 and both sides would only compare rounding noise.
    g = torch.randn(shape, dtype=dtype)
    yo.backward(g)
    yr.backward(g)
    assert close(xo.grad, xr.grad, dtype)
    assert_same_state(ours, ref, dtype)


def test_any_rank_batchnorm_accepts_every_rank():
    bn = bnlab.BatchNorm(3)
    for shape in [(4, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 2, 2), (2, 3, 2, 2, 2, 2)]:
        assert bn(torch.randn(shape)).shape == shape
    assert int(bn.num_batches_tracked) == 5


def test_channels_last_module():
    ours, ref = bnlab.BatchNorm2d(6), nn.BatchNorm2d(6)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert max_rel(y, ref(x)) <= 1e-5


def test_module_moves_with_to():
    bn = bnlab.BatchNorm2d(3).to(torch.float64)
    assert bn.running_mean.dtype == torch.float64 and bn.weight.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long
    bn(torch.randn(2, 3, 4, 4, dtype=torch.float64))


def test_reset_running_stats_and_parameters():
    bn = bnlab.BatchNorm1d(4)
    for _ in range(3):
        bn(torch.randn(8, 4) * 5 + 3)
    with torch.no_grad():
        bn.weight.fill_(2)
    ptr = bn.running_mean.data_ptr()
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_var, torch.ones(4)) and bn.running_mean.data_ptr() == ptr
    assert torch.equal(bn.weight, torch.full((4,), 2.0))
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
