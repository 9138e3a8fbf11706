"""precise_bn, fold, conventions and the registry, each against a direct computation."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.conventions import CONVENTIONS, from_convention, to_convention
from bnlab.norm.fold import fold, fold_pair
from bnlab.norm.precise import precise_bn
from bnlab.norm.registry import NORMS, create_norm
from bnlab.norm.variants import FrozenBatchNorm, FrozenBatchNorm1d

F64 = torch.float64


def test_precise_bn_single_layer_equals_one_pass_statistics():
    bn = bnlab.BatchNorm2d(3).double()
    data = [torch.randn(n, 3, 4, 4, dtype=F64) * 3 + 2 for n in (7, 13, 5, 9)]  # uneven
    bn.momentum = 0.3
    bn.eval()
    used = precise_bn(bn, data, num_samples=30)
    assert used == 30
    x = torch.cat(data)[:30]
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), rtol=0, atol=1e-12)
    var = x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True)
    torch.testing.assert_close(bn.running_var, var, rtol=0, atol=1e-12)
    assert not bn.training and bn.momentum == 0.3 and int(bn.num_batches_tracked) == 0


def test_precise_bn_deep_model_uses_train_mode_features():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), bnlab.BatchNorm1d(5), nn.ReLU(),
                          nn.Linear(5, 3), nn.BatchNorm1d(3)).double()
    batches = [(torch.randn(8, 4, dtype=F64), None) for _ in range(5)]
    # Oracle: the inputs each BN layer sees in train mode, concatenated, in one pass.
    seen = {1: [], 4: []}
    hooks = [model[i].register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0]))
             for i in seen]
    ref = [model[i].state_dict() for i in seen]
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    for i, sd in zip(seen, ref, strict=True):
        model[i].load_state_dict(sd)
    precise_bn(model, batches, num_samples=40)
    for i in seen:
        feats = torch.cat(seen[i])
        torch.testing.assert_close(model[i].running_mean, feats.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(model[i].running_var, feats.var(0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("conv", [nn.Conv1d(2, 4, 3), nn.Conv2d(2, 4, 3, bias=False),
                                  nn.Conv3d(2, 4, 3), nn.Linear(6, 4)])
@pytest.mark.parametrize("kind", ["bnlab", "torch", "frozen"])
def test_fold_preserves_the_eval_function(conv, kind):
    rank = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5, nn.Linear: 2}[type(conv)]
    bn = create_norm("torch" if kind == "torch" else "bnlab", 4, rank)
    model = nn.Sequential(conv, bn, nn.ReLU()).double()
    shape = {2: (5, 6), 3: (5, 2, 7), 4: (5, 2, 6, 6), 5: (5, 2, 5, 5, 5)}[rank]
    for _ in range(3):
        model(torch.randn(shape, dtype=F64) * 2 + 1)
    if kind == "frozen":
        model = bnlab.convert(model, to="frozen")
    model.eval()
    x = torch.randn(shape, dtype=F64)
    # A Linear's input rank is not in the graph: one example batch proves it 2-D.
    folded = fold(model, example_input=x if rank == 2 else None)
    assert isinstance(folded[1], nn.Identity) and not isinstance(model[1], nn.Identity)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-12)


def test_fold_refuses_training_mode_and_leaves_batch_statistics():
    model = nn.Sequential(nn.Linear(3, 3), bnlab.BatchNorm1d(3))
    with pytest.raises(RuntimeError, match=r"eval mode.*model.eval\(\)"):
        fold(model)
    model = nn.Sequential(nn.Linear(3, 3), bnlab.BatchNorm1d(3, track_running_stats=False))
    with pytest.warns(RuntimeWarning, match=r"'1': no running statistics"):
        folded = fold(model.eval())
    assert isinstance(folded[1], bnlab.BatchNorm1d)  # left, and said so
    with pytest.raises(ValueError, match="without running statistics"):
        fold_pair(model[0], model[1])  # one explicit pair: an error


def test_fold_lenet_from_models_float32():
    from bnlab.models import build_model

    model = build_model("lenet-bn", "bnlab")
    for _ in range(3):
        model(torch.rand(16, 1, 28, 28))
    model.eval()
    folded = fold(model)
    assert sum(isinstance(m, nn.Identity) for m in folded) == 4
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_conventions_round_trip_and_known_values():
    rv = torch.tensor([0.5, 2.0])
    keras = from_convention("keras", running_var=rv, values_per_channel=11)
    assert keras["momentum"] == pytest.approx(0.01) and keras["eps"] == 1e-3
    torch.testing.assert_close(keras["running_var"], rv * 1.1)
    back = to_convention("keras", momentum=keras["momentum"], running_var=keras["running_var"],
                         values_per_channel=11, eps=keras["eps"])
    assert back["momentum"] == pytest.approx(0.99)
    torch.testing.assert_close(back["running_var"], rv)
    assert from_convention("textbook")["momentum"] == pytest.approx(0.1)
    assert from_convention("torch", running_var=rv)["running_var"].equal(rv)
    with pytest.raises(ValueError, match="values_per_channel"):
        from_convention("flax", running_var=rv)
    assert set(CONVENTIONS) == {"torch", "keras", "flax", "textbook"}


def test_keras_style_training_matches_after_conversion():
    # A Keras-convention layer (momentum 0.99 on the old average, biased variance), simulated
    # directly, agrees with a bnlab layer built from the converted settings.
    torch.manual_seed(0)
    cfg = from_convention("keras")
    bn = bnlab.BatchNorm1d(3, momentum=cfg["momentum"], eps=cfg["eps"]).double()
    mm, mv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    m = 16
    for _ in range(50):
        x = torch.randn(m, 3, dtype=F64) * 2 + 1
        bn(x)
        mm = 0.99 * mm + 0.01 * x.mean(0)
        mv = 0.99 * mv + 0.01 * x.var(0, unbiased=False)
    torch.testing.assert_close(bn.running_mean, mm, rtol=0, atol=1e-12)
    converted = to_convention("keras", momentum=bn.momentum, running_var=bn.running_var,
                              values_per_channel=m)["running_var"]
    # Equal up to the initial value's share, scaled by (m-1)/m and decayed by 0.99^50.
    assert float((converted - mv).abs().max()) <= (1 / m) * 0.99**50 + 1e-12


@pytest.mark.parametrize("name", sorted(NORMS))
def test_registry_builds_every_norm(name):
    for rank, spatial in ((2, ()), (4, (6, 6))):
        try:
            layer = create_norm(name, 6, rank, spatial)
        except ValueError as e:
            assert name in ("instance",) and rank == 2, e
            continue
        if layer is None:
            assert name == "none"
            continue
        shape = (8, 6, *spatial)
        assert layer(torch.randn(shape)).shape == shape


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown norm 'nope'"):
        create_norm("nope", 3)
    with pytest.raises(ValueError, match="needs the spatial shape"):
        create_norm("per-activation", 3, 4)
    assert isinstance(create_norm("frozen", 3, 2), FrozenBatchNorm)
    assert not isinstance(create_norm("frozen", 3, 2), FrozenBatchNorm1d)  # any-rank kind
