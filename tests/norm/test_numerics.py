"""Statistics stay accurate where the naive one-pass formula E[x^2] - E[x]^2 fails."""

import torch

import bnlab.functional as BF
from bnlab.functional import batch_statistics


def test_large_offset_variance_is_accurate_in_float32():
    # Mean 1e4, std 1: E[x^2] ~ 1e8, so one-pass float32 loses every digit of the variance.
    x64 = torch.randn(4096, 4, dtype=torch.float64) + 1e4
    x = x64.float()
    _, var = batch_statistics(x)
    truth = x.double().var(dim=0, unbiased=False)
    assert float(((var.double() - truth) / truth).abs().max()) < 1e-4
    naive = (x * x).mean(0) - x.mean(0) ** 2  # what bnlab must not do
    assert float(((naive.double() - truth) / truth).abs().max()) > 1e-2
    y = BF.batch_norm(x, None, None, training=True)
    assert float((y.double().std(0, unbiased=False) - 1).abs().max()) < 1e-3


def test_statistics_shapes_and_dtype():
    mean, var = batch_statistics(torch.randn(2, 5, 3, 3).half())
    assert mean.shape == var.shape == (5,) and mean.dtype == torch.float32
