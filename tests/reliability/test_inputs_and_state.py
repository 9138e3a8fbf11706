"""Layer inputs of every awkward kind, and state-dict abuse: clear errors, nothing corrupted."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.variants import GhostBatchNorm


def snapshot(m: nn.Module) -> dict[str, bytes]:
    """Byte-exact image of every parameter and buffer."""
    return {k: v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            if v.dim() else v.detach().cpu().reshape(1).view(torch.uint8).numpy().tobytes()
            for k, v in m.state_dict().items()}


def trained_bn(cls=bnlab.BatchNorm2d, **kw):
    m = cls(3, **kw)
    m(torch.randn(4, 3, 2, 2) * 2 + 1)
    return m


BAD_INPUTS = {
    "rank-3-for-2d": (torch.randn(2, 3, 4), ValueError),
    "rank-1": (torch.randn(3), ValueError),
    "wrong-channels": (torch.randn(2, 5, 2, 2), RuntimeError),
    "int64": (torch.ones(2, 3, 2, 2, dtype=torch.int64), TypeError),
    "bool": (torch.ones(2, 3, 2, 2, dtype=torch.bool), TypeError),
    "float64-vs-float32-params": (torch.randn(2, 3, 2, 2, dtype=torch.float64), TypeError),
    "one-value-per-channel": (torch.randn(1, 3, 1, 1), ValueError),
    "meta-device": (torch.randn(2, 3, 2, 2, device="meta"), RuntimeError),
}


# GhostBatchNorm accepts any rank >= 2, so a rank-3 input is not an error for it.
CASES = [(layer, case) for layer in ("bnlab", "guarded", "ghost") for case in BAD_INPUTS
         if not (layer == "ghost" and case == "rank-3-for-2d")]


@pytest.mark.parametrize("layer,case", CASES)
def test_bad_input_leaves_every_byte_unchanged(layer, case):
    x, exc = BAD_INPUTS[case]
    m = {"bnlab": lambda: trained_bn(),
         "guarded": lambda: trained_bn(guard=True),
         "ghost": lambda: trained_bn(GhostBatchNorm, virtual_batch_size=2)}[layer]()
    before = snapshot(m)
    with pytest.raises(exc):
        m(x)
    assert snapshot(m) == before


@pytest.mark.parametrize("make", [
    lambda x: x.transpose(2, 3),  # non-contiguous
    lambda x: x[:, :, ::2, 1:],  # strided slice
    lambda x: x[:1].expand(6, -1, -1, -1),  # overlapping memory (stride 0 on N)
    lambda x: x.contiguous(memory_format=torch.channels_last),
], ids=["transposed", "strided", "expanded", "channels_last"])
def test_odd_layouts_match_torch(make):
    base = torch.randn(6, 3, 5, 6, dtype=torch.float64) * 2 + 1
    if make(base).shape[0] == 6 and make(base).stride(0) == 0:
        base = base.clone()
    x = make(base)
    ours, ref = bnlab.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    xo, xr = x.detach().clone().requires_grad_(False), x
    yo, yr = ours(make(base)), ref(xr)
    torch.testing.assert_close(yo, yr, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-12)
    leaf_o, leaf_r = base.clone().requires_grad_(), base.clone().requires_grad_()
    g = torch.randn_like(yr)
    ours(make(leaf_o)).backward(g)
    ref(make(leaf_r)).backward(g)
    torch.testing.assert_close(leaf_o.grad, leaf_r.grad, rtol=0, atol=1e-12)
    del xo


def test_expanded_batch_of_identical_samples_has_zero_variance_not_nan():
    x = torch.randn(1, 3, 1, 1).expand(8, 3, 1, 1)
    y = bnlab.BatchNorm2d(3)(x)
    assert torch.isfinite(y).all() and torch.equal(y, torch.zeros_like(y))


def test_half_input_with_values_beyond_float16_range():
    x = (torch.randn(64, 2) * 3000).half()  # variance ~9e6 > 65504, float16's largest value
    mixed = bnlab.BatchNorm1d(2)  # float32 buffers: the recommended set-up for half inputs
    assert torch.isfinite(mixed(x)).all() and torch.isfinite(mixed.running_var).all()
    plain = bnlab.BatchNorm1d(2).half()  # float16 buffers cannot hold the variance...
    assert torch.isfinite(plain(x)).all()  # ...the output is fine (computed in float32)
    assert torch.isinf(plain.running_var).all()  # ...but the buffer overflows, as in torch
    ref = torch.nn.BatchNorm1d(2).half()
    ref(x)
    assert torch.isinf(ref.running_var).all()
    guarded = bnlab.BatchNorm1d(2, guard=True).half()  # the guard refuses to store inf
    with pytest.warns(RuntimeWarning, match="non-finite"):
        guarded(x)
    assert torch.equal(guarded.running_var, torch.ones(2, dtype=torch.float16))


@pytest.mark.parametrize("guard", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_batch_with_and_without_guard(guard, value):
    bn = trained_bn(guard=guard)
    x = torch.randn(4, 3, 2, 2)
    x[1, 2, 0, 0] = value
    before = bn.running_mean.clone()
    if guard:
        with pytest.warns(RuntimeWarning, match="non-finite"):
            bn(x)
        assert torch.equal(bn.running_mean, before)
    else:
        bn(x)
        assert not torch.isfinite(bn.running_mean[2])  # poisoned, as in torch
        assert torch.equal(bn.running_mean[:2], bn.running_mean[:2])


def test_state_dict_with_missing_and_extra_keys():
    bn = trained_bn()
    before = snapshot(bn)
    sd = nn.BatchNorm2d(3).state_dict()
    del sd["running_var"]
    sd["surprise"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Missing key.*running_var.*\n?.*Unexpected key.*"
                                           r"surprise|Unexpected key.*surprise"):
        bn.load_state_dict(sd)
    result = bn.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["running_var"] and result.unexpected_keys == ["surprise"]
    after = snapshot(bn)
    assert after["running_var"] == before["running_var"]  # the missing one kept its value


def test_state_dict_of_wrong_shape_changes_nothing():
    bn = trained_bn()
    before = snapshot(bn)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bn.load_state_dict(nn.BatchNorm2d(4).state_dict())
    assert snapshot(bn) == before


def test_state_dict_from_affine_false_into_affine_true():
    with pytest.raises(RuntimeError, match=r"Missing key.*weight"):
        bnlab.BatchNorm2d(3).load_state_dict(nn.BatchNorm2d(3, affine=False).state_dict())
