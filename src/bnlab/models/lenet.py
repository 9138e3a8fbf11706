"""LeNet as the textbook writes it, with normalization layers where the BN chapter puts them.

``lenet_bn``: the Batch Normalization chapter's LeNet. A norm layer sits after every
convolution and every hidden linear layer, before the sigmoid; 5x5 convolutions without
padding, so a 28x28 image leaves the second pooling as 16 x 4 x 4 = 256 features.
``pool="max"`` gives the max-pooling variant of one of the seed notebooks.

``lenet``: the LeNet chapter's original (no normalization by default): the first convolution
pads by 2, so 16 x 5 x 5 = 400 features reach the first linear layer.
"""

from __future__ import annotations

from torch import nn

from bnlab.norm.registry import NormSpec, resolve

__all__ = ["lenet", "lenet_bn"]


def _pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if kind == "max":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    raise ValueError(f"pool must be 'avg' or 'max', got {kind!r}")


def _lenet(norm: NormSpec, pool: str, padding: int, flat: int,
           after: bool = False) -> nn.Sequential:
    s1 = 28 + 2 * padding - 4  # first conv output side: 28 padded, 24 otherwise
    s2 = s1 // 2 - 4  # second conv output side: 10 or 8

    def act(c: int, rank: int, spatial: tuple[int, ...] = ()) -> list[nn.Module]:
        """Norm then sigmoid (the chapter), or sigmoid then norm (``after=True``)."""
        layers = resolve(norm, c, rank, spatial)
        return [nn.Sigmoid(), *layers] if after else [*layers, nn.Sigmoid()]

    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=padding), *act(6, 4, (s1, s1)),
        _pool(pool),  # (B,6,28,28)->(B,6,14,14) padded; (B,6,24,24)->(B,6,12,12) otherwise
        nn.Conv2d(6, 16, kernel_size=5), *act(16, 4, (s2, s2)),
        _pool(pool),  # -> (B,16,5,5) padded; (B,16,4,4) otherwise
        nn.Flatten(),  # -> (B, flat)
        nn.Linear(flat, 120), *act(120, 2),
        nn.Linear(120, 84), *act(84, 2),
        nn.Linear(84, 10),
    )


def lenet_bn(norm: NormSpec = "bnlab", pool: str = "avg", after: bool = False) -> nn.Sequential:
    """The BN chapter's LeNet (no padding, 256 features); ``norm="none"`` removes the BN;
    ``after=True`` puts each norm layer after its sigmoid instead of before."""
    return _lenet(norm, pool, padding=0, flat=16 * 4 * 4, after=after)


def lenet(norm: NormSpec = "none", pool: str = "avg") -> nn.Sequential:
    """The LeNet chapter's LeNet (padding 2, 400 features)."""
    return _lenet(norm, pool, padding=2, flat=16 * 5 * 5)
