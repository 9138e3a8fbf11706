"""The normalization-axes family against torch's counterparts (float64, <= 1e-12)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

import bnlab
from bnlab.norm.variants import GroupNorm, InstanceNorm, LayerNorm, PerActivationBatchNorm
from bnlab.norm.variants.axes import default_groups, group_norm

F64 = torch.float64


def pair_check(ours: nn.Module, ref: nn.Module, shape, reshape=None):
    x = torch.randn(shape, dtype=F64) * 2 + 1
    g = torch.randn(shape, dtype=F64)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo = ours(xo)
    yr = ref(xr if reshape is None else xr.reshape(reshape)).reshape(shape)
    yo.backward(g)
    yr.backward(g)
    torch.testing.assert_close(yo, yr, rtol=0, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=0, atol=1e-12)
    for po, pr in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(po.grad, pr.grad.reshape(po.grad.shape), rtol=0, atol=1e-11)


def randomize(*mods):
    torch.manual_seed(3)
    w, b = torch.rand(6, dtype=F64) + 0.5, torch.randn(6, dtype=F64)
    for m in mods:
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 5), (3, 6, 4, 4), (2, 6, 2, 3, 3)])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm_matches_torch(shape, groups):
    ours, ref = GroupNorm(6, groups).double(), nn.GroupNorm(groups, 6).double()
    randomize(ours, ref)
    pair_check(ours, ref, shape)


def test_layer_norm_is_group_norm_1_and_torch_layer_norm():
    ours, ref = LayerNorm(6).double(), nn.GroupNorm(1, 6).double()
    randomize(ours, ref)
    pair_check(ours, ref, (3, 6, 4, 4))
    x = torch.randn(3, 6, 4, 4, dtype=F64)
    torch.testing.assert_close(LayerNorm(6, affine=False).double()(x),
                               F.layer_norm(x, x.shape[1:]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape,cls", [((3, 6, 7), nn.InstanceNorm1d),
                                       ((3, 6, 4, 4), nn.InstanceNorm2d),
                                       ((2, 6, 2, 3, 3), nn.InstanceNorm3d)])
def test_instance_norm_matches_torch(shape, cls):
    ours, ref = InstanceNorm(6, affine=True).double(), cls(6, affine=True).double()
    randomize(ours, ref)
    pair_check(ours, ref, shape)
    with pytest.raises(ValueError, match="spatial"):
        InstanceNorm(6)(torch.randn(4, 6))


def test_per_activation_is_batchnorm1d_on_the_flattened_input():
    ours = PerActivationBatchNorm(3, (4, 5)).double()
    ref = nn.BatchNorm1d(60).double()
    with torch.no_grad():
        ours.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        ours.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        ref.weight.copy_(ours.weight.repeat_interleave(20))
        ref.bias.copy_(ours.bias.repeat_interleave(20))
    for _ in range(3):
        x = torch.randn(8, 3, 4, 5, dtype=F64) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x.reshape(8, 60)).reshape(8, 3, 4, 5),
                                   rtol=0, atol=1e-12)
    assert ours.running_mean.shape == (3, 4, 5)
    torch.testing.assert_close(ours.running_var.reshape(-1), ref.running_var, rtol=0, atol=1e-12)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 4, 5, dtype=F64)
    torch.testing.assert_close(ours(x), ref(x.reshape(2, 60)).reshape(2, 3, 4, 5), rtol=0,
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 4, 5\)"):
        ours(torch.randn(2, 3, 5, 4, dtype=F64))


def test_per_activation_on_2d_input_is_batchnorm1d():
    x = torch.randn(16, 5, dtype=F64)
    torch.testing.assert_close(PerActivationBatchNorm(5).double()(x),
                               bnlab.BatchNorm1d(5).double()(x), rtol=0, atol=0)


def test_group_norm_core_gradcheck_and_half():
    x = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    w = torch.rand(4, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    assert gradcheck(lambda x, w, b: group_norm(x, 2, w, b), (x, w, b))
    xh = torch.randn(3, 4, 8, 8).to(torch.bfloat16)
    y = group_norm(xh, 2)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.group_norm(xh.float(), 2), rtol=0, atol=1e-2)


def test_group_defaults_and_errors():
    assert [default_groups(c) for c in (6, 16, 120, 84, 7)] == [2, 4, 10, 7, 1]
    with pytest.raises(ValueError, match="not divisible"):
        GroupNorm(6, 4)
