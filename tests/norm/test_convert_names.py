"""convert(model, to=NAME) for every name of the norm registry: on LeNet-BN and ResNet-18."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models import build_model, input_shape
from bnlab.norm.convert import CONVERSIONS, targets
from bnlab.norm.registry import NORMS, create_norm
from bnlab.norm.renormalize import is_norm_layer
from bnlab.norm.variants import PerActivationBatchNorm

# Targets whose eval-mode function is BatchNorm's with the running statistics: after
# conversion the model computes what it computed before (per-activation repeats each channel's
# statistics over its positions, so it too).
SAME_IN_EVAL = {"bnlab", "torch", "guarded", "renorm", "renorm-fixed", "renorm-wide", "ghost",
                "sync", "frozen", "running-stats", "batch-stats-detached", "textbook",
                "per-activation"}
# Targets without running statistics: only gamma and beta carry over.
PER_SAMPLE = {"group", "layer", "instance", "instance-conv"}


def trained(name: str) -> tuple[nn.Module, torch.Tensor]:
    """`name` with BatchNorm, after a few steps: statistics and gamma/beta away from defaults."""
    torch.manual_seed(0)
    model = build_model(name, "bnlab").double()
    x = torch.rand(4, *input_shape(name), dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(4) % 10).backward()
        opt.step()
    return model.eval(), x


@pytest.fixture(scope="module")
def lenet():
    return trained("lenet-bn")


@pytest.fixture(scope="module")
def resnet():
    return trained("resnet18-cifar")


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_norm_layer(m)]


def gammas(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in norms(model):
        w = m.gamma if hasattr(m, "gamma") else m.weight
        out.append(w.detach().reshape(-1))
    return out


def check(source: nn.Module, x: torch.Tensor, to: str) -> nn.Module:
    before = {k: v.clone() for k, v in source.state_dict().items()}
    out = bnlab.convert(source, to=to, example_input=x)
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())  # a copy
    layers = norms(out)
    if to == "none":
        assert layers == []
    else:
        assert len(layers) == len(norms(source))
        if to not in CONVERSIONS:  # the registry's own layer for that place
            kinds = {type(create_norm(to, 4, 4, (2, 2)))}
            if to != "instance":  # (needs spatial dims)
                kinds.add(type(create_norm(to, 4, 2, ())))
            assert {type(m) for m in layers} <= kinds, (to, {type(m) for m in layers})
        for got, want in zip(gammas(out), gammas(source), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    y = out(x)
    assert y.shape == (x.shape[0], 10) and torch.isfinite(y).all()
    if to in SAME_IN_EVAL:
        torch.testing.assert_close(y, source(x), rtol=1e-9, atol=1e-9)
    if to in PER_SAMPLE or to == "none":
        assert not torch.allclose(y, source(x))  # a different normalization, really
    return out


@pytest.mark.parametrize("to", sorted(NORMS))
def test_every_name_on_resnet18(resnet, to):
    model, x = resnet
    out = check(model, x, to)
    if to not in ("none", *PER_SAMPLE):  # running statistics carried over as well
        src_bn = norms(model)[3]
        new = norms(out)[3]
        mean = new.moving_mean if to == "textbook" else new.running_mean
        expected = src_bn.running_mean
        if to == "per-activation":
            expected = expected[:, None, None].expand(mean.shape)
        torch.testing.assert_close(mean.reshape(expected.shape), expected, rtol=0, atol=0)


@pytest.mark.parametrize("to", sorted(set(NORMS) - {"instance"}))
def test_every_name_on_lenet_bn(lenet, to):
    model, x = lenet
    check(model, x, to)


def test_instance_cannot_follow_a_linear_layer_and_nothing_changes(lenet):
    model, x = lenet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = model[1]
    with pytest.raises(ValueError, match=r"layer '10' \(BatchNorm1d\) cannot become 'instance'"
                                         r".*spatial dims"):
        bnlab.convert(model, to="instance", inplace=True, example_input=x)
    assert model[1] is first  # the two conv layers swapped before it are back
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_per_activation_needs_the_spatial_shape(resnet):
    model, x = resnet
    with pytest.raises(ValueError, match=r"layer '1' .*pass example_input="):
        bnlab.convert(model, to="per-activation")
    out = bnlab.convert(model, to="per-activation", example_input=x)
    shapes = [m.spatial_shape for m in norms(out)]
    assert shapes[0] == (32, 32) and shapes[-1] == (4, 4)
    assert all(isinstance(m, PerActivationBatchNorm) for m in norms(out))


def test_per_activation_back_to_per_channel_by_total_variance():
    layer = PerActivationBatchNorm(2, (3,)).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]))
        layer.running_var.copy_(torch.tensor([[1.0, 1.0, 1.0], [2.0, 4.0, 6.0]]))
    out = bnlab.convert(nn.Sequential(layer), to="guarded")[0]
    torch.testing.assert_close(out.running_mean, torch.tensor([1.0, 5.0], dtype=torch.float64))
    # var_c = mean_s(var_s) + var_s(mean_s): 1 + 2/3, and 4 + 0
    torch.testing.assert_close(out.running_var,
                               torch.tensor([1 + 2 / 3, 4.0], dtype=torch.float64))


def test_config_and_flags_carry_over():
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.2)
    bn.weight.requires_grad_(False)
    ghost = bnlab.convert(nn.Sequential(bn), to="ghost")[0]
    assert (ghost.eps, ghost.momentum, ghost.weight.requires_grad) == (1e-3, 0.2, False)
    book = bnlab.convert(nn.Sequential(bn), to="textbook")[0]
    assert book.momentum == pytest.approx(0.8)  # the textbook weighs the old average
    inst = bnlab.convert(nn.Sequential(bn), to="instance")[0]
    assert inst.affine and not inst.weight.requires_grad  # gamma and beta are kept


def test_any_rank_layers_need_an_example_for_rank_dependent_targets():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), bnlab.BatchNorm(4))
    with pytest.raises(ValueError, match=r"any rank.*example_input="):
        bnlab.convert(model, to="textbook")
    out = bnlab.convert(model, to="textbook", example_input=torch.rand(2, 1, 5, 5))
    assert out[1].gamma.shape == (1, 4, 1, 1)
    assert isinstance(bnlab.convert(model, to="group")[1], bnlab.norm.variants.GroupNorm)


def test_fused_layers_are_refused_with_the_fix():
    from bnlab.norm.fused import fuse

    fused = fuse(build_model("lenet-bn", "bnlab"))
    with pytest.raises(TypeError, match="convert the model before fusing"):
        bnlab.convert(fused, to="ghost")


def test_targets_are_the_swaps_and_every_registry_name():
    assert set(targets()) == set(NORMS) | set(CONVERSIONS)
    with pytest.raises(ValueError, match=r"unknown target 'batch'.*per-activation"):
        bnlab.convert(nn.BatchNorm1d(3), to="batch")
