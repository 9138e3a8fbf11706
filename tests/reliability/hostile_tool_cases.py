"""Hostile cases for the model tools: precise_bn, fold, fold_pair, convert, freeze, unfreeze,
fuse and load_state_dict, each failing after healthy layers it may already have changed.

Each ``@case`` registers (build, expected exception, message pattern) in ``hostile.CASES``;
``build(draw)`` returns the model and the call. test_hostile_tools.py runs them all.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import bnlab
from bnlab.norm import convert, freeze, load_state_dict, unfreeze
from bnlab.norm.fold import fold, fold_pair
from bnlab.norm.fused import fuse
from bnlab.norm.precise import precise_bn
from bnlab.norm.variants import BatchRenorm, FrozenBatchNorm1d, GhostBatchNorm
from tests.reliability.hostile import built_in_inference_mode, case, chain, warm, with_attr


def batches(width: int, n: int = 3, size: int = 4) -> list[torch.Tensor]:
    return [torch.randn(size, width) for _ in range(n)]


# --- precise_bn: the passes over the data move buffers; an error used to leave them moved ---

@case("precise_bn/bad-batch-after-good-ones", RuntimeError, "shapes cannot be multiplied")
def _(draw):
    m, w = chain(draw)
    data = [*batches(w, 2), torch.randn(4, w + 1)]
    return m, lambda m: precise_bn(m, data, 12)


@case("precise_bn/nan-in-the-data", ValueError, "not finite.*nothing was changed")
def _(draw):
    m, w = chain(draw)
    data = batches(w)
    data[1][0, 0] = math.nan
    return m, lambda m: precise_bn(m, data, 12)


@case("precise_bn/loader-raises-midway", OSError, "read error")
def _(draw):
    m, w = chain(draw)

    def loader():
        yield torch.randn(4, w)
        raise OSError("read error")
    return m, lambda m: precise_bn(m, loader(), 12)


@case("precise_bn/batches-run-out", ValueError, "at least 2 examples")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: precise_bn(m, [], 12)


@case("precise_bn/batch-not-a-tensor", TypeError, "batches must yield tensors")
def _(draw):
    m, w = chain(draw)
    return m, lambda m: precise_bn(m, [torch.randn(4, w), "images"], 12)


@case("precise_bn/num-samples-bool", TypeError, "num_samples must be an int")
def _(draw):
    m, w = chain(draw)
    return m, lambda m: precise_bn(m, batches(w), True)


@case("precise_bn/num-samples-float", TypeError, "num_samples must be an int")
def _(draw):
    m, w = chain(draw)
    return m, lambda m: precise_bn(m, batches(w), 8.5)


@case("precise_bn/num-samples-1", ValueError, "must be > 1")
def _(draw):
    m, w = chain(draw)
    return m, lambda m: precise_bn(m, batches(w), 1)


@case("precise_bn/layer-built-in-inference-mode", RuntimeError, "inference_mode")
def _(draw):
    m, w = chain(draw, built_in_inference_mode)
    return m, lambda m: precise_bn(m, batches(w), 12)


@case("precise_bn/eps-set-after-construction", ValueError, "checked at use")
def _(draw):
    m, w = chain(draw, lambda w: with_attr(bnlab.BatchNorm1d(w), eps=-1.0))
    return m, lambda m: precise_bn(m, batches(w), 12)


# --- fold (in place): every folded layer is computed before the model is touched ---

@case("fold/eps-nan", ValueError, "eps must be finite")
def _(draw):
    m, _ = chain(draw, lambda w: with_attr(bnlab.BatchNorm1d(w), eps=math.nan))
    m.insert(0, nn.Flatten())  # proves each Linear's input 2-D (a Linear -> BN pair folds)
    return m.eval(), lambda m: fold(m, inplace=True)


@case("fold/eps-negative", ValueError, "eps must be finite and >= 0")
def _(draw):
    m, _ = chain(draw, lambda w: with_attr(nn.BatchNorm1d(w), eps=-1.0))
    m.insert(0, nn.Flatten())  # proves each Linear's input 2-D (a Linear -> BN pair folds)
    return m.eval(), lambda m: fold(m, inplace=True)


@case("fold/eps-a-string", TypeError, "eps must be a float")
def _(draw):
    m, _ = chain(draw, lambda w: with_attr(bnlab.BatchNorm1d(w), eps="1e-5"))
    m.insert(0, nn.Flatten())  # proves each Linear's input 2-D (a Linear -> BN pair folds)
    return m.eval(), lambda m: fold(m, inplace=True)


@case("fold/a-layer-in-training-mode", RuntimeError, r"eval mode.*model.eval\(\)")
def _(draw):
    m, _ = chain(draw, lambda w: bnlab.BatchNorm1d(w))
    m.eval()
    m[-1].train()
    return m, lambda m: fold(m, inplace=True)


@case("fold/inplace-not-a-bool", TypeError, "inplace must be True or False")
def _(draw):
    m, _ = chain(draw)
    return m.eval(), lambda m: fold(m, inplace="yes")


class Gate(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it (fold falls back)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x) if x.sum() > -1e9 else x


@case("fold/untraceable-model-eps-nan", ValueError, "eps must be finite")
def _(draw):
    m, _ = chain(draw, lambda w: with_attr(bnlab.BatchNorm1d(w), eps=math.nan))
    m.insert(0, nn.Flatten())  # proves each Linear's input 2-D (a Linear -> BN pair folds)
    return Gate(m).eval(), lambda m: fold(m, inplace=True)


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(width, width), bnlab.BatchNorm1d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.fc(x.flatten(1))) + x)  # flatten(1): 2-D, foldable


@case("fold/residual-blocks-eps-nan", ValueError, "eps must be finite")
def _(draw):
    width = draw(st.integers(2, 5))
    blocks = [Residual(width) for _ in range(draw(st.integers(2, 4)))]
    model = warm(nn.Sequential(*blocks), width, 2)
    blocks[-1].bn.eps = math.nan
    return model.eval(), lambda m: fold(m, inplace=True)


@case("fold_pair/untracked-batchnorm", ValueError, "without running statistics")
def _(draw):
    m, _ = chain(draw, lambda w: bnlab.BatchNorm1d(w, track_running_stats=False))
    return m.eval(), lambda m: fold_pair(m[-2], m[-1])


@case("fold_pair/not-a-conv-or-linear", TypeError, "cannot fold into ReLU")
def _(draw):
    m, _ = chain(draw)
    return m.eval(), lambda m: fold_pair(m[2], m[1])


@case("fold_pair/channels-differ", ValueError, "not one per output channel")
def _(draw):
    m, _ = chain(draw, lambda w: bnlab.BatchNorm1d(w + 1))
    return m.eval(), lambda m: fold_pair(m[-2], m[-1])


# --- convert / freeze / unfreeze (in place): a layer that cannot be built, after others ---

@case("convert-to-bnlab/torch-momentum-2", ValueError, "layer '.*' .*momentum must be in")
def _(draw):
    m, _ = chain(draw, lambda w: nn.BatchNorm1d(w, momentum=2.0))
    return m, lambda m: convert(m, to="bnlab", inplace=True)


@case("convert-to-bnlab/torch-eps-0", ValueError, "eps must be a positive finite float")
def _(draw):
    m, _ = chain(draw, lambda w: nn.BatchNorm1d(w, eps=0.0))
    return m, lambda m: convert(m, to="bnlab", inplace=True)


def wrong_shape_buffer(layer: nn.Module) -> nn.Module:
    layer.running_mean = torch.zeros(layer.num_features + 1)  # a hand-edited model
    return layer


@case("convert-to-torch/buffer-of-wrong-shape", RuntimeError, "size mismatch")
def _(draw):
    m, _ = chain(draw, lambda w: wrong_shape_buffer(bnlab.BatchNorm1d(w)), kinds=("bnlab",))
    return m, lambda m: convert(m, to="torch", inplace=True)


@case("convert-to-sync/torch-momentum-nan", ValueError, "momentum must be in")
def _(draw):
    m, _ = chain(draw, lambda w: nn.BatchNorm1d(w, momentum=math.nan))
    return m, lambda m: convert(m, to="sync", inplace=True)


@case("convert/unknown-target", ValueError, "unknown target 'tf'")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: convert(m, to="tf", inplace=True)


@case("convert/target-not-a-string", TypeError, "to must be a str")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: convert(m, to=["bnlab"], inplace=True)


@case("convert/no-counterpart", TypeError, "has no torch counterpart")
def _(draw):
    m, _ = chain(draw, lambda w: GhostBatchNorm(w), kinds=("bnlab",))
    return m, lambda m: convert(m, to="torch", inplace=True)


@case("convert/inplace-not-a-bool", TypeError, "inplace must be True or False")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: convert(m, to="torch", inplace=1)


@case("freeze/untracked-layer", ValueError, "needs track_running_stats=True")
def _(draw):
    m, _ = chain(draw, lambda w: nn.BatchNorm1d(w, track_running_stats=False))
    return m, lambda m: freeze(m, inplace=True)


@case("freeze/torch-momentum-2", ValueError, "momentum must be in")
def _(draw):
    m, _ = chain(draw, lambda w: nn.BatchNorm1d(w, momentum=2.0))
    return m, lambda m: freeze(m, inplace=True)


@case("freeze/no-counterpart", TypeError, "has no frozen counterpart")
def _(draw):
    m, _ = chain(draw, lambda w: BatchRenorm(w))
    return m, lambda m: freeze(m, inplace=True)


@case("unfreeze/eps-set-after-construction", ValueError, "eps must be a positive")
def _(draw):
    m, _ = chain(draw, lambda w: with_attr(FrozenBatchNorm1d(w), eps=0.0))
    return freeze(m), lambda m: unfreeze(m, inplace=True)


@case("unfreeze/buffer-of-wrong-shape", RuntimeError, "size mismatch")
def _(draw):
    m, _ = chain(draw, lambda w: wrong_shape_buffer(FrozenBatchNorm1d(w)))
    return freeze(m), lambda m: unfreeze(m, inplace=True)


@case("unfreeze/inplace-not-a-bool", TypeError, "inplace must be True or False")
def _(draw):
    m, _ = chain(draw)
    return freeze(m), lambda m: unfreeze(m, inplace="True")


# --- fuse (in place) ---

@case("fuse/eps-set-after-construction", ValueError, "checked at use")
def _(draw):
    m, w = chain(draw, kinds=("bnlab",))
    m = nn.Sequential(*[nn.Sigmoid() if isinstance(x, nn.ReLU) else x for x in m])
    m.extend([nn.Linear(w, w), with_attr(bnlab.BatchNorm1d(w), eps=0.0), nn.Sigmoid()])
    return m, lambda m: fuse(m, inplace=True)


@case("fuse/layer-from-an-older-pickle", AttributeError, "guard")
def _(draw):
    m, w = chain(draw, kinds=("bnlab",))
    m = nn.Sequential(*[nn.Sigmoid() if isinstance(x, nn.ReLU) else x for x in m])
    old = bnlab.BatchNorm1d(w)
    del old.guard  # unpickled from a version without guarded statistics
    m.extend([nn.Linear(w, w), old, nn.Sigmoid()])
    return m, lambda m: fuse(m, inplace=True)


@case("fuse/inplace-not-a-bool", TypeError, "inplace must be True or False")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: fuse(m, inplace="no")


# --- load_state_dict: a wrong entry after entries that match ---

def checkpoint(m: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with every value changed (so a partial copy shows)."""
    return {k: v + 1 for k, v in m.state_dict().items()}


@case("load_state_dict/shape-mismatch-in-a-later-layer", RuntimeError, "nothing was loaded")
def _(draw):
    m, w = chain(draw, lambda w: nn.Linear(w, w))
    sd = checkpoint(m)
    sd[f"{len(m) - 1}.weight"] = torch.zeros(w + 1, w)
    return m, lambda m: load_state_dict(m, sd)


@case("load_state_dict/batchnorm-shape-after-others", RuntimeError, "size mismatch")
def _(draw):
    m, w = chain(draw, lambda w: bnlab.BatchNorm1d(w))
    sd = checkpoint(m)
    sd[f"{len(m) - 1}.running_var"] = torch.ones(w + 2)
    return m, lambda m: load_state_dict(m, sd)


@case("load_state_dict/missing-key", RuntimeError, "Missing key")
def _(draw):
    m, _ = chain(draw, lambda w: bnlab.BatchNorm1d(w))
    sd = checkpoint(m)
    del sd[f"{len(m) - 1}.running_mean"]
    return m, lambda m: load_state_dict(m, sd)


@case("load_state_dict/unexpected-key", RuntimeError, "Unexpected key")
def _(draw):
    m, _ = chain(draw)
    sd = {**checkpoint(m), "head.weight": torch.zeros(2)}
    return m, lambda m: load_state_dict(m, sd)


@case("load_state_dict/value-not-a-tensor", RuntimeError, "expected torch.Tensor")
def _(draw):
    m, _ = chain(draw, lambda w: nn.Linear(w, w))
    sd = checkpoint(m)
    sd[f"{len(m) - 1}.bias"] = [0.0] * m[-1].out_features
    return m, lambda m: load_state_dict(m, sd)


@case("load_state_dict/layer-built-in-inference-mode", RuntimeError, "inference tensor")
def _(draw):
    m, _ = chain(draw, built_in_inference_mode)
    return m, lambda m: load_state_dict(m, checkpoint(m))


@case("load_state_dict/not-a-mapping", TypeError, "expects a mapping")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: load_state_dict(m, list(checkpoint(m).items()))


@case("load_state_dict/strict-not-a-bool", TypeError, "strict must be True or False")
def _(draw):
    m, _ = chain(draw)
    return m, lambda m: load_state_dict(m, checkpoint(m), strict="no")


