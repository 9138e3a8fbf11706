"""Property-based parity with torch over random shapes, momenta and train/eval sequences."""

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
    return rank, (n, c, *spatial), momentum, affine, track, steps, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_match_torch(scenario):
    rank, shape, momentum, affine, track, steps, seed = scenario
    gen = torch.Generator().manual_seed(seed)
    ours_cls, ref_cls = MODULES[rank]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track, dtype=torch.float64)
    ours, ref = ours_cls(shape[1], **kw), ref_cls(shape[1], **kw)
    for training in steps:
        ours.train(training)
        ref.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        torch.testing.assert_close(yo, yr, rtol=0, atol=1e-10)
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        yo.backward(g)
        yr.backward(g)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=0, atol=1e-10)
        for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert sd_o.keys() == sd_r.keys()
    for k in sd_r:
        torch.testing.assert_close(sd_o[k], sd_r[k], rtol=0, atol=1e-10)
