"""Bad input: the same error as torch where torch has one, a clear one otherwise, and the
module's parameters and buffers byte-identical afterwards."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlab
import bnlab.functional as BF


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_unchanged(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = m.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


def trained(cls=bnlab.BatchNorm2d, c=3, shape=(4, 3, 2, 2), **kw):
    m = cls(c, **kw)
    m(torch.randn(shape) * 2 + 1)  # non-trivial running statistics and a counter of 1
    return m


# (name, input, torch error type, torch's leading message) for a BatchNorm2d(3) in training.
MODULE_CASES = [
    ("one-value-per-channel", torch.randn(1, 3, 1, 1), ValueError,
     "Expected more than 1 value per channel when training"),
    ("wrong-channels", torch.randn(2, 4, 2, 2), RuntimeError,
     "running_mean should contain 4 elements not 3"),
    ("wrong-rank", torch.randn(2, 3, 4), ValueError, "expected 4D input (got 3D input)"),
]


@pytest.mark.parametrize("name,x,exc,msg", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_error_matches_torch_and_leaves_state(name, x, exc, msg):
    ours = trained()
    ref = nn.BatchNorm2d(3)
    with pytest.raises(exc, match=re.escape(msg)):
        ref(x)
    before = snapshot(ours)
    with pytest.raises(exc, match=re.escape(msg)):
        ours(x)
    assert_unchanged(ours, before)  # torch advances num_batches_tracked here; bnlab does not


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_input_is_a_clear_type_error(dtype):
    m = trained()
    before = snapshot(m)
    x = torch.ones(2, 3, 2, 2, dtype=dtype)
    with pytest.raises(TypeError, match=r"floating-point input.*x\.float\(\)"):
        m(x)
    assert_unchanged(m, before)


def test_wrong_channels_error_explains():
    with pytest.raises(RuntimeError, match=r"input of shape \(2, 4, 2, 2\) has 4 channels"):
        bnlab.BatchNorm2d(3)(torch.randn(2, 4, 2, 2))


def test_dtype_mismatch_is_clear_and_leaves_state():
    m = trained()
    before = snapshot(m)
    with pytest.raises(RuntimeError):  # torch: "mixed dtype (CPU): ..."
        F.batch_norm(torch.randn(2, 3, 2, 2, dtype=torch.float64), m.running_mean.clone(),
                     m.running_var.clone(), m.weight, m.bias, True)
    with pytest.raises(TypeError, match=r"is torch.float64 but running_mean=torch.float32.*\.to\("):
        m(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    assert_unchanged(m, before)


def test_half_input_with_half_weight_but_float_stats_is_rejected():
    rm, rv = torch.zeros(3), torch.ones(3)
    x = torch.randn(4, 3).bfloat16()
    with pytest.raises(RuntimeError):
        F.batch_norm(x, rm.clone(), rv.clone(), torch.ones(3).bfloat16(), None, True)
    with pytest.raises(TypeError, match=r"or all torch\.float32"):
        BF.batch_norm(x, rm, rv, torch.ones(3).bfloat16(), None, True)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


def test_device_mismatch_is_clear():
    # The meta device stands in for a second device on a CPU-only machine.
    x = torch.randn(4, 3, device="meta")
    with pytest.raises(RuntimeError, match=r"running_mean is on cpu but the input is on meta"):
        BF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)


@pytest.mark.parametrize("shape", [(4,), ()])
def test_rank_below_two_is_clear(shape):
    with pytest.raises(ValueError, match=r"at least 2 dims"):
        BF.batch_norm(torch.randn(shape), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"at least 2 dims"):
        bnlab.BatchNorm(3)(torch.randn(shape))


def test_eval_without_running_stats_matches_torch():
    msg = "running_mean must be defined in evaluation mode"
    with pytest.raises(RuntimeError, match=msg):
        F.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(RuntimeError, match=msg):
        BF.batch_norm(torch.randn(4, 3), None, None, training=False)


def test_eps_checks_match_torch():
    x = torch.randn(4, 3)
    for fn in (F.batch_norm, BF.batch_norm):
        with pytest.raises(ValueError, match="eps must be positive during training"):
            fn(x, None, None, training=True, eps=0.0)
        with pytest.raises(ValueError, match="eps must be non-negative"):
            fn(x, torch.zeros(3), torch.ones(3), training=False, eps=-1.0)


def test_functional_momentum_none_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"momentum must be a float.*num_batches_tracked"):
        BF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), True, momentum=None)


@pytest.mark.parametrize("kw,match", [
    ({"num_features": 0}, "num_features must be a positive int"),
    ({"num_features": -2}, "num_features must be a positive int"),
    ({"num_features": 2.5}, "num_features must be a positive int"),
    ({"num_features": 3, "eps": 0.0}, "eps must be a positive finite float"),
    ({"num_features": 3, "eps": float("nan")}, "eps must be a positive finite float"),
    ({"num_features": 3, "momentum": 1.5}, r"momentum must be in \[0, 1\]"),
    ({"num_features": 3, "momentum": -0.1}, r"momentum must be in \[0, 1\]"),
])
def test_constructor_rejects_nonsense(kw, match):
    with pytest.raises(ValueError, match=match):
        bnlab.BatchNorm2d(**kw)


def test_empty_batch_matches_torch_output_and_grads():
    ours = trained()
    ref_t = nn.BatchNorm2d(3)
    ref_t.load_state_dict(ours.state_dict())
    before = snapshot(ours)
    x = torch.randn(0, 3, 4, 4)
    for m in (ours, ref_t):
        xi = x.clone().requires_grad_()
        y = m(xi)
        assert y.shape == x.shape
        y.sum().backward()
        assert torch.equal(m.weight.grad, torch.zeros(3))
        assert torch.equal(m.bias.grad, torch.zeros(3))
    for k in ("running_mean", "running_var"):
        assert torch.equal(ours.state_dict()[k], ref_t.state_dict()[k])
    # Deliberate difference: an empty batch has no statistics, so bnlab does not count it.
    assert_unchanged(ours, before)
    assert int(ref_t.num_batches_tracked) == int(before["num_batches_tracked"]) + 1


def test_single_sample_allowed_in_eval():
    m = trained().eval()
    y = m(torch.randn(1, 3, 1, 1))
    ref = nn.BatchNorm2d(3).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 1, 1)
    torch.testing.assert_close(m(x), ref(x))
    assert y.shape == (1, 3, 1, 1)


def test_error_inside_a_model_leaves_every_layer_intact():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), bnlab.BatchNorm2d(3), nn.Flatten(),
                          nn.LazyLinear(4), bnlab.BatchNorm1d(5))
    before = copy.deepcopy(model[1].state_dict())
    with pytest.raises(RuntimeError, match="should contain 4 elements not 5"):
        model(torch.randn(2, 1, 5, 5))
    # The first BN ran (and legitimately updated) before the error; the failing one did not.
    assert int(model[1].num_batches_tracked) == int(before["num_batches_tracked"]) + 1
    assert int(model[4].num_batches_tracked) == 0
    assert torch.equal(model[4].running_mean, torch.zeros(5))
