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
(H) (Bjorck et al. 2018; Santurkar et al. 2018). lambda_max, the largest *algebraic* eigenvalue
(H is indefinite off a minimum), is taken by the Lanczos iteration on Hessian-vector products
Hv = d/dw <dL/dw, v> (double backward through the network, BN included: bnlab's layers,
reference and kernels, support it), on the step's batch, in training mode (batch statistics:
the loss the optimizer descends). From a unit vector q_1 (over the whole parameter list), step
j takes one product w = H q_j, alpha_j = q_j'w, orthogonalizes w against every q_1..q_j (full
reorthogonalization, done twice, so the basis stays orthogonal in floating point and no ghost
copies of an eigenvalue appear), beta_j = ||w||, q_{j+1} = w / beta_j. Then T_k = Q_k'H Q_k is
tridiagonal (alpha on the diagonal, beta_1..beta_{k-1} beside it); its largest eigenvalue theta
(``torch.linalg.eigh`` in float64, unit eigenvector s) and the Ritz vector y = Q_k s satisfy
H y - theta y = beta_k s_k q_{k+1}, so ||H y - theta y|| = |beta_k s_k| and an eigenvalue of H
lies within |beta_k s_k| of theta. By Cauchy interlacing theta <= lambda_max at every k and
grows with k; unlike power iteration, nothing stalls between lambda_max and a lambda_min of
similar magnitude. The iteration stops when |beta_k s_k| <= tol |theta| and theta moved by
at most tol |theta| since the previous step (``converged``; the second condition is a guard,
not a proof: a start with little weight on the top eigenvector makes theta jump once the
Krylov space catches it, and the certificate alone could be met before the jump); a
breakdown beta_k ~ 0 means span(Q_k) is invariant and theta an eigenvalue to rounding) or after
`iters` products (not converged: theta is then only a lower bound). The certificate names *an*
eigenvalue: lambda_max once the Krylov space has caught the top eigenvector, but when a second
eigenvalue lies within a few tol of the top and the start has little weight on the top
eigenvector, the bound can be met first near that second one (an error of about their gap).
Each probe starts from the previous probe's Ritz vector plus a fresh random vector of the same
norm (a warm start: fewer products when the top direction moves little, and never a start with
no weight on a top direction that has moved, which is how a certificate could be met at a
second eigenvalue; a resumed run starts from a random vector alone, which changes the count and
the value within the tolerance).

``WhyProbe`` records, per conv/linear layer k in forward order (``layer1`` = the first):
``weight_norm.k`` = ||W_k|| (the weight only, not the bias), ``grad_norm.k`` = ||dL/dW_k||,
``eff_step.k`` = lr / ||W_k||^2 and ``feeds_norm.k`` (1.0 if the layer's output goes straight
into a normalization layer, whose scale invariance makes the effective step meaningful);
``sharpness`` = lambda_max, ``lr_sharpness`` = lr * lambda_max (stable below 2), ``loss``,
``hvp_products`` (products used; up to ``max_iters``), ``sharpness_converged`` (1.0 when the
residual bound met the tolerance, else 0.0) and ``sharpness_residual`` = |beta_k s_k|. It
leaves parameters, gradients, buffers, mode and the global RNG as found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm.renormalize import is_norm_layer

__all__ = ["Ritz", "WhyProbe", "lanczos", "layers", "weight_stats"]

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


Vector = list[torch.Tensor]  # one tensor per parameter


class Ritz(NamedTuple):
    """The Lanczos estimate of the largest eigenvalue (module docstring)."""

    value: float  # theta, the largest Ritz value (NaN when a product was not finite)
    products: int  # Hessian-vector products used
    converged: bool  # |beta_k s_k| <= tol |theta|, or an invariant subspace was found
    residual: float  # |beta_k s_k| = ||H y - theta y||
    vector: Vector  # the unit Ritz vector y


def _dot(a: Vector, b: Vector) -> float:
    return sum(float(torch.dot(x.flatten().double(), y.flatten().double()))
               for x, y in zip(a, b, strict=True))


def _axpy(alpha: float, x: Vector, y: Vector) -> Vector:
    """y + alpha x."""
    return [t + alpha * u for u, t in zip(x, y, strict=True)]


def lanczos(hvp: Callable[[Vector], Vector], shapes: Sequence[torch.Tensor], *, iters: int,
            tol: float, generator: torch.Generator, start: Vector | None = None) -> Ritz:
    """The largest (algebraic) eigenvalue of the symmetric operator `hvp` (a list of tensors
    shaped like `shapes` in, the same out) by Lanczos with full reorthogonalization (module
    docstring): at most `iters` products, stopped when the residual bound |beta_k s_k| is at
    most `tol` |theta|. It starts from `start` (a warm start) or a random vector drawn from
    `generator` (not the global RNG); it keeps k + 1 vectors the size of the parameters."""
    if iters < 1 or not tol > 0:
        raise ValueError(f"lanczos needs iters >= 1 and tol > 0, got iters={iters}, tol={tol}: "
                         "pass a positive product budget and tolerance")
    q = start
    if q is None or not math.isfinite(norm := math.sqrt(_dot(q, q))) or norm == 0.0:
        q = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
             for p in shapes]
        norm = math.sqrt(_dot(q, q))
    basis = [[t / norm for t in q]]
    alpha: list[float] = []
    beta: list[float] = []
    last = math.nan  # the previous step's theta: the stop needs two steps that agree
    for k in range(1, iters + 1):
        w = [t.detach() for t in hvp(basis[-1])]
        alpha.append(_dot(basis[-1], w))
        if not math.isfinite(alpha[-1]) or not all(bool(t.isfinite().all()) for t in w):
            return Ritz(math.nan, k, False, math.nan, basis[-1])
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            for u in basis:
                w = _axpy(-_dot(u, w), u, w)
        b = math.sqrt(_dot(w, w))
        t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(beta, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        theta, s = float(evals[-1]), evecs[:, -1]
        residual = b * abs(float(s[-1]))
        # breakdown: w is rounding noise, span(Q_k) is invariant and theta an eigenvalue
        invariant = b <= 4 * torch.finfo(w[0].dtype).eps * float(evals.abs().max())
        certified = residual <= tol * abs(theta) and abs(theta - last) <= tol * abs(theta)
        if certified or invariant or k == iters:
            vector = [sum((float(c) * u[i] for c, u in zip(s, basis, strict=True)),
                          torch.zeros_like(basis[0][i])) for i in range(len(basis[0]))]
            return Ritz(theta, k, certified or invariant, residual, vector)
        last = theta
        beta.append(b)
        basis.append([v / b for v in w])
    raise AssertionError("unreachable: the loop returns at k == iters")


class WhyProbe:
    """Weight and gradient norms per layer, effective steps and the sharpness (module
    docstring), every `every` steps, at learning rate `lr`; the sharpness every `sharp_every`
    probes, by Lanczos with at most `iters` products to relative residual `tol`."""

    def __init__(self, every: int, lr: float, *, sharp_every: int = 1, iters: int = 20,
                 tol: float = 1e-2, seed: int = 0) -> None:
        if iters < 1 or not tol > 0:
            raise ValueError(f"WhyProbe needs iters >= 1 and tol > 0, got iters={iters}, "
                             f"tol={tol}: pass a positive product budget and tolerance")
        self.every, self.lr, self.sharp_every = every, lr, sharp_every
        self.iters, self.tol = iters, tol
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0
        # The last Ritz vector: the next probe starts from it (module docstring).
        self.start: Vector | None = None

    def _start(self, params: Sequence[torch.Tensor]) -> Vector | None:
        """The last Ritz vector (unit norm) plus a random vector of norm 1 from the probe's
        generator (module docstring); None before the first probe."""
        if self.start is None:
            return None
        noise = [torch.randn(p.shape, generator=self.generator, dtype=p.dtype).to(p.device)
                 for p in params]
        r, m = math.sqrt(_dot(self.start, self.start)), math.sqrt(_dot(noise, noise))
        return [t / r + n / m for t, n in zip(self.start, noise, strict=True)]

    def sharpness(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Ritz, float]:
        """The Lanczos estimate of lambda_max and the loss of the batch's mean loss, in
        training mode."""
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = model(x)  # the loss in float32 at least, as the training step takes it
            loss = F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(),
                                   y)
            grads = torch.autograd.grad(loss, params, create_graph=True)

            def hvp(v: Vector) -> Vector:
                out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True,
                                          allow_unused=True)
                return [torch.zeros_like(p) if h is None else h
                        for p, h in zip(params, out, strict=True)]

            ritz = lanczos(hvp, params, iters=self.iters, tol=self.tol,
                           generator=self.generator, start=self._start(params))
        self.start = ritz.vector if math.isfinite(ritz.value) else None
        return ritz, float(loss.detach())

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
            ritz, loss = self.sharpness(model, x, y)
        finally:
            model.train(was)
            torch.set_rng_state(rng)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            for p, g in grads.items():
                p.grad = g
        return {**out, "sharpness": ritz.value, "lr_sharpness": self.lr * ritz.value,
                "loss": loss, "hvp_products": float(ritz.products),
                "max_iters": float(self.iters),
                "sharpness_converged": 1.0 if ritz.converged else 0.0,
                "sharpness_residual": ritz.residual}
