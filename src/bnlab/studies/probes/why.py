"""What BN does to the step size: weight norms, effective steps, gradients and sharpness.

For a weight matrix W whose output feeds a BatchNorm (batch statistics), the layer's output is
invariant to the scale of W: BN(a W x) = BN(W x) for a > 0. Two consequences (van Laarhoven
2017; Arora, Li & Lyu 2019), with L the loss and g = dL/dW:

* g is orthogonal to W (d/da L(aW) = <g, W> = 0) and scales as 1/||W||: g(aW) = g(W) / a.
* a step W - lr g moves the *direction* W/||W|| by about lr ||g(W/||W||)|| / ||W||^2: the
  effective step is lr / ||W||^2. Because g is orthogonal to W, every step grows the norm,
  ||W - lr g||^2 = ||W||^2 + lr^2 ||g||^2, so the effective step shrinks by itself
  (auto-tuning): a too large rate inflates ||W|| until its effective step is small enough.

Sharpness: a gradient step on a quadratic with Hessian H is stable only if lr < 2 / lambda_max
(H) (Bjorck et al. 2018; Santurkar et al. 2018). lambda_max is taken by power iteration on
Hessian-vector products Hv = d/dw <dL/dw, v> (double backward through the network, BN
included: bnlab's layers, reference and kernels, support it), on the step's batch, in
training mode (batch statistics: the loss the optimizer descends). Power iteration converges
to the eigenvalue of largest magnitude; when that is negative (as it can be at
initialization), a second run on H - lambda_1 I gives the largest (``top_eigenvalue``).

``WhyProbe`` records, per conv/linear layer k in forward order (``layer1`` = the first):
``weight_norm.k`` = ||W_k|| (the weight only, not the bias), ``grad_norm.k`` = ||dL/dW_k||,
``eff_step.k`` = lr / ||W_k||^2 and ``feeds_norm.k`` (1.0 if the layer's output goes straight
into a normalization layer, whose scale invariance makes the effective step meaningful);
``sharpness`` = lambda_max, ``lr_sharpness`` = lr * lambda_max (stable below 2), ``loss`` and
``power_iters`` (products used; up to ``max_iters``). It leaves parameters, gradients,
buffers, mode and the global RNG as found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm.renormalize import is_norm_layer

__all__ = ["WhyProbe", "layers", "power_iteration", "top_eigenvalue", "weight_stats"]

WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
# Modules that do not change scale invariance between a weight and the norm after it.
_PASS = (nn.Identity, nn.Flatten)


def layers(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every conv/linear layer in forward (registration) order, and whether its output goes
    straight into a normalization layer (the next leaf module, skipping Identity/Flatten)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    out: list[tuple[nn.Module, bool]] = []
    for i, m in enumerate(leaves):
        if not isinstance(m, WEIGHTED):
            continue
        nxt = next((n for n in leaves[i + 1:] if not isinstance(n, _PASS)), None)
        out.append((m, nxt is not None and is_norm_layer(nxt)))
    return out


def weight_stats(model: nn.Module, lr: float) -> dict[str, float]:
    """Per layer (``layer1``, ...): ||W||, ||dL/dW|| (0 without a gradient), lr/||W||^2 and
    whether it feeds a norm layer."""
    out: dict[str, float] = {}
    for k, (m, feeds) in enumerate(layers(model), 1):
        weight = m.weight
        assert isinstance(weight, torch.Tensor)  # a conv/linear layer's (``layers``)
        norm = float(torch.linalg.vector_norm(weight.detach().double()))
        g = weight.grad
        out[f"weight_norm.layer{k}"] = norm
        out[f"grad_norm.layer{k}"] = 0.0 if g is None else float(
            torch.linalg.vector_norm(g.double()))
        out[f"eff_step.layer{k}"] = lr / norm ** 2 if norm > 0 else math.inf
        out[f"feeds_norm.layer{k}"] = 1.0 if feeds else 0.0
    return out


def power_iteration(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                    shapes: Sequence[torch.Tensor], *, iters: int, tol: float,
                    generator: torch.Generator, start: list[torch.Tensor] | None = None
                    ) -> tuple[float, int, list[torch.Tensor]]:
    """The eigenvalue of largest magnitude of the symmetric operator `hvp` (a list of tensors
    shaped like `shapes` in, the same out), the products used and the last vector: v <- Hv /
    ||Hv|| from `start` (a warm start: the previous probe's vector) or a random v (drawn from
    `generator`, not the global RNG), until the Rayleigh quotient v'Hv changes by less than
    `tol` relative, or `iters` products."""
    v = start if start is not None else [
        torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in shapes]
    lam = math.nan
    for i in range(1, iters + 1):
        scale = math.sqrt(sum(float(t.square().sum()) for t in v))
        v = [t / scale for t in v]
        hv = hvp(v)
        new = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))  # v'Hv, ||v|| = 1
        if not math.isfinite(new):
            return math.nan, i, v
        if math.isfinite(lam) and abs(new - lam) <= tol * abs(new):
            return new, i, v
        lam, v = new, [t.detach() for t in hv]
        if sum(float(t.square().sum()) for t in v) == 0.0:  # H v = 0: v is in the kernel
            return 0.0, i, v
    return lam, iters, v


def top_eigenvalue(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                   shapes: Sequence[torch.Tensor], *, iters: int, tol: float,
                   generator: torch.Generator, start: list[torch.Tensor] | None = None
                   ) -> tuple[float, int, list[torch.Tensor]]:
    """The largest (most positive) eigenvalue: power iteration finds the one of largest
    magnitude, lambda_1; if that is negative, a second run on the shifted operator
    H - lambda_1 I (whose eigenvalues are all >= 0, the largest lambda_max - lambda_1) finds
    lambda_max. The shifted run converges more slowly (its top two eigenvalues are both
    shifted up by |lambda_1|), so it gets twice the products. Returns (lambda_max, products
    used, the last vector of the first run)."""
    lam, n, v = power_iteration(hvp, shapes, iters=iters, tol=tol, generator=generator,
                                start=start)
    if not (math.isfinite(lam) and lam < 0):
        return lam, n, v

    def shifted(u: list[torch.Tensor]) -> list[torch.Tensor]:
        return [h - lam * t for h, t in zip(hvp(u), u, strict=True)]

    top, m, _ = power_iteration(shifted, shapes, iters=2 * iters, tol=tol / 10,
                                generator=generator)
    return top + lam, n + m, v


class WhyProbe:
    """Weight and gradient norms per layer, effective steps and the sharpness (module
    docstring), every `every` steps, at learning rate `lr`."""

    def __init__(self, every: int, lr: float, *, sharp_every: int = 1, iters: int = 20,
                 tol: float = 1e-2, seed: int = 0) -> None:
        self.every, self.lr, self.sharp_every = every, lr, sharp_every
        self.iters, self.tol = iters, tol
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0
        # The last eigenvector estimate: the next probe starts from it (fewer products; a
        # resumed run starts afresh, which changes the count, not the converged value).
        self.start: list[torch.Tensor] | None = None

    def sharpness(self, model: nn.Module, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[float, float, int]:
        """(lambda_max, loss, iterations) of the batch's mean loss, in training mode."""
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = model(x)  # the loss in float32 at least, as the training step takes it
            loss = F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(),
                                   y)
            grads = torch.autograd.grad(loss, params, create_graph=True)

            def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
                return list(torch.autograd.grad(grads, params, grad_outputs=v,
                                                retain_graph=True, allow_unused=True))

            lam, n, v = top_eigenvalue(
                lambda v: [torch.zeros_like(p) if h is None else h
                           for p, h in zip(params, hvp(v), strict=True)],
                params, iters=self.iters, tol=self.tol, generator=self.generator,
                start=self.start)
        self.start = v if math.isfinite(lam) else None
        return lam, float(loss.detach()), n

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = weight_stats(model, self.lr)
        due, self.calls = self.calls % self.sharp_every == 0, self.calls + 1
        if not due:
            return out
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        grads = {p: p.grad for p in model.parameters()}
        rng, was = torch.get_rng_state(), model.training
        try:
            model.train()
            lam, loss, n = self.sharpness(model, x, y)
        finally:
            model.train(was)
            torch.set_rng_state(rng)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            for p, g in grads.items():
                p.grad = g
        return {**out, "sharpness": lam, "lr_sharpness": self.lr * lam, "loss": loss,
                "power_iters": float(n), "max_iters": float(3 * self.iters)}
