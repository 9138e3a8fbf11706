"""The MNIST notebook's two small networks, with and without normalization.

``mlp``: 784 -> 100 -> 10 with ReLU, a norm layer after the hidden linear layer.
``mlp3_sigmoid``: Ioffe & Szegedy's 3 x 100 sigmoid MLP (their Figure 1).
``mlp_deep``: a deep ReLU MLP, 784 -> 6 x (linear 128 -> norm -> ReLU) -> 10 (185k weights):
the landscape study's deeper network, cheap enough on CPU for several learning rates and seeds.
``small_cnn``: conv 3x3 (pad 1) -> norm -> ReLU -> max pool -> conv 5x5 -> norm -> ReLU ->
max pool -> linear 400 -> 10.
"""

from __future__ import annotations

from torch import nn

from bnlab.norm.registry import NormSpec, resolve

__all__ = ["mlp", "mlp3_sigmoid", "mlp_deep", "small_cnn"]


def mlp(norm: NormSpec = "bnlab", hidden: int = 100) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),  # (B,1,28,28) -> (B,784)
        nn.Linear(28 * 28, hidden), *resolve(norm, hidden, 2), nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def mlp_deep(norm: NormSpec = "bnlab", hidden: int = 128, depth: int = 6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]  # (B,1,28,28) -> (B,784)
    width = 28 * 28
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), *resolve(norm, hidden, 2), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(hidden, 10))


def small_cnn(norm: NormSpec = "bnlab") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=3, padding=1), *resolve(norm, 6, 4, (28, 28)), nn.ReLU(),
        nn.MaxPool2d(2, 2),  # (B,6,28,28) -> (B,6,14,14)
        nn.Conv2d(6, 16, kernel_size=5), *resolve(norm, 16, 4, (10, 10)), nn.ReLU(),
        nn.MaxPool2d(2, 2),  # (B,16,10,10) -> (B,16,5,5)
        nn.Flatten(),  # -> (B,400)
        nn.Linear(400, 10),
    )


def mlp3_sigmoid(norm: NormSpec = "bnlab", hidden: int = 100) -> nn.Sequential:
    """Ioffe & Szegedy's Figure 1 network: three sigmoid layers of 100 units, a norm layer
    before each sigmoid."""
    layers: list[nn.Module] = [nn.Flatten()]  # (B,1,28,28) -> (B,784)
    width = 28 * 28
    for _ in range(3):
        layers += [nn.Linear(width, hidden), *resolve(norm, hidden, 2), nn.Sigmoid()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(hidden, 10))
