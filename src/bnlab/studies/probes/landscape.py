"""The landscape study's probe: loss range, gradient change and beta-smoothness along -g
(training code: a change here makes the landscape study's runs stale; see
``bnlab.studies.probes``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ETAS", "LandscapeProbe"]

ETAS = (0.5, 1.0, 2.0, 4.0)  # step sizes along -g, times the learning rate


def _grad(p: torch.Tensor) -> torch.Tensor:
    """The gradient of `p` after a backward pass; none reached it: zero."""
    return torch.zeros_like(p) if p.grad is None else p.grad


class LandscapeProbe:
    def __init__(self, every: int, lr: float) -> None:
        self.every, self.lr = every, lr

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with_grad = [(p, p.grad) for p in model.parameters() if p.grad is not None]
        params = [p for p, _ in with_grad]
        w0 = [p.detach().clone() for p in params]
        g0 = [g.detach().clone() for _, g in with_grad]
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        gnorm = math.sqrt(sum(float(g.square().sum()) for g in g0))
        losses, changes, betas = [], [], []
        try:
            for k in ETAS:
                eta = k * self.lr
                with torch.no_grad():
                    for p, w, g in zip(params, w0, g0, strict=True):
                        p.copy_(w - eta * g)
                for p in params:
                    p.grad = None
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                change = math.sqrt(sum(float((_grad(p) - g).square().sum())
                                       for p, g in zip(params, g0, strict=True)))
                losses.append(loss.item())
                changes.append(change)
                betas.append(change / max(eta * gnorm, 1e-12))
        finally:
            with torch.no_grad():
                for p, w, g in zip(params, w0, g0, strict=True):
                    p.copy_(w)
                    p.grad = g
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        if not all(math.isfinite(v) for v in (*losses, *changes)):
            # a step that blew up: no range to measure (max/min would skip a NaN unless first)
            return {"loss_range": math.nan, "grad_change": math.nan, "beta": math.nan,
                    "grad_norm": gnorm}
        return {"loss_range": max(losses) - min(losses), "grad_change": max(changes),
                "beta": max(betas), "grad_norm": gnorm}
