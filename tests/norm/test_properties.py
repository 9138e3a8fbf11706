"""Property-based parity with torch over random shapes, dtypes, memory formats, momenta,
affine/tracking flags and train/eval sequences: 300 cases in `make test`, 3000 in the slow
suite (`make test-slow`).
"""

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
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


def close(a, b, truth, dtype):
    """float64: within 1e-10 of torch. float32: within 1e-5 of torch relative to the tensor's
    scale, or, where the input is ill-conditioned (a channel whose values nearly cancel, so no
    float32 result can be that accurate), no further from the float64 truth than twice torch's
    own distance from it."""
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        return
    scale = max(float(b.detach().abs().max()), 1.0)
    if float((a - b).detach().abs().max()) <= 1e-5 * scale:
        return
    ours = float((a.double() - truth).detach().abs().max())
    theirs = float((b.double() - truth).detach().abs().max())
    assert ours <= max(2 * theirs, 1e-5 * scale)


def check_scenario(scenario):
    rank, shape, momentum, affine, track, steps, seed, dtype, channels_last = scenario
    gen = torch.Generator().manual_seed(seed)
    ours_cls, ref_cls = MODULES[rank]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours, ref = ours_cls(shape[1], dtype=dtype, **kw), ref_cls(shape[1], dtype=dtype, **kw)
    exact = ref_cls(shape[1], dtype=torch.float64, **kw)  # the float64 truth, in lockstep
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(rank, torch.contiguous_format)
    for training in steps:
        for m in (ours, ref, exact):
            m.train(training)
        x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1
        if channels_last:
            x = x.contiguous(memory_format=fmt)
        xo, xr, xe = (x.clone().requires_grad_(), x.clone().requires_grad_(),
                      x.double().requires_grad_())
        yo, yr, ye = ours(xo), ref(xr), exact(xe)
        close(yo, yr, ye, dtype)
        g = torch.randn(shape, generator=gen, dtype=dtype)
        yo.backward(g)
        yr.backward(g)
        ye.backward(g.double())
        close(xo.grad, xr.grad, xe.grad, dtype)
        for (_, a), (_, b), (_, e) in zip(ours.named_parameters(), ref.named_parameters(),
                                          exact.named_parameters(), strict=True):
            close(a.grad, b.grad, e.grad, dtype)
    sd_o, sd_r, sd_e = ours.state_dict(), ref.state_dict(), exact.state_dict()
    assert sd_o.keys() == sd_r.keys()
    for k in sd_r:
        if sd_r[k].is_floating_point():
            close(sd_o[k], sd_r[k], sd_e[k], dtype)
        else:
            assert torch.equal(sd_o[k], sd_r[k]), k


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# A fixed set of 300 (derandomized) keeps `make test` reproducible; the slow suite explores.
@settings(max_examples=300, derandomize=True, **SETTINGS)
@given(scenarios())
# Found by a random run: float32, two samples, a channel whose two values nearly cancel.
@example((2, (2, 5), None, False, False, [False, False, False], 3, torch.float32, False))
def test_random_scenarios_match_torch(scenario):
    check_scenario(scenario)


@pytest.mark.slow
@settings(max_examples=3000, **SETTINGS)
@given(scenarios())
def test_random_scenarios_match_torch_many(scenario):
    check_scenario(scenario)
