"""A one-minute demonstration: bnlab's BatchNorm against torch.nn's on the textbook's shapes."""

from __future__ import annotations

import torch
from torch import nn

import bnlab
import bnlab.functional as BF

# The four BatchNorm inputs of the textbook LeNet at batch 256.
LENET_SHAPES = [(256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (256, 84)]


def parity_table(dtype: torch.dtype = torch.float64, steps: int = 3) -> list[dict[str, object]]:
    """Train bnlab and torch layers side by side for `steps` steps; report max differences."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in LENET_SHAPES:
        cls_ours = bnlab.BatchNorm2d if len(shape) == 4 else bnlab.BatchNorm1d
        cls_ref = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
        ours, ref = cls_ours(shape[1], dtype=dtype), cls_ref(shape[1], dtype=dtype)
        worst = {"output": 0.0, "grad_input": 0.0, "running_var": 0.0}
        for _ in range(steps):
            x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1
            g = torch.randn(shape, generator=gen, dtype=dtype)
            xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
            yo, yr = ours(xo), ref(xr)
            yo.backward(g)
            yr.backward(g)
            assert xo.grad is not None and xr.grad is not None  # both inputs require grad
            assert ours.running_var is not None and ref.running_var is not None  # tracked
            diffs = {"output": (yo - yr), "grad_input": (xo.grad - xr.grad),
                     "running_var": ours.running_var - ref.running_var}
            for k, d in diffs.items():
                worst[k] = max(worst[k], float(d.detach().abs().max()))
        rows.append({"shape": shape, **worst})
    return rows


def main() -> int:
    print("bnlab", bnlab.__version__, "| torch", torch.__version__)
    x = torch.arange(15, dtype=torch.float32).view(5, 3)
    print("\nThe seed notebook's example: a (5, 3) batch, normalized per column")
    print(BF.batch_norm(x, None, None, training=True))
    print("\nbnlab vs torch.nn, float64, 3 training steps, textbook LeNet shapes at batch 256:")
    print(f"{'input shape':>20} {'max|dy|':>10} {'max|dx|':>10} {'max|drv|':>10}")
    for r in parity_table():
        print(f"{r['shape']!s:>20} {r['output']:10.1e} {r['grad_input']:10.1e} "
              f"{r['running_var']:10.1e}")
    return 0
