"""Colour images in the loader: per-channel normalization, random crop and flip per batch."""

import pytest
import torch

from bnlab.data.loader import PAD, BatchLoader, augment_batch


def _images(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.arange(n) % 10)


def test_centre_crop_without_flip_is_the_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 32, 32)
    centre = torch.full((2, 2), PAD)
    assert torch.equal(augment_batch(x, centre, torch.tensor([False, False])), x)
    assert torch.equal(augment_batch(x, centre, torch.tensor([True, False]))[0], x[0].flip(2))


def test_crop_shifts_and_pads_with_black():
    x = torch.rand(1, 3, 32, 32) + 1  # no zero pixels of its own
    out = augment_batch(x, torch.tensor([[0, 8]]), torch.tensor([False]))  # up 4, right 4
    assert torch.equal(out[0, :, 4:, :28], x[0, :, :28, 4:])
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, 28:] == 0).all()


def test_per_channel_normalization():
    images, labels = _images()
    loader = BatchLoader(images, labels, 4, shuffle=False, mean=[0.1, 0.2, 0.3],
                         std=[0.5, 0.25, 2.0])
    x, _ = next(iter(loader))
    raw = images[:4].float() / 255
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)]):
        torch.testing.assert_close(x[:, c], (raw[:, c] - m) / s)
    with pytest.raises(ValueError, match="mean has 2 values for 3-channel images"):
        BatchLoader(images, labels, 4, mean=[0.1, 0.2], std=[1.0, 1.0])
    with pytest.raises(ValueError, match="positive std"):
        BatchLoader(images, labels, 4, mean=[0, 0, 0], std=[1.0, 0.0, 1.0])


def test_augmentation_depends_on_seed_and_epoch_only_and_is_shared_by_ranks():
    images, labels = _images()

    def epoch(seed: int, e: int, part=(0, 1)) -> torch.Tensor:
        loader = BatchLoader(images, labels, 6, seed=seed, augment=True, part=part)
        return torch.cat([x for x, _ in loader.batches(e)])

    plain = torch.cat([x for x, _ in BatchLoader(images, labels, 6, seed=0).batches(0)])
    first = epoch(0, 0)
    assert first.shape == plain.shape and not torch.equal(first, plain)
    assert torch.equal(first, epoch(0, 0))  # a resumed run sees the same batches
    assert not torch.equal(first, epoch(0, 1)) and not torch.equal(first, epoch(1, 0))
    # Two ranks: each share is augmented as the whole batch would be on one rank.
    ranks = [BatchLoader(images, labels, 6, seed=0, augment=True, part=(r, 2)) for r in (0, 1)]
    shares = [list(loader.batches(0)) for loader in ranks]
    joined = torch.cat([torch.cat([shares[0][i][0], shares[1][i][0]]) for i in range(2)])
    assert torch.equal(joined, first)


def test_grey_images_still_get_one_channel():
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.long)
    x, _ = next(iter(BatchLoader(images, labels, 4, shuffle=False, mean=0.5, std=0.5)))
    assert x.shape == (4, 1, 28, 28)
    torch.testing.assert_close(x[:, 0], (images.float() / 255 - 0.5) / 0.5)
