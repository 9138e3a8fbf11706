"""The CIFAR presets: ResNet-18 (CIFAR stem) and the half-width VGG-11."""

import pytest
import torch
from torch import nn

from bnlab.models import INPUTS, MODELS, build_model, input_shape
from bnlab.models.resnet import BasicBlock
from bnlab.norm.batchnorm import BatchNorm2d

# The published count of ResNet-18 for CIFAR-10 with BatchNorm (conv without bias, 1x1
# projection shortcuts), e.g. kuangliu/pytorch-cifar.
RESNET18_CIFAR = 11_173_962
# Half-width VGG-11 worked out by hand: conv 3x3 weights + biases, 2 per channel for BatchNorm.
_VGG_CONVS = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 256)]
VGG_NONE = sum(9 * a * b + b for a, b in _VGG_CONVS) + 256 * 10 + 10
VGG_BN = VGG_NONE + sum(2 * b for _, b in _VGG_CONVS)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    assert _count(build_model("resnet18-cifar", "bnlab")) == RESNET18_CIFAR
    assert _count(build_model("resnet18-cifar", "torch")) == RESNET18_CIFAR
    # Without norm layers: minus gamma and beta of the 20 norm layers (4800 channels in all).
    assert _count(build_model("resnet18-cifar", "none")) == RESNET18_CIFAR - 2 * 4800
    assert _count(build_model("vgg-cifar", "bnlab")) == VGG_BN
    assert _count(build_model("vgg-cifar", "none")) == VGG_NONE


def test_resnet_stem_keeps_the_resolution_and_blocks_halve_it():
    model = build_model("resnet18-cifar", "bnlab")
    stem = model[0]
    assert (stem.kernel_size, stem.stride, stem.in_channels) == ((3, 3), (1, 1), 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    sides = []
    x = torch.rand(2, 3, 32, 32)
    for layer in model:
        x = layer(x)
        if isinstance(layer, BasicBlock):
            sides.append((x.shape[1], x.shape[2]))
    assert sides == [(64, 32), (64, 32), (128, 16), (128, 16), (256, 8), (256, 8), (512, 4),
                     (512, 4)]
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert len(norms) == 20  # stem 1 + 8 blocks x 2 + 3 projection shortcuts


def test_presets_expect_colour_32x32_and_the_seed_nets_grey_28x28():
    assert input_shape("resnet18-cifar") == input_shape("vgg-cifar") == (3, 32, 32)
    assert input_shape("lenet-bn") == (1, 28, 28)
    assert set(INPUTS) == set(MODELS)
    with pytest.raises(ValueError, match=r"unknown model 'resnet18'.*resnet18-cifar"):
        input_shape("resnet18")


@pytest.mark.parametrize("name", ["resnet18-cifar", "vgg-cifar"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build_model(name, "bnlab")
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    running = [m.running_mean for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert all(bool(r.abs().sum() > 0) for r in running)  # every norm layer saw the batches
