"""The seed notebooks' architectures: shapes, parameter counts, where the norm layers sit."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models import MODELS, build_model, input_shape
from bnlab.norm.registry import NORMS
from bnlab.norm.textbook import TextbookBatchNorm

# Parameter counts worked out by hand from the layer shapes.
LENET_CLASSIC = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (
    84 * 10 + 10)  # 61,706: the LeNet-5 figure the textbook quotes
LENET_BN_BODY = LENET_CLASSIC - (400 - 256) * 120
BN_PARAMS = 2 * (6 + 16 + 120 + 84)
COUNTS = {
    ("lenet", "none"): LENET_CLASSIC,
    ("lenet-bn", "none"): LENET_BN_BODY,
    ("lenet-bn", "bnlab"): LENET_BN_BODY + BN_PARAMS,
    ("lenet-bn-maxpool", "torch"): LENET_BN_BODY + BN_PARAMS,
    ("mlp", "none"): 784 * 100 + 100 + 100 * 10 + 10,
    ("mlp", "bnlab"): 784 * 100 + 100 + 200 + 100 * 10 + 10,
    ("cnn", "none"): (6 * 9 + 6) + (16 * 6 * 25 + 16) + (400 * 10 + 10),
    ("cnn", "torch"): (6 * 9 + 6) + 12 + (16 * 6 * 25 + 16) + 32 + (400 * 10 + 10),
    ("mlp-deep", "none"): (784 * 128 + 128) + 5 * (128 * 128 + 128) + (128 * 10 + 10),
    ("mlp-deep", "bnlab"): (784 * 128 + 128) + 5 * (128 * 128 + 128) + 6 * 256 + 1290,
}


@pytest.mark.parametrize("key", COUNTS, ids=lambda k: f"{k[0]}-{k[1]}")
def test_parameter_counts(key):
    model = build_model(*key)
    assert sum(p.numel() for p in model.parameters()) == COUNTS[key]
    assert LENET_CLASSIC == 61706


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_forward_shape(name, norm):
    # Instance norm needs spatial dims: not after linear layers (all but the convolutional nets).
    if norm == "instance" and name not in ("cnn", "resnet18-cifar", "vgg-cifar"):
        with pytest.raises(ValueError, match="spatial dims"):
            build_model(name, norm)
        return
    model = build_model(name, norm)
    shape = input_shape(name)
    assert model(torch.rand(5, *shape)).shape == (5, 10)
    model.eval()
    assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_bn_sits_before_each_sigmoid_in_lenet_bn():
    model = build_model("lenet-bn", "bnlab")
    kinds = [type(m).__name__ for m in model]
    for i, k in enumerate(kinds):
        if k == "Sigmoid":
            assert kinds[i - 1].startswith("BatchNorm") and kinds[i - 2] in ("Conv2d", "Linear")
    assert [type(m) for m in model if "BatchNorm" in type(m).__name__] == [
        bnlab.BatchNorm2d, bnlab.BatchNorm2d, bnlab.BatchNorm1d, bnlab.BatchNorm1d]


def test_lenet_chapter_pads_and_uses_avg_pool():
    model = build_model("lenet", "none")
    assert model[0].padding == (2, 2) and isinstance(model[2], nn.AvgPool2d)
    assert model[7].in_features == 400
    assert isinstance(build_model("lenet-bn-maxpool", "none")[2], nn.MaxPool2d)


def test_callable_norm_and_textbook_norm():
    calls = []

    def my_norm(c, rank):
        calls.append((c, rank))
        return nn.Identity()

    build_model("lenet-bn", my_norm)
    assert calls == [(6, 4), (16, 4), (120, 2), (84, 2)]
    tb = [m for m in build_model("mlp", "textbook").modules() if isinstance(m, TextbookBatchNorm)]
    assert len(tb) == 1


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", "bnlab")
    with pytest.raises(ValueError, match="unknown norm 'foo'"):
        build_model("mlp", "foo")
