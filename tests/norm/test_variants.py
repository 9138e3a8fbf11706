"""Batch Renorm, Ghost BN, frozen BN and guarded statistics, each against an oracle."""

import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import bnlab
from bnlab.norm.variants import BatchRenorm, FrozenBatchNorm2d, GhostBatchNorm
from bnlab.norm.variants.ghost import virtual_batch_sizes
from bnlab.norm.variants.renorm import renorm_limits

F64 = torch.float64


def steps(a: nn.Module, b: nn.Module, shape, n=4, scale=3.0):
    """Train a and b side by side; assert equal outputs, grads and state at every step."""
    for i in range(n):
        x = torch.randn(shape, dtype=F64) * scale + i
        g = torch.randn(shape, dtype=F64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-12)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-12)
            pa.grad = pb.grad = None
        for k, v in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[k], v, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- Batch Renorm
def test_renorm_with_rmax_1_dmax_0_is_batchnorm():
    steps(BatchRenorm(4, rmax=1.0, dmax=0.0, warmup=False).double(),
          bnlab.BatchNorm(4).double(), (8, 4, 3))


def test_renorm_during_warmup_is_batchnorm():
    steps(BatchRenorm(4).double(), bnlab.BatchNorm(4).double(), (8, 4, 3))


def test_renorm_corrects_towards_running_statistics():
    rn = BatchRenorm(3, rmax=3.0, dmax=5.0, warmup=False).double()
    with torch.no_grad():
        rn.running_mean.fill_(1.0)
        rn.running_var.fill_(4.0)
    x = torch.randn(64, 3, dtype=F64) * 1.5 + 2.0
    y = rn(x)
    # With r and d unclipped (they are well inside the limits here), the training output equals
    # the inference transform with the running statistics the layer held before the step.
    eval_like = (x - 1.0) / torch.sqrt(torch.tensor(4.0, dtype=F64) + rn.eps)
    torch.testing.assert_close(y, eval_like, rtol=0, atol=1e-12)


def test_renorm_clips_r_and_d():
    rn = BatchRenorm(2, rmax=2.0, dmax=0.5, warmup=False).double()
    with torch.no_grad():
        rn.running_mean.fill_(-10.0)  # far away: d saturates at +0.5
        rn.running_var.fill_(1e-4)  # tiny: r saturates at rmax = 2
    x = torch.randn(32, 2, dtype=F64)
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + rn.eps)
    torch.testing.assert_close(rn(x), 2.0 * x_hat + 0.5, rtol=0, atol=1e-12)


def test_renorm_gradcheck_with_clipping_active():
    # Saturated r and d are locally constant, so finite differences see exactly what the
    # closed-form backward computes (r and d carry no gradient by definition).
    def make():
        rn = BatchRenorm(3, rmax=1.5, dmax=0.25, warmup=False).double()
        with torch.no_grad():
            rn.running_mean.fill_(-20.0)
            rn.running_var.fill_(1e-3)
        return rn

    x = torch.randn(6, 3, 2, dtype=F64, requires_grad=True)
    w = torch.rand(3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(x, w, b):
        rn = make()
        rn.weight, rn.bias = nn.Parameter(w), nn.Parameter(b)
        return torch.func.functional_call(rn, {"weight": w, "bias": b}, (x,))

    assert gradcheck(f, (x, w, b))


def test_renorm_schedule_follows_the_paper():
    sched = {"start": 5000, "rmax_end": 40000, "dmax_end": 25000}
    assert renorm_limits(0, 3, 5, sched) == (1.0, 0.0)
    assert renorm_limits(5000, 3, 5, sched) == (1.0, 0.0)
    assert renorm_limits(15000, 3, 5, sched) == pytest.approx((1 + 2 * 10 / 35, 2.5))
    assert renorm_limits(40000, 3, 5, sched) == (3.0, 5.0)
    assert renorm_limits(10, 3, 5, None) == (3, 5)


def test_renorm_needs_running_stats():
    with pytest.raises(ValueError, match="track_running_stats=True"):
        BatchRenorm(3, track_running_stats=False)


# ---------------------------------------------------------------- Ghost BN
def test_ghost_with_large_virtual_batch_is_batchnorm():
    steps(GhostBatchNorm(4, virtual_batch_size=64).double(), bnlab.BatchNorm(4).double(),
          (16, 4, 3))


def test_ghost_normalizes_each_virtual_batch_on_its_own():
    gbn = GhostBatchNorm(3, virtual_batch_size=4, momentum=0.5).double()
    x = torch.randn(10, 3, 5, dtype=F64) * 2 + 1
    y = gbn(x)
    chunks = torch.split(x, [4, 4, 2])
    ref = torch.cat([nn.functional.batch_norm(c, None, None, training=True) for c in chunks])
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    # One running update per call with the count-weighted chunk averages (uneven last chunk).
    counts = torch.tensor([20.0, 20.0, 10.0], dtype=F64) / 50
    means = torch.stack([c.mean(dim=(0, 2)) for c in chunks])
    unb = torch.stack([c.transpose(0, 1).reshape(3, -1).var(dim=1) for c in chunks])
    torch.testing.assert_close(gbn.running_mean, 0.5 * (counts @ means), rtol=0, atol=1e-12)
    torch.testing.assert_close(gbn.running_var, 0.5 + 0.5 * (counts @ unb), rtol=0, atol=1e-12)
    assert int(gbn.num_batches_tracked) == 1


def test_ghost_gradients_match_per_chunk_batchnorm():
    x = torch.randn(9, 2, 3, dtype=F64, requires_grad=True)
    w = torch.rand(2, dtype=F64, requires_grad=True)

    def f(x, w):
        gbn = GhostBatchNorm(2, virtual_batch_size=4, track_running_stats=False).double()
        return torch.func.functional_call(gbn, {"weight": w, "bias": gbn.bias}, (x,))

    assert gradcheck(f, (x, w))


def test_ghost_chunking_rules():
    assert virtual_batch_sizes(10, 4, 5) == [4, 4, 2]
    assert virtual_batch_sizes(9, 4, 1) == [4, 5]  # a 1-value chunk joins its neighbour
    assert virtual_batch_sizes(3, 8, 1) == [3]


# ---------------------------------------------------------------- Frozen BN
def test_frozen_ignores_train_mode_and_never_updates():
    ref = nn.BatchNorm2d(3)
    for _ in range(3):
        ref(torch.randn(8, 3, 4, 4) * 2 + 1)
    ref.eval()
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(ref.state_dict())
    frozen.train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(frozen(x), ref(x), rtol=0, atol=1e-6)
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items())
    assert not frozen.weight.requires_grad
    trainable = FrozenBatchNorm2d(3, freeze_affine=False)
    trainable(x).sum().backward()
    assert trainable.weight.grad is not None
    assert frozen(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # one sample is fine


# ---------------------------------------------------------------- guarded statistics
def test_guard_skips_nonfinite_batches_counts_and_warns_once():
    bn = bnlab.BatchNorm2d(3, guard=True)
    bn(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    bad = torch.randn(4, 3, 2, 2)
    bad[0, 1, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = bn(bad)
        bn(bad * float("inf"))
    assert torch.isnan(out[:, 1]).all() and torch.isfinite(out[:, 0]).all()
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1
    assert int(bn.num_batches_skipped) == 2
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(bn.state_dict()[k], before[k])
    bn(torch.randn(4, 3, 2, 2))  # healthy batches resume updating
    assert int(bn.num_batches_tracked) == 2


def test_unguarded_layer_is_poisoned_for_contrast():
    bn = bnlab.BatchNorm1d(2)
    bn(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))
    assert torch.isnan(bn.running_mean[1])


def test_guard_keeps_torch_state_dict_keys_when_off():
    assert "num_batches_skipped" not in bnlab.BatchNorm2d(3).state_dict()
    assert "num_batches_skipped" in bnlab.BatchNorm2d(3, guard=True).state_dict()
