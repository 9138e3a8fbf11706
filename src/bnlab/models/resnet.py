"""ResNet-18 for 32x32 images (CIFAR), with a norm layer wherever the paper puts BatchNorm.

He et al.'s ImageNet ResNet-18 opens with a 7x7 stride-2 convolution and a max pool, which
would leave a 32x32 image 8x8 before the first block. The CIFAR stem keeps the resolution: one
3x3 convolution, stride 1, no pool. Then four stages of two BasicBlocks (64, 128, 256, 512
channels; the last three halve the side), global average pooling and one linear layer.

BasicBlock: ``relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x))``; the shortcut is
the identity, or a 1x1 convolution + norm where the shape changes. Convolutions have no bias
(the norm layer's beta is one). With BatchNorm: 11,173,962 parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from bnlab.norm.registry import NormSpec, resolve

__all__ = ["BasicBlock", "resnet18_cifar"]


def _conv_norm(c_in: int, c_out: int, kernel: int, stride: int, norm: NormSpec,
               side: int) -> list[nn.Module]:
    """conv (no bias) then the norm layer for its (B, c_out, side, side) output."""
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            *resolve(norm, c_out, 4, (side, side))]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection; `side` is the output's side."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: NormSpec, side: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_norm(c_in, c_out, 3, stride, norm, side), nn.ReLU(),
                                  *_conv_norm(c_out, c_out, 3, 1, norm, side))
        # Identity when the shape is kept; else project x to (B, c_out, side, side).
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(*_conv_norm(c_in, c_out, 1, stride, norm, side)))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet18_cifar(norm: NormSpec = "bnlab", num_classes: int = 10,
                   in_channels: int = 3) -> nn.Sequential:
    """ResNet-18 with the CIFAR stem, for (B, in_channels, 32, 32) inputs."""
    layers: list[nn.Module] = [*_conv_norm(in_channels, 64, 3, 1, norm, 32), nn.ReLU()]
    c_in, side = 64, 32
    for c_out in (64, 128, 256, 512):
        stride = 1 if c_out == 64 else 2
        side //= stride  # 32, 16, 8, 4
        layers += [BasicBlock(c_in, c_out, stride, norm, side),
                   BasicBlock(c_out, c_out, 1, norm, side)]
        c_in = c_out
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),  # (B,512,4,4) -> (B,512,1,1)
        nn.Flatten(),  # -> (B,512)
        nn.Linear(512, num_classes),
    )
