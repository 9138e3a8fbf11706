"""In-memory batches: the whole split is one uint8 tensor; a batch is one indexing operation.

No per-sample Python and no worker processes: each epoch draws a permutation from a generator
seeded by (seed, epoch), so epoch e's batches are the same whether or not the run was resumed.
With ``part=(rank, world)`` every rank walks the same permutation and yields its share of each
global batch (data-parallel training). A last partial batch that would leave a rank fewer than
two examples joins the batch before it: BatchNorm needs two values per channel in training,
and a batch of one would stop the run in its last step (the example is still trained on).
Scaling follows the textbook's ToTensor (x / 255); mean/std normalization is optional, one
number for grey images or one per channel.

``augment=True`` applies the standard CIFAR augmentation to each batch, on tensors: a random
32x32 crop of the image padded by 4 black pixels, and a horizontal flip with probability 1/2
(torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``). The draws come from
a generator seeded by (seed, epoch) for the whole global batch, so they too are the same after
a resume and whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["BatchLoader", "augment_batch", "draw_augmentation"]

PAD = 4
AUGMENT_STREAM = 2**62  # keeps the augmentation draws apart from the batch order's


def draw_augmentation(n: int, gen: torch.Generator, pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Crop offsets (n, 2) in [0, 2 * pad] and flip flags (n,) for `n` images."""
    return torch.randint(0, 2 * pad + 1, (n, 2), generator=gen), torch.rand(n, generator=gen) < 0.5


def augment_batch(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD) -> Tensor:
    """Crop each of the float (B, C, H, W) images, zero-padded by `pad` (black, as the pixels
    are not normalized yet), at its (row, col) offset, and mirror those with `flips` set."""
    b, _, h, w = x.shape
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B,H,W,C)
    out = out.permute(0, 3, 1, 2)  # -> (B, C, H, W)
    return torch.where(flips[:, None, None, None], out.flip(3), out).contiguous()


def _per_channel(value: float | Sequence[float] | None) -> Tensor | float | None:
    """A scalar as it is; a sequence as a (C, 1, 1) tensor that broadcasts over (B, C, H, W)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return torch.tensor([float(v) for v in value], dtype=torch.float32).reshape(-1, 1, 1)


class BatchLoader:
    """Batches of (images (B, C, H, W) float32, labels (B,) int64) from tensors in memory:
    uint8 images (N, H, W) (grey, C = 1) or (N, C, H, W)."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False,
                 mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None,
                 device: torch.device | str = "cpu", part: tuple[int, int] = (0, 1),
                 augment: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        mean_t, std_t = _per_channel(mean), _per_channel(std)
        if (mean is None) != (std is None) or (std_t is not None and bool(
                torch.as_tensor(std_t).le(0).any())):
            raise ValueError("normalization needs both mean and a positive std (or neither)")
        # (B, H, W) images have one channel, (B, C, H, W) C; others (a user's rows) none here
        channels = images.shape[1] if images.dim() == 4 else 1
        for name, v in (("mean", mean_t), ("std", std_t)):
            if isinstance(v, Tensor) and v.numel() != channels:
                raise ValueError(f"{name} has {v.numel()} values for {channels}-channel images")
        self.images = images.to(device)  # stays uint8: 4x smaller than float
        self.labels = labels.to(device)
        rank, world = part
        if not 0 <= rank < world:
            raise ValueError(f"part must be (rank, world) with 0 <= rank < world, got {part}")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.augment = drop_last, augment
        self.mean = mean_t.to(device) if isinstance(mean_t, Tensor) else mean_t
        self.std = std_t.to(device) if isinstance(std_t, Tensor) else std_t
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

    def to_float(self, images: Tensor, augment: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """uint8 (B, H, W) or (B, C, H, W) -> float32 (B, C, H, W) in [0, 1], augmented with
        `augment` = (offsets, flips) if given, then optionally standardized."""
        x = (images.unsqueeze(1) if images.dim() == 3 else images).to(torch.float32).div_(255.0)
        if augment is not None:
            x = augment_batch(x, *augment)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def global_batch_size(self, i: int) -> int:
        """Examples in global batch `i` (all ranks' shares together)."""
        start, stop = self.spans[i]
        return stop - start

    def _shares(self, epoch: int) -> Iterator[tuple[Tensor, tuple[Tensor, Tensor] | None]]:
        """(example indices, augmentation draws or None) of this rank's share of every global
        batch of `epoch`."""
        idx = self.order(epoch)
        gen = (torch.Generator().manual_seed(AUGMENT_STREAM + self.seed * 1_000_003 + epoch)
               if self.augment else None)
        for start, stop in self.spans:
            take = idx[start:stop]
            if self.world > 1:  # shares differ in size by at most one example
                take = torch.tensor_split(take, self.world)[self.rank]
            draws = None
            if gen is not None:  # drawn for the global batch: the same on every rank
                offsets, flips = draw_augmentation(stop - start, gen)
                share = torch.tensor_split(torch.arange(stop - start), self.world)[self.rank]
                draws = offsets[share], flips[share]
            yield take, draws

    def shares(self, epoch: int = 0) -> Iterator[Tensor]:
        """The example indices of this rank's share of every global batch of `epoch`."""
        for take, _ in self._shares(epoch):
            yield take

    def batches(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of every global batch of `epoch` (the whole batch for one rank)."""
        for take, draws in self._shares(epoch):
            yield self.to_float(self.images[take], draws), self.labels[take]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches(0)
