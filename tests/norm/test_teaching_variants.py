"""The teaching layers of the train-with-running-averages study: BatchNorm without the gradient
through its statistics, and Batch Renorm with limits too wide to clip."""

import pytest
import torch
import torch.nn.functional as F

from bnlab.norm.registry import create_norm
from bnlab.norm.variants.teaching import DetachedBatchNorm, RunningStatsBatchNorm


def _pair(c, **kw):
    torch.manual_seed(0)
    det = DetachedBatchNorm(c, **kw).double()
    bn = torch.nn.BatchNorm1d(c, **kw).double()
    with torch.no_grad():
        for layer in (det, bn):
            if layer.weight is not None:
                layer.weight.copy_(torch.linspace(0.5, 2.0, c))
                layer.bias.copy_(torch.linspace(-1.0, 1.0, c))
    return det, bn


@pytest.mark.parametrize("shape", [(16, 3), (8, 3, 5)])
def test_detached_forward_and_running_stats_are_batchnorms(shape):
    det, bn = _pair(3, momentum=0.3)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 2
    for _ in range(2):  # twice: the running buffers blend as BatchNorm's
        torch.testing.assert_close(det(x), bn(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(det.running_mean, bn.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(det.running_var, bn.running_var, rtol=0, atol=1e-12)
    det.eval()
    bn.eval()
    torch.testing.assert_close(det(x), bn(x), rtol=0, atol=1e-12)


def test_detached_gradient_is_that_of_constant_statistics():
    det, _ = _pair(3)
    x = (torch.randn(8, 3, 5, dtype=torch.float64) * 3 + 2).requires_grad_()
    w = torch.randn(8, 3, 5, dtype=torch.float64)  # a non-uniform upstream gradient
    (det(x) * w).sum().backward()
    c = x.detach().mean(dim=(0, 2))
    s = torch.sqrt(x.detach().var(dim=(0, 2), unbiased=False) + det.eps)

    def constant(x):
        return ((x - c.view(1, 3, 1)) / s.view(1, 3, 1)) * det.weight.view(1, 3, 1) \
            + det.bias.view(1, 3, 1)

    xc = x.detach().clone().requires_grad_()
    (constant(xc) * w).sum().backward()
    torch.testing.assert_close(x.grad, xc.grad, rtol=0, atol=1e-12)
    # ... which is not BatchNorm's: there the gradient also flows through mean and variance
    xb = x.detach().clone().requires_grad_()
    (F.batch_norm(xb, None, None, det.weight, det.bias, True) * w).sum().backward()
    assert not torch.allclose(x.grad, xb.grad, atol=1e-6)


def test_detached_jacobian_and_parameter_gradcheck():
    torch.manual_seed(1)
    det = DetachedBatchNorm(2, track_running_stats=False).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    c = x.detach().mean(dim=(0, 2)).view(1, 2, 1)
    s = torch.sqrt(x.detach().var(dim=(0, 2), unbiased=False) + det.eps).view(1, 2, 1)
    # At the point x the statistics are held fixed: the Jacobian is that of an affine map
    # (gradcheck on x would compare it with finite differences, which move the statistics).
    jac = torch.autograd.functional.jacobian(det, x)
    expected = torch.autograd.functional.jacobian(
        lambda v: (v - c) / s * det.weight.view(1, 2, 1) + det.bias.view(1, 2, 1), x)
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-12)
    # gamma and beta do not move the statistics: their gradient is exact (float64 gradcheck)
    params = (det.weight.detach().clone().requires_grad_(),
              det.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda w, b: torch.func.functional_call(det, {"weight": w, "bias": b}, (x.detach(),)),
        params)


def test_detached_refuses_one_value_per_channel_as_batchnorm():
    det = DetachedBatchNorm(4)
    with pytest.raises(ValueError):
        det(torch.randn(1, 4))


def test_running_stats_at_momentum_one_is_detached_up_to_bessel():
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64) * 2 + 1
    run = RunningStatsBatchNorm(3, momentum=1.0, eps=1e-14).double()
    det = DetachedBatchNorm(3, eps=1e-14).double()
    n = x.shape[0]
    torch.testing.assert_close(run(x) * (n / (n - 1)) ** 0.5, det(x), rtol=0, atol=1e-10)


def test_renorm_wide_normalizes_with_running_averages_in_training():
    layer = create_norm("renorm-wide", 3, 2).double()
    assert layer.schedule is None and layer.rmax >= 100 and layer.dmax >= 100
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
    mu, var = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(64, 3, dtype=torch.float64) * 2 + 1
    y = layer(x)  # training: x_hat = (x - mu) / sigma with the averages before this batch
    torch.testing.assert_close(y, (x - mu) / torch.sqrt(var + layer.eps), rtol=0, atol=1e-10)
    assert create_norm("batch-stats-detached", 3, 4).__class__ is DetachedBatchNorm
