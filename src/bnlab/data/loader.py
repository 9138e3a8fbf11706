"""In-memory batches: the whole split is one uint8 tensor; a batch is one indexing operation.

No per-sample Python and no worker processes: each epoch draws a permutation from a generator
seeded by (seed, epoch), so epoch e's batches are the same whether or not the run was resumed.
With ``part=(rank, world)`` every rank walks the same permutation and yields its share of each
global batch (data-parallel training). A last partial batch that would leave a rank fewer than
two examples joins the batch before it: BatchNorm needs two values per channel in training,
and a batch of one would stop the run in its last step (the example is still trained on).
Scaling follows the textbook's ToTensor (x / 255); mean/std normalization is optional.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["BatchLoader"]


class BatchLoader:
    """Batches of (images (B, 1, H, W) float32, labels (B,) int64) from tensors in memory."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, mean: float | None = None,
                 std: float | None = None, device: torch.device | str = "cpu",
                 part: tuple[int, int] = (0, 1)) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if (mean is None) != (std is None) or (std is not None and std <= 0):
            raise ValueError("normalization needs both mean and a positive std (or neither)")
        self.images = images.to(device)  # stays uint8: 4x smaller than float
        self.labels = labels.to(device)
        rank, world = part
        if not 0 <= rank < world:
            raise ValueError(f"part must be (rank, world) with 0 <= rank < world, got {part}")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.mean, self.std = drop_last, mean, std
        self.rank, self.world = rank, world
        self.spans = self._spans()

    def _spans(self) -> list[tuple[int, int]]:
        """[start, stop) of every global batch, in order."""
        n, b = self.labels.shape[0], self.batch_size
        bounds = [(s, min(s + b, n)) for s in range(0, n, b)]
        if self.drop_last:
            return [(s, e) for s, e in bounds if e - s == b]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * self.world:
            bounds[-2:] = [(bounds[-2][0], n)]  # too small to split into shares of 2
        return bounds

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def num_examples(self) -> int:
        return sum(e - s for s, e in self.spans)

    def smallest_share(self) -> int:
        """The fewest examples any rank gets in any batch (0 when there are no batches)."""
        return min(((e - s) // self.world for s, e in self.spans), default=0)

    def order(self, epoch: int) -> Tensor:
        """The example order of `epoch`: a permutation seeded by (seed, epoch), or 0..N-1."""
        n = self.labels.shape[0]
        if not self.shuffle:
            return torch.arange(n, device=self.labels.device)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=gen).to(self.labels.device)

    def to_float(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W) -> float32 (B, 1, H, W) in [0, 1], then optionally standardized."""
        x = images.unsqueeze(1).to(torch.float32).div_(255.0)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def global_batch_size(self, i: int) -> int:
        """Examples in global batch `i` (all ranks' shares together)."""
        start, stop = self.spans[i]
        return stop - start

    def shares(self, epoch: int = 0) -> Iterator[Tensor]:
        """The example indices of this rank's share of every global batch of `epoch`."""
        idx = self.order(epoch)
        for start, stop in self.spans:
            take = idx[start:stop]
            if self.world > 1:  # shares differ in size by at most one example
                take = torch.tensor_split(take, self.world)[self.rank]
            yield take

    def batches(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of every global batch of `epoch` (the whole batch for one rank)."""
        for take in self.shares(epoch):
            yield self.to_float(self.images[take]), self.labels[take]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches(0)
