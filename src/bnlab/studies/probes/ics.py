"""The ics study's probe: per-unit percentiles of the last hidden layer's input (training code:
a change here makes the ics study's runs stale; see ``bnlab.studies.probes``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnlab.data import load_split

__all__ = ["PERCENTILES", "POOL", "UnitInputProbe"]

PERCENTILES = (0.15, 0.5, 0.85)
POOL = 10_000  # training images the noise floor's second batch is drawn from


class UnitInputProbe:
    """Per-unit percentiles of the last hidden layer's input, in training mode, on the step's
    batch and on a second batch (the noise floor); test accuracy in eval mode on a subset.

    Leaves the model's parameters, gradients, buffers, mode and the global RNG as found: the
    second forward re-draws the injected noise of the first (noisy BN), then the RNG is reset.
    """

    def __init__(self, every: int, n_test: int, pool: int = POOL, seed: int = 0) -> None:
        def images(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            s = load_split("fashion-mnist", split, log=lambda m: None)
            return s.images[:n].unsqueeze(1).float().div(255), s.labels[:n]  # (n,1,28,28)

        self.every = every
        self.test_x, self.test_y = images("test", n_test)
        self.pool, _ = images("train", pool)
        self.gen = torch.Generator().manual_seed(seed)
        self.prev: torch.Tensor | None = None  # the previous probe's percentiles (3, H)

    @staticmethod
    def _last_sigmoid(model: nn.Module) -> nn.Module:
        sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
        if not sigmoids:
            raise ValueError("the unit-input probe hooks the model's last nn.Sigmoid, and this "
                             "model has none (a fused model? train it with fuse=False)")
        return sigmoids[-1]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        seen: list[torch.Tensor] = []
        hook = self._last_sigmoid(model).register_forward_pre_hook(
            lambda m, a: seen.append(a[0].detach()))
        other = self.pool[torch.randint(len(self.pool), (x.shape[0],), generator=self.gen)]
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        rng, was = torch.get_rng_state(), model.training
        try:
            with torch.no_grad():
                model.train()
                model(x)
                torch.set_rng_state(rng)  # the same injected noise for both batches
                model(other.to(x.device))
                model.eval()
                acc = float((model(self.test_x.to(x.device)).argmax(1).cpu()
                             == self.test_y).float().mean())
        finally:
            hook.remove()
            model.train(was)
            torch.set_rng_state(rng)
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        levels = torch.tensor(PERCENTILES, dtype=torch.float64)
        q = torch.quantile(seen[0].double().cpu(), levels, dim=0)  # (B,H) -> (3,H)
        q_other = torch.quantile(seen[1].double().cpu(), levels, dim=0)
        # The move since the previous probe of this run (None at the first, and at the first
        # after a resume: this object's memory is not in the checkpoint).
        drift = None if self.prev is None else float((q - self.prev).abs().mean())
        self.prev = q
        return {"test_acc": acc, "noise": float((q - q_other).abs().mean()), "drift": drift,
                "width": float((q[-1] - q[0]).mean()),
                **{f"p{round(100 * v)}": float(q[k, 0]) for k, v in enumerate(PERCENTILES)}}
