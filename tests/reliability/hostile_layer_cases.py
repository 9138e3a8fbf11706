"""Hostile cases for one layer: a training step of a layer built in inference mode,
attributes set after construction, and functional calls with arguments of the wrong type.

Registered in ``hostile.CASES`` like the tool cases; test_hostile_tools.py runs them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st
from torch import nn

import bnlab
from bnlab.functional import batch_norm
from bnlab.norm.fused import batch_norm_sigmoid
from bnlab.norm.variants import BatchRenorm, FrozenBatchNorm1d, GhostBatchNorm, GroupNorm
from tests.reliability.hostile import built_in_inference_mode, case, warm, with_attr

# --- one layer's forward: the per-layer contract, for attributes set after construction ---

def layer(draw, make: Callable[[int], nn.Module], rank: int = 2) -> tuple[nn.Module, int]:
    m = make(draw(st.integers(2, 5)))
    return warm(m, m.num_features, draw(st.integers(1, 3)), rank=rank), m.num_features


def forward_case(name, exc, match, make, attrs=None, rank=2, train=True):
    @case(f"forward/{name}", exc, match)
    def _(draw):
        m, w = layer(draw, make, rank)
        if attrs:
            with_attr(m, **attrs)
        m.train(train)
        shape = (4, w) if rank == 2 else (4, w, 3, 3)
        return m, lambda m: m(torch.randn(shape))


forward_case("momentum-set-to-2", ValueError, "momentum must be in.*checked at use",
             bnlab.BatchNorm1d, {"momentum": 2.0})
forward_case("momentum-set-to-nan", ValueError, "momentum must be in",
             bnlab.BatchNorm1d, {"momentum": math.nan})
forward_case("momentum-set-to-a-string", ValueError, "momentum must be in",
             lambda w: bnlab.BatchNorm1d(w, guard=True), {"momentum": "0.1"})
forward_case("eps-set-to-0", ValueError, "eps must be a positive", bnlab.BatchNorm1d,
             {"eps": 0.0}, train=False)
forward_case("frozen-eps-set-to-nan", ValueError, "eps must be a positive",
             FrozenBatchNorm1d, {"eps": math.nan})
forward_case("ghost-virtual-batch-set-to-0", ValueError, "virtual_batch_size must be >= 1",
             lambda w: GhostBatchNorm(w, virtual_batch_size=2), {"virtual_batch_size": 0})
forward_case("renorm-rmax-set-to-nan", ValueError, "rmax must be finite",
             lambda w: BatchRenorm(w, warmup=False), {"rmax": math.nan})
forward_case("group-norm-groups-set-to-0", ValueError, "num_groups must be >= 1",
             lambda w: GroupNorm(2 * w, 2), {"num_groups": 0}, rank=4)


def inference_case(name, make):
    @case(f"forward/{name}-built-in-inference-mode", RuntimeError, "inference_mode")
    def _(draw):
        w = draw(st.integers(2, 5))
        m = built_in_inference_mode(w, make)
        return m, lambda m: m(torch.randn(4, w) * 2 + 1)


inference_case("batchnorm", bnlab.BatchNorm1d)
inference_case("guarded-batchnorm", lambda w: bnlab.BatchNorm1d(w, guard=True))
inference_case("ghost-batchnorm", lambda w: GhostBatchNorm(w, virtual_batch_size=2))
inference_case("batch-renorm", lambda w: BatchRenorm(w, warmup=False))


# --- functional calls on a layer's buffers: wrong argument types ---

def functional_case(name, exc, match, call):
    @case(f"functional/{name}", exc, match)
    def _(draw):
        m, w = layer(draw, bnlab.BatchNorm1d)
        return m, lambda m: call(torch.randn(4, w), m)


def _bn(x, m, **kw):
    args = {"training": True, "momentum": 0.1, "eps": 1e-5, **kw}
    return batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, **args)


functional_case("training-a-string", TypeError, "training must be a bool",
                lambda x, m: _bn(x, m, training="False"))
functional_case("training-an-int", TypeError, "training must be a bool",
                lambda x, m: _bn(x, m, training=1))
functional_case("training-a-string-guarded-path", TypeError, "training must be a bool",
                lambda x, m: batch_norm(x, m.running_mean, m.running_var, training="False",
                                        skipped=torch.zeros((), dtype=torch.long)))
functional_case("eps-a-string", TypeError, "eps must be a float",
                lambda x, m: _bn(x, m, eps="1e-5"))
functional_case("eps-nan", ValueError, "eps must be finite", lambda x, m: _bn(x, m, eps=math.nan))
functional_case("momentum-nan", ValueError, "momentum must be finite",
                lambda x, m: _bn(x, m, momentum=math.nan))
functional_case("weight-a-list", TypeError, "weight must be a torch.Tensor or None",
                lambda x, m: batch_norm(x, m.running_mean, m.running_var, [1.0] * x.shape[1],
                                        training=True))
functional_case("fused-training-a-string", TypeError, "training must be a bool",
                lambda x, m: batch_norm_sigmoid(x, m.running_mean, m.running_var,
                                                training="yes"))


