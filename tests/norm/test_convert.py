"""bnlab.convert swaps BatchNorm implementations in a model, keeping state and function."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm import freeze, unfreeze
from bnlab.norm.textbook import TextbookBatchNorm
from bnlab.norm.variants import (
    BatchRenorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    SyncBatchNorm,
)


def torch_lenet() -> nn.Sequential:
    """The textbook LeNet-BN with torch's layers (the concise implementation of the chapter)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def warm_up(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def kinds(model: nn.Module) -> list[str]:
    return [type(m).__module__.split(".")[0] + "." + type(m).__name__ for m in model.modules()
            if "BatchNorm" in type(m).__name__]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lenet_round_trip(mode):
    ref = torch_lenet().double()
    warm_up(ref.float())
    ref = ref.double().train(mode == "train")
    ours = bnlab.convert(ref, to="bnlab")
    assert kinds(ours) == ["bnlab.BatchNorm2d"] * 2 + ["bnlab.BatchNorm1d"] * 2
    assert kinds(ref) == ["torch.BatchNorm2d"] * 2 + ["torch.BatchNorm1d"] * 2  # not modified
    back = bnlab.convert(ours, to="torch")
    assert kinds(back) == kinds(ref)

    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    outs = [m(x.clone()) for m in (ref, ours, back)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-10)
    for m in (ours, back):
        assert m.training == (mode == "train")
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=1e-10)


def test_preserves_flags_dtype_and_config():
    bn = nn.BatchNorm1d(5, eps=1e-3, momentum=None, bias=False, dtype=torch.float64)
    bn.weight.requires_grad_(False)
    bn.eval()
    ours = bnlab.convert(bn)
    assert isinstance(ours, bnlab.BatchNorm1d)
    assert (ours.eps, ours.momentum, ours.bias, ours.training) == (1e-3, None, None, False)
    assert ours.weight.dtype == torch.float64 and not ours.weight.requires_grad


def test_in_place_and_shared_layers():
    shared = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Sequential(shared))
    out = bnlab.convert(model, inplace=True)
    assert out is model
    assert isinstance(model[1], bnlab.BatchNorm1d) and model[2][0] is model[1]


def test_mixed_models_convert_only_what_is_foreign():
    model = nn.Sequential(bnlab.BatchNorm1d(4), nn.BatchNorm1d(4))
    ours = bnlab.convert(model, to="bnlab")
    assert kinds(ours) == ["bnlab.BatchNorm1d"] * 2
    theirs = bnlab.convert(model, to="torch")
    assert kinds(theirs) == ["torch.BatchNorm1d"] * 2


@pytest.mark.parametrize("layer,to", [
    (bnlab.BatchNorm(4), "torch"),
    (GhostBatchNorm(4), "torch"),
    (nn.LazyBatchNorm1d(), "frozen"),
    (BatchRenorm(4), "frozen"),
], ids=["any-rank-to-torch", "ghost-to-torch", "lazy-to-frozen", "renorm-to-frozen"])
def test_unconvertible_layers_are_named_and_nothing_changes(layer, to):
    model = nn.Sequential(nn.BatchNorm1d(4) if to != "torch" else bnlab.BatchNorm1d(4), layer)
    first = model[0]
    with pytest.raises(TypeError, match=r"at '1' has no .* counterpart"):
        bnlab.convert(model, to=to, inplace=True)
    assert model[0] is first  # checked before anything was swapped


def test_textbook_layer_is_left_alone():
    layer = TextbookBatchNorm(4, num_dims=2)
    model = bnlab.convert(nn.Sequential(nn.BatchNorm1d(4), layer), to="bnlab", inplace=True)
    assert model[1] is layer and isinstance(model[0], bnlab.BatchNorm1d)


def test_unknown_target():
    with pytest.raises(ValueError, match="unknown target 'tf'"):
        bnlab.convert(nn.BatchNorm1d(3), to="tf")


def test_sync_and_frozen_targets_round_trip():
    ref = torch_lenet().eval()
    warm = torch_lenet()
    warm_up(warm)
    ref.load_state_dict(warm.state_dict())
    x = torch.rand(4, 1, 28, 28)
    sync = bnlab.convert(ref, to="sync")
    assert kinds(sync) == ["bnlab.SyncBatchNorm"] * 4
    torch.testing.assert_close(sync(x), ref(x), rtol=0, atol=1e-6)
    assert kinds(bnlab.convert(nn.Sequential(nn.SyncBatchNorm(3)), to="bnlab")) == [
        "bnlab.SyncBatchNorm"]
    assert kinds(bnlab.convert(nn.Sequential(SyncBatchNorm(3)), to="torch")) == [
        "torch.SyncBatchNorm"]

    frozen = freeze(ref).train()  # frozen layers ignore train mode
    assert [type(m) for m in frozen.modules() if "Frozen" in type(m).__name__] == [
        FrozenBatchNorm2d, FrozenBatchNorm2d, FrozenBatchNorm1d, FrozenBatchNorm1d]
    torch.testing.assert_close(frozen(x), ref(x), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for m in frozen.modules() if "Frozen" in type(m).__name__
                   for p in m.parameters())
    thawed = unfreeze(frozen)
    assert kinds(thawed) == ["bnlab.BatchNorm2d"] * 2 + ["bnlab.BatchNorm1d"] * 2
    assert all(p.requires_grad for p in thawed.parameters())


def test_unfreeze_leaves_other_layers_flags_alone():
    model = nn.Sequential(nn.BatchNorm1d(3), bnlab.BatchNorm1d(3))
    model[1].weight.requires_grad_(False)  # frozen by hand, not by freeze()
    model[0] = freeze(nn.Sequential(model[0]))[0]
    thawed = unfreeze(model)
    assert thawed[0].weight.requires_grad and not thawed[1].weight.requires_grad
