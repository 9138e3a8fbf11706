"""Noisy BatchNorm is BN times a random per-unit scale plus shift in training, plain BN in eval;
the "gaussian-STD" init draws N(0, STD^2) weights and zero biases."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm.registry import create_norm
from bnlab.norm.variants import NoisyBatchNorm
from bnlab.train import TrainConfig
from bnlab.train.build import make_model

F64 = torch.float64


def test_training_output_is_bn_times_random_scale_plus_shift():
    layer = NoisyBatchNorm(5, scale=(0.5, 2.0), shift=1.0).double()
    x = torch.randn(16, 5, dtype=F64) * 3 + 2
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    u = torch.rand(2, 5, dtype=F64)  # the layer's draw: scale from u[0], shift from u[1]
    s, m = 0.5 + 1.5 * u[0], 2 * u[1] - 1
    expected = F.batch_norm(x, None, None, layer.weight, layer.bias, True) * s + m
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert bool((s != 1).all() and (m != 0).all())  # the noise is really there
    # the running statistics are BN's: of the input, before the noise
    torch.testing.assert_close(layer.running_mean, 0.1 * x.mean(0), rtol=0, atol=1e-12)
    assert not torch.allclose(layer(x), layer(x))  # a new draw every training step


def test_eval_mode_is_plain_batchnorm_and_draws_nothing():
    noisy, plain = NoisyBatchNorm(4, momentum=0.3), nn.BatchNorm1d(4, momentum=0.3)
    x = torch.randn(32, 4, 3) * 2 + 1
    for _ in range(3):
        noisy(x), plain(x)
    torch.testing.assert_close(noisy.running_var, plain.running_var)
    noisy.eval(), plain.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(noisy(x), plain(x))
    assert torch.equal(torch.get_rng_state(), state)


def test_registry_and_bad_noise_ranges():
    layer = create_norm("noisy-bn", 6, 4)
    assert isinstance(layer, NoisyBatchNorm) and layer(torch.randn(4, 6, 3, 3)).shape == (4, 6, 3,
                                                                                         3)
    with pytest.raises(ValueError, match="scale"):
        NoisyBatchNorm(3, scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="shift"):
        NoisyBatchNorm(3, shift=float("nan"))


def test_gaussian_init_has_the_asked_std_and_zero_biases():
    model = make_model(TrainConfig(model="mlp3", norm="none", init="gaussian-0.01", fuse=False))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    first = linears[0].weight.detach()  # 100 x 784: 78,400 draws, the std within 1%
    assert abs(float(first.std()) - 0.01) < 1e-4 and abs(float(first.mean())) < 1e-4
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    wide = make_model(TrainConfig(model="mlp3", norm="none", init="gaussian-0.5", fuse=False))
    assert abs(float(next(wide.parameters()).detach().std()) - 0.5) < 5e-3


@pytest.mark.parametrize("bad", ["gaussian-0", "gaussian--1", "gaussian-x", "gaussian-inf",
                                 "gaussian"])
def test_gaussian_init_rejects_bad_std(bad):
    with pytest.raises(ValueError, match="invalid init"):
        TrainConfig(init=bad)
