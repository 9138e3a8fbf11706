r"""SyncBatchNorm over torch.distributed: batch statistics of the global batch, on any backend.

Each rank holds a share of the batch (shares may differ in size; a share may be empty). Forward:
every rank computes, per channel, its count n_r, mean m_r and sum of squared deviations
M2_r = sum (x - m_r)^2, and all-gathers the (3, C) table. Merging is Chan et al.'s parallel
algorithm, which never subtracts two large numbers::

    n = sum_r n_r,   mu = sum_r n_r m_r / n,   M2 = sum_r (M2_r + n_r (m_r - mu)^2),   var = M2 / n

Every rank then normalizes its share with (mu, var) and folds them into its running buffers
(identical on all ranks). Backward: the input gradient needs the two global sums of the core's
closed form, sum g and sum g * x_hat, so each rank all-reduces its local sums::

    dL/dx = gamma * inv_std / n * (n g - sum g - x_hat * sum g x_hat)

The gradients of gamma and beta are returned *local*, as torch's SyncBatchNorm does: data
parallel training (DDP) all-reduces parameter gradients itself. Before exchanging statistics
the ranks check that they are in the same layer (channel count and call number), so layers run
in a different order on different ranks are an error, not silent garbage or a hang. Works with
gloo (CPU tensors)
and NCCL (CUDA tensors). Outside an initialized process group, or with one rank, the layer is
plain BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

from bnlab.norm.batchnorm import BatchNorm
from bnlab.norm.checks import check_batch_norm_args, check_flags
from bnlab.norm.reference import (
    backward_sums,
    batch_statistics,
    compute_dtype,
    input_grad,
    normalize,
    update_running_stats,
)

__all__ = ["SyncBatchNorm", "sync_batch_statistics"]


def check_in_step(num_features: int, calls: int, group: Any, device: torch.device) -> None:
    """All ranks must be in the same layer: same channel count and the same call number.

    A model whose SyncBatchNorm layers run in a different order on different ranks would
    otherwise exchange statistics between unrelated layers (or hang on mismatched sizes).
    """
    mine = torch.tensor([num_features, calls], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    if any(not torch.equal(t, mine) for t in everyone):
        seen = ", ".join(f"rank {r}: {int(t[0])} channels, call {int(t[1])}"
                         for r, t in enumerate(everyone))
        raise RuntimeError(f"SyncBatchNorm layers are out of step across ranks ({seen}); every "
                           f"rank must run the same layers in the same order")


def sync_batch_statistics(x: Tensor, group: Any = None) -> tuple[Tensor, Tensor, int]:
    """Global per-channel (mean, biased var) and count over every rank's share of the batch."""
    c = x.shape[1]
    n_local = x.numel() // c if x.numel() else 0
    local = torch.zeros(3, c, dtype=torch.float64, device=x.device)
    if n_local:
        mean, var = batch_statistics(x)  # (C,) each
        local[0] = n_local
        local[1] = mean.double()
        local[2] = var.double() * n_local  # M2_r
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered)  # (W, 3, C)
    counts, means, m2s = table[:, 0], table[:, 1], table[:, 2]  # (W, C) each
    total = counts.sum(dim=0)  # (W,C) -> (C,)
    n = int(total[0]) if c else 0
    if n == 0:
        zeros = torch.zeros(c, dtype=torch.float64, device=x.device)
        return zeros, zeros + 1, 0
    mu = (counts * means).sum(dim=0) / total  # (W,C) -> (C,)
    m2 = (m2s + counts * (means - mu).square()).sum(dim=0)  # (W,C) -> (C,)
    return mu, m2 / total, n


class SyncBatchNormFunction(Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
        running_mean: Tensor | None, running_var: Tensor | None, momentum: float, eps: float,
        group: Any, skipped: Tensor | None,
    ) -> Tensor:
        cdtype = compute_dtype(x.dtype)
        mean64, var64, n = sync_batch_statistics(x, group)
        if n == 1:  # the same verdict on every rank: they all see the same global count
            raise ValueError("Expected more than 1 value per channel when training, got 1 "
                             "value per channel summed over all ranks")
        mean, var = mean64.to(cdtype), var64.to(cdtype)
        inv_std = torch.rsqrt(var + eps)
        y = normalize(x, mean, inv_std, weight, bias)
        if running_mean is not None and running_var is not None and n > 1:
            update_running_stats(running_mean, running_var, mean, var, n, momentum, skipped)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.count, ctx.group = n, group
        ctx.bias_dtype = bias.dtype if bias is not None else x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, inv_std = ctx.saved_tensors
        g, x_hat, local_g, local_gx = backward_sums(grad_out, x, mean, inv_std)  # zero if empty
        sums = torch.cat([local_g, local_gx]).double()  # (2C,): every rank takes part
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
        sum_g, sum_gx = sums.to(mean.dtype).chunk(2)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = input_grad(g, x_hat, inv_std, weight, sum_g, sum_gx, ctx.count, x.dtype)
        # Local gamma/beta gradients, as torch's SyncBatchNorm: DDP all-reduces parameters.
        if ctx.needs_input_grad[1] and weight is not None:
            grad_weight = local_gx.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = local_g.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(BatchNorm):
    """BatchNorm's constructor plus ``process_group=None`` (the default group)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True, guard: bool = False, process_group: Any = None) -> None:
        check_flags("SyncBatchNorm", affine=affine, bias=bias, guard=guard,
                    track_running_stats=track_running_stats)
        if process_group is not None and not (dist.is_available()
                                              and isinstance(process_group, dist.ProcessGroup)):
            raise TypeError(f"SyncBatchNorm: process_group must be None (the default group) or "
                            f"a torch.distributed ProcessGroup (dist.new_group(...)), got "
                            f"{process_group!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, guard=guard)
        self.process_group = process_group
        self.sync_calls = 0  # synchronized forwards so far: the ranks must agree on it

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and \
            dist.get_world_size(self.process_group) > 1

    def _has_statistics(self, input: Tensor) -> bool:
        # The global batch counts, not this rank's share (which may be empty).
        return self._distributed() or input.numel() > 0

    def _normalize(self, input: Tensor, running_mean: Tensor | None,
                   running_var: Tensor | None, use_batch_stats: bool, momentum: float,
                   skipped: Tensor | None) -> Tensor:
        if not (use_batch_stats and self._distributed()):
            return super()._normalize(input, running_mean, running_var, use_batch_stats,
                                      momentum, skipped)
        check_batch_norm_args(input, running_mean, running_var, self.weight, self.bias, True,
                              momentum, self.eps, check_batch_size=False)
        self.sync_calls += 1
        check_in_step(self.num_features, self.sync_calls, self.process_group, input.device)
        return SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                           running_var, float(momentum), float(self.eps),
                                           self.process_group, skipped)
