"""Measure each bnlab layer against its oracle and print the largest differences (float64).

    python examples/oracle_errors.py

Every comparison here is also a test (tests/norm/); this script prints the measured figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import bnlab
from bnlab.norm.fold import fold
from bnlab.norm.precise import precise_bn
from bnlab.norm.variants import (
    BatchRenorm,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    PerActivationBatchNorm,
)

F64 = torch.float64


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def train_pair(a: nn.Module, b: nn.Module, shape, steps=4, reshape=None) -> float:
    """Largest difference in outputs, input grads, param grads and buffers over `steps`."""
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for i in range(steps):
        x = torch.randn(shape, generator=gen, dtype=F64) * 3 + i
        g = torch.randn(shape, generator=gen, dtype=F64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = a(xa)
        yb = b(xb if reshape is None else xb.reshape(reshape)).reshape(shape)
        ya.backward(g)
        yb.backward(g)
        worst = max(worst, err(ya, yb), err(xa.grad, xb.grad))
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            worst = max(worst, err(pa.grad.flatten(), pb.grad.flatten()))
            pa.grad = pb.grad = None
        for k, v in b.state_dict().items():
            if k in a.state_dict() and v.is_floating_point():
                worst = max(worst, err(a.state_dict()[k].flatten(), v.flatten()))
    return worst


def main() -> None:
    rows: list[tuple[str, str, float]] = []
    rows.append(("BatchNorm2d (train 4 steps)", "torch.nn.BatchNorm2d",
                 train_pair(bnlab.BatchNorm2d(6).double(), nn.BatchNorm2d(6).double(),
                            (8, 6, 5, 5))))
    rows.append(("BatchRenorm rmax=1 dmax=0", "bnlab.BatchNorm",
                 train_pair(BatchRenorm(6, rmax=1, dmax=0, warmup=False).double(),
                            bnlab.BatchNorm(6).double(), (8, 6, 5))))
    rows.append(("GhostBatchNorm vbs >= N", "bnlab.BatchNorm",
                 train_pair(GhostBatchNorm(6, virtual_batch_size=64).double(),
                            bnlab.BatchNorm(6).double(), (16, 6, 3))))
    for groups in (1, 3, 6):
        rows.append((f"GroupNorm(6, {groups})", f"torch.nn.GroupNorm({groups}, 6)",
                     train_pair(GroupNorm(6, groups).double(), nn.GroupNorm(groups, 6).double(),
                                (4, 6, 5, 5))))
    rows.append(("LayerNorm(6)", "torch.nn.GroupNorm(1, 6)",
                 train_pair(LayerNorm(6).double(), nn.GroupNorm(1, 6).double(), (4, 6, 5, 5))))
    rows.append(("InstanceNorm(6, affine)", "torch.nn.InstanceNorm2d(6, affine=True)",
                 train_pair(InstanceNorm(6, affine=True).double(),
                            nn.InstanceNorm2d(6, affine=True).double(), (4, 6, 5, 5))))
    pa, ref = PerActivationBatchNorm(6, (5, 5), affine=False).double(), \
        nn.BatchNorm1d(150, affine=False).double()
    rows.append(("PerActivationBatchNorm", "torch BatchNorm1d on (N, C*H*W)",
                 train_pair(pa, ref, (8, 6, 5, 5), reshape=(8, 150))))

    warm = nn.BatchNorm2d(6).double()
    for _ in range(3):
        warm(torch.randn(8, 6, 4, 4, dtype=F64) + 1)
    frozen = FrozenBatchNorm2d(6).double()
    frozen.load_state_dict(warm.state_dict())
    x = torch.randn(8, 6, 4, 4, dtype=F64)
    rows.append(("FrozenBatchNorm2d in train()", "torch BatchNorm2d in eval()",
                 err(frozen.train()(x), warm.eval()(x))))

    bn = bnlab.BatchNorm2d(6).double()
    data = [torch.randn(n, 6, 4, 4, dtype=F64) * 2 + 1 for n in (7, 13, 5, 9)]
    precise_bn(bn, data, 34)
    allx = torch.cat(data)
    rows.append(("precise_bn (34 samples)", "one pass over the concatenated data",
                 max(err(bn.running_mean, allx.mean((0, 2, 3))),
                     err(bn.running_var, allx.transpose(0, 1).reshape(6, -1).var(1)))))

    model = nn.Sequential(nn.Conv2d(3, 6, 3), bnlab.BatchNorm2d(6), nn.ReLU()).double()
    for _ in range(3):
        model(torch.randn(8, 3, 8, 8, dtype=F64) + 1)
    model.eval()
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    rows.append(("fold(conv + BN)", "the unfolded model in eval", err(fold(model)(x), model(x))))
    x = torch.randn(4, 6, 3, 3, dtype=F64)
    rows.append(("group_norm core", "F.group_norm", err(
        bnlab.norm.variants.group_norm(x, 2), F.group_norm(x, 2))))

    width = max(len(r[0]) for r in rows)
    print(f"{'bnlab':<{width}}  {'oracle':<40} max |difference|")
    for name, oracle, e in rows:
        print(f"{name:<{width}}  {oracle:<40} {e:.1e}")


if __name__ == "__main__":
    main()
