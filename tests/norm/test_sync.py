"""SyncBatchNorm on 2 and 3 gloo processes equals BatchNorm on the concatenated batch.

Each rank holds a share of one global batch; shares are uneven and one may be empty. Compared
in float64 (<= 1e-10): outputs, input gradients, the sum over ranks of the gamma/beta gradients
(each rank returns its local part, as DDP expects) and the running statistics after 3 steps.
"""

import pytest
import torch

import bnlab
from bnlab.norm.variants.sync import SyncBatchNorm
from tests.norm.dist_helpers import run_ranks

STEPS = 3


def global_batches(shares: list[int], shape: tuple[int, ...]) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(7)
    n = sum(shares)
    return [(torch.randn(n, *shape, generator=gen, dtype=torch.float64) * 2 + 1,
             torch.randn(n, *shape, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def rank_slice(shares: list[int], rank: int) -> slice:
    start = sum(shares[:rank])
    return slice(start, start + shares[rank])


def sync_worker(rank: int, world: int, shares: list[int], shape: tuple[int, ...]) -> dict:
    torch.manual_seed(0)
    bn = SyncBatchNorm(shape[0], momentum=None).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    outs, grads, wgrads, bgrads = [], [], [], []
    for x, g in global_batches(shares, shape):
        xs = x[rank_slice(shares, rank)].clone().requires_grad_()
        y = bn(xs)
        y.backward(g[rank_slice(shares, rank)])
        outs.append(y.detach())
        grads.append(xs.grad)
        wgrads.append(bn.weight.grad.clone())
        bgrads.append(bn.bias.grad.clone())
        bn.weight.grad = bn.bias.grad = None
    return {"out": outs, "grad": grads, "wgrad": wgrads, "bgrad": bgrads,
            "state": {k: v.clone() for k, v in bn.state_dict().items()}}


@pytest.mark.parametrize("shares,shape", [
    ([5, 3], (4, 3, 3)),
    ([4, 0, 7], (4, 2, 5)),  # a rank with an empty share
    ([1, 2, 1], (3,)),       # (N, C) inputs, one sample on two ranks
], ids=["2-ranks", "3-ranks-empty", "3-ranks-1d"])
def test_sync_equals_single_process(tmp_path, shares, shape):
    results = run_ranks(sync_worker, len(shares), tmp_path, shares, shape)

    torch.manual_seed(0)
    ref = bnlab.BatchNorm(shape[0], momentum=None).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    for step, (x, g) in enumerate(global_batches(shares, shape)):
        xr = x.clone().requires_grad_()
        y = ref(xr)
        y.backward(g)
        for rank, res in enumerate(results):
            part = rank_slice(shares, rank)
            torch.testing.assert_close(res["out"][step], y.detach()[part], rtol=0, atol=1e-10)
            torch.testing.assert_close(res["grad"][step], xr.grad[part], rtol=0, atol=1e-10)
        wsum = sum(r["wgrad"][step] for r in results)
        bsum = sum(r["bgrad"][step] for r in results)
        torch.testing.assert_close(wsum, ref.weight.grad, rtol=0, atol=1e-10)
        torch.testing.assert_close(bsum, ref.bias.grad, rtol=0, atol=1e-10)
        ref.weight.grad = ref.bias.grad = None
    for res in results:
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(res["state"][k], v, rtol=0, atol=1e-10)


def one_value_worker(rank: int, world: int) -> str:
    bn = SyncBatchNorm(3)
    x = torch.randn(1 if rank == 0 else 0, 3)
    try:
        bn(x)
    except ValueError as e:
        return str(e)
    return "no error"


def test_one_value_across_all_ranks_is_rejected_everywhere(tmp_path):
    msgs = run_ranks(one_value_worker, 2, tmp_path)
    assert all("more than 1 value per channel" in m and "all ranks" in m for m in msgs)


def test_single_process_is_plain_batchnorm():
    sync, ref = SyncBatchNorm(3).double(), bnlab.BatchNorm(3).double()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(sync(x), ref(x), rtol=0, atol=0)


def out_of_order_worker(rank: int, world: int) -> str:
    a, b = SyncBatchNorm(3), SyncBatchNorm(5)
    x3, x5 = torch.randn(4, 3), torch.randn(4, 5)
    try:
        if rank == 0:
            a(x3)
            b(x5)
        else:  # the same layers, the other order
            b(x5)
            a(x3)
    except RuntimeError as e:
        return str(e)
    return "no error"


def test_layers_out_of_step_across_ranks_are_detected(tmp_path):
    msgs = run_ranks(out_of_order_worker, 2, tmp_path)
    for m in msgs:
        assert "out of step across ranks" in m
        assert "rank 0: 3 channels" in m and "rank 1: 5 channels" in m
