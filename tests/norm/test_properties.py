"""Property-based parity with torch over random shapes, dtypes, memory formats, momenta,
affine/tracking flags and train/eval sequences: 300 cases in `make test`, 3000 in the slow
suite (`make test-slow`).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import bnlab

MODULES = {2: (bnlab.BatchNorm1d, nn.BatchNorm1d), 3: (bnlab.BatchNorm1d, nn.BatchNorm1d),
           4: (bnlab.BatchNorm2d, nn.BatchNorm2d), 5: (bnlab.BatchNorm3d, nn.BatchNorm3d)}


@st.composite
def scenarios(draw):
    rank = draw(st.integers(2, 5))
    c = draw(st.integers(1, 6))
    n = draw(st.integers(2, 6))
    spatial = [draw(st.integers(1, 4)) for _ in range(rank - 2)]
    momentum = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    affine = draw(st.booleans())
    track = draw(st.booleans())
    steps = draw(st.lists(st.booleans(), min_size=1, max_size=5))  # True = training step
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    channels_last = rank in (4, 5) and draw(st.booleans())
    return rank, (n, c, *spatial), momentum, affine, track, steps, seed, dtype, channels_last


def close(a, b, dtype):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    else:  # float32 contract: 1e-5 relative to the tensor's scale
        scale = max(float(b.detach().abs().max()), 1.0)
        assert float((a - b).detach().abs().max()) <= 1e-5 * scale


def check_scenario(scenario):
    rank, shape, momentum, affine, track, steps, seed, dtype, channels_last = scenario
    gen = torch.Generator().manual_seed(seed)
    ours_cls, ref_cls = MODULES[rank]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track, dtype=dtype)
    ours, ref = ours_cls(shape[1], **kw), ref_cls(shape[1], **kw)
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(rank, torch.contiguous_format)
    for training in steps:
        ours.train(training)
        ref.train(training)
        x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1
        if channels_last:
            x = x.contiguous(memory_format=fmt)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        close(yo, yr, dtype)
        g = torch.randn(shape, generator=gen, dtype=dtype)
        yo.backward(g)
        yr.backward(g)
        close(xo.grad, xr.grad, dtype)
        for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            close(a.grad, b.grad, dtype)
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert sd_o.keys() == sd_r.keys()
    for k in sd_r:
        if sd_r[k].is_floating_point():
            close(sd_o[k], sd_r[k], dtype)
        else:
            assert torch.equal(sd_o[k], sd_r[k]), k


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=300, **SETTINGS)
@given(scenarios())
def test_random_scenarios_match_torch(scenario):
    check_scenario(scenario)


@pytest.mark.slow
@settings(max_examples=3000, **SETTINGS)
@given(scenarios())
def test_random_scenarios_match_torch_many(scenario):
    check_scenario(scenario)
