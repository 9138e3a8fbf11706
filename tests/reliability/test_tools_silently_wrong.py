"""Tools that returned a wrong model without an error, for some layer kinds or model shapes.

precise_bn stored per-channel statistics into per-activation buffers, overwrote frozen
statistics, let buffers drift while measuring them and crashed half-way on a layer no batch
reached; fold skipped every BatchNorm outside an nn.Sequential (residual blocks, loops) and
said nothing about what it left. Each test is checked against a direct computation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.fold import fold, fold_with_report
from bnlab.norm.precise import precise_bn, precise_bn_report
from bnlab.norm.variants import BatchRenorm, FrozenBatchNorm2d, PerActivationBatchNorm
from tests.reliability.hostile import image, warm

F64 = torch.float64


@pytest.mark.parametrize("c,spatial", [(4, (4,)), (3, (2, 5))],
                         ids=["C-equals-W", "C-differs-from-W"])
def test_precise_bn_per_activation_layer_gets_per_activation_statistics(c, spatial):
    # (4, (4,)): per-channel statistics broadcast silently into the (C, L) buffers;
    # (3, (2, 5)): the copy failed after the first layer had been rewritten.
    model = nn.Sequential(bnlab.BatchNorm(c), PerActivationBatchNorm(c, spatial)).double()
    data = [torch.randn(n, c, *spatial, dtype=F64) * 3 + 2 for n in (5, 7, 4)]
    precise_bn(model, data, 16)
    x = torch.cat(data)
    dims = tuple(d for d in range(x.dim()) if d != 1)
    torch.testing.assert_close(model[0].running_mean, x.mean(dims), rtol=0, atol=1e-12)
    first = copy.deepcopy(model[0]).train()
    y = torch.cat([first(b) for b in data])  # what the second layer saw, batch by batch
    torch.testing.assert_close(model[1].running_mean, y.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, y.var(0), rtol=0, atol=1e-12)


def test_precise_bn_leaves_frozen_layers_alone_and_reports_them():
    frozen = FrozenBatchNorm2d(3)
    with torch.no_grad():
        frozen.running_mean.fill_(0.5)
    model = nn.Sequential(bnlab.BatchNorm2d(3), frozen)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    report = precise_bn_report(model, [torch.randn(8, 3, 2, 2) * 3 + 5], 8)
    for k, v in before.items():
        assert torch.equal(frozen.state_dict()[k], v), k
    assert report.updated == ["0"] and report.left == {"1": "frozen: its statistics are "
                                                            "fixed on purpose"}


class Branchy(nn.Module):
    """A BatchNorm only some inputs reach (a second head used for another task)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.unused = bnlab.BatchNorm1d(3), bnlab.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(x)


def test_precise_bn_leaves_a_layer_no_batch_reaches_and_warns():
    model = Branchy()
    warm(model.unused, 3, 2)
    before = copy.deepcopy(model.unused.state_dict())
    with pytest.warns(RuntimeWarning, match="no batch reached 'unused'"):
        assert precise_bn(model, [torch.randn(6, 3) for _ in range(2)], 12) == 12
    assert all(torch.equal(model.unused.state_dict()[k], v) for k, v in before.items())
    assert float(model.bn.running_var.sub(1).abs().max()) > 0  # the reached one was updated


def test_precise_bn_does_not_move_buffers_while_measuring_them():
    # A Batch Renorm layer reads its running statistics in training: if the passes move them
    # (momentum 0.1), the next layer's statistics depend on the order of the batches.
    torch.manual_seed(0)
    renorm = BatchRenorm(3, warmup=False, rmax=1.5, dmax=0.5).double()
    model = nn.Sequential(renorm, bnlab.BatchNorm1d(3)).double()
    warm(model, 3, 3)
    model = model.double()
    data = [torch.randn(8, 3, dtype=F64) * (i + 1) + 3 * i for i in range(4)]
    feats = []
    for x in data:  # the oracle: each batch through the model as it is
        feats.append(copy.deepcopy(renorm).train()(x))
    feats = torch.cat(feats)
    precise_bn(model, data, 32)
    torch.testing.assert_close(model[1].running_mean, feats.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, feats.var(0), rtol=0, atol=1e-12)


class Block(nn.Module):
    """conv -> BN -> ReLU, plus the input: BatchNorm outside any nn.Sequential."""

    def __init__(self, c: int, bn_cls: type[nn.Module]) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), bn_cls(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


@pytest.mark.parametrize("kind", ["bnlab", "torch", "frozen"])
def test_fold_folds_batchnorm_inside_residual_blocks(kind):
    cls = {"bnlab": bnlab.BatchNorm2d, "torch": nn.BatchNorm2d,
           "frozen": bnlab.BatchNorm2d}[kind]
    model = nn.Sequential(Block(3, cls), Block(3, cls)).double()
    warm(model, 3, 3, rank=4)
    if kind == "frozen":
        model = bnlab.norm.freeze(model)
    model.eval()
    folded, report = fold_with_report(model)
    assert report.traced and report.left == {}
    assert report.folded == [("0.conv", "0.bn"), ("1.conv", "1.bn")]
    assert all(isinstance(b.bn, nn.Identity) for b in folded)
    x = torch.randn(4, 3, 5, 5, dtype=F64)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-12)


class Loop(nn.Module):
    """Pairs held in ModuleLists and called in a Python loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.bns = nn.ModuleList(bnlab.BatchNorm1d(4) for _ in range(3))

    def forward(self, x):
        for fc, bn in zip(self.fcs, self.bns, strict=True):
            x = torch.tanh(bn(fc(x)))
        return x


def test_fold_follows_loops_over_module_lists():
    model = warm(Loop().double(), 4, 3).eval()
    x = torch.randn(5, 4, dtype=F64)
    folded = fold(model, example_input=x)  # a Linear's input rank: measured on one batch
    assert all(isinstance(b, nn.Identity) for b in folded.bns)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-12)


class Skip(nn.Module):
    """The conv's output feeds the BatchNorm and the skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), bnlab.BatchNorm2d(2)

    def forward(self, x):
        z = self.conv(x)
        return self.bn(z) + z


class Twice(nn.Module):
    """One conv called twice, each time before its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn1, self.bn2 = bnlab.BatchNorm2d(2), bnlab.BatchNorm2d(2)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))


LEFT = {
    "after-relu": (lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), bnlab.BatchNorm2d(2)),
                   "2", "its input comes from '1' (ReLU)"),
    "conv-output-also-skips": (Skip, "bn", "also feeds"),
    "conv-called-twice": (Twice, "bn1", "'conv' is called 2 times"),
    "untracked": (lambda: nn.Sequential(nn.Conv2d(2, 2, 1), bnlab.BatchNorm2d(
        2, track_running_stats=False)), "1", "no running statistics"),
}


@pytest.mark.parametrize("case", sorted(LEFT))
def test_fold_reports_what_it_left_and_why(case):
    make, name, why = LEFT[case]
    model = warm(make().double(), 2, 2, rank=4).eval()
    with pytest.warns(RuntimeWarning, match="left unfolded"):
        folded = fold(model)
    report = fold_with_report(model)[1]
    assert why in report.left[name]
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-12)  # still correct


class Gated(nn.Module):
    """Control flow on a value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), bnlab.BatchNorm1d(3))
        self.other = bnlab.BatchNorm1d(3)

    def forward(self, x):
        x = self.body(x)
        return self.other(x) if x.sum() > 0 else x


def test_fold_falls_back_when_the_model_cannot_be_traced_and_says_so():
    model = warm(Gated().double(), 3, 2).eval()
    x = torch.randn(4, 3, dtype=F64)
    with pytest.warns(RuntimeWarning, match=r"could not be traced.*'other'"):
        folded = fold(model, example_input=x)
    assert isinstance(folded.body[1], nn.Identity)  # Sequential neighbours still folded
    report = fold_with_report(model)[1]
    assert not report.traced and "TraceError" in (report.trace_error or "")
    assert "pass example_input" in report.left["body.1"]  # without it: Linear rank unknown
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-12)


def test_in_place_tools_keep_untouched_objects_on_success_and_failure():
    # The snapshot restores into the same tensors: an optimizer built before the call
    # still holds the model's parameters, whether the call succeeded or failed.
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 3),
                          nn.BatchNorm1d(3, track_running_stats=False))
    params = list(model[0].parameters())
    before = image(model)
    with pytest.raises(ValueError, match="needs track_running_stats=True"):
        bnlab.norm.freeze(model, inplace=True)
    assert image(model) == before and list(model[0].parameters()) == params
    assert all(a is b for a, b in zip(model[0].parameters(), params, strict=True))
    bnlab.norm.convert(model, to="bnlab", inplace=True)
    assert all(a is b for a, b in zip(model[0].parameters(), params, strict=True))
