"""A small VGG for 32x32 images: VGG-11's layout with half its channels.

Eight 3x3 convolutions (padding 1), each followed by a norm layer and ReLU, in five stages that
end with a 2x2 max pool (32 -> 16 -> 8 -> 4 -> 2 -> 1), then one linear classifier on the 256
remaining features (Simonyan & Zisserman's three 4096-wide layers fit ImageNet, not CIFAR).
Convolutions keep their bias, as in the original VGG; with BatchNorm it is redundant but
harmless, and ``norm="none"`` then gives the plain VGG.
"""

from __future__ import annotations

from torch import nn

from bnlab.norm.registry import NormSpec, resolve

__all__ = ["VGG11_HALF", "vgg_cifar"]

# Channels per convolution; "M" is a 2x2 max pool. VGG-11 ("A") is 64 M 128 M 256 256 M 512 512
# M 512 512 M.
VGG11_HALF: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256,
                                     "M")


def vgg_cifar(norm: NormSpec = "bnlab", num_classes: int = 10, in_channels: int = 3,
              layout: tuple[int | str, ...] = VGG11_HALF) -> nn.Sequential:
    """The network for (B, in_channels, 32, 32) inputs."""
    layers: list[nn.Module] = []
    c_in, side = in_channels, 32
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))  # (B,C,s,s) -> (B,C,s/2,s/2)
            side //= 2
            continue
        assert isinstance(item, int)
        layers += [nn.Conv2d(c_in, item, 3, padding=1), *resolve(norm, item, 4, (side, side)),
                   nn.ReLU()]
        c_in = item
    if side < 1:
        raise ValueError(f"layout {layout} pools a 32x32 image below one pixel")
    return nn.Sequential(*layers, nn.Flatten(),  # (B,C,side,side) -> (B, C*side*side)
                         nn.Linear(c_in * side * side, num_classes))
