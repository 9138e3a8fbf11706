"""Constructor arguments a variant cannot use are refused when the layer is built; the checks
at use accept every valid value; layers do not import the tools built on them."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bnlab
from bnlab.norm.variants import (
    BatchRenorm,
    FrozenBatchNorm2d,
    GhostBatchNorm,
    GroupNorm,
    LayerNorm,
    PerActivationBatchNorm,
    SyncBatchNorm,
    group_norm,
)

ROOT = Path(__file__).resolve().parents[2]
NORM = ROOT / "src" / "bnlab" / "norm"

REFUSED = {  # what was accepted (or crashed with an unrelated error) before
    "group-norm-0-groups": (lambda: GroupNorm(4, 0), ValueError, "num_groups must be >= 1"),
    "group-norm-negative-groups": (lambda: GroupNorm(4, -2), ValueError, "must be >= 1"),
    "group-norm-bool-groups": (lambda: GroupNorm(4, True), TypeError, "must be an int"),
    "group-norm-float-groups": (lambda: GroupNorm(4, 2.0), TypeError, "must be an int"),
    "group-norm-0-features-default-groups": (lambda: GroupNorm(0), ValueError,
                                             "num_features must be a positive int"),
    "layer-norm-affine-a-string": (lambda: LayerNorm(4, affine="no"), TypeError,
                                   "affine must be True or False"),
    "renorm-rmax-nan": (lambda: BatchRenorm(4, rmax=math.nan), ValueError,
                        "rmax must be finite"),
    "renorm-dmax-nan": (lambda: BatchRenorm(4, dmax=math.nan), ValueError,
                        "dmax must be finite"),
    "renorm-rmax-inf": (lambda: BatchRenorm(4, rmax=math.inf), ValueError,
                        "rmax must be finite"),
    "renorm-rmax-bool": (lambda: BatchRenorm(4, rmax=True), TypeError, "rmax must be a float"),
    "renorm-warmup-a-string": (lambda: BatchRenorm(4, warmup="no"), TypeError,
                               "warmup must be True or False"),
    "ghost-virtual-batch-bool": (lambda: GhostBatchNorm(4, virtual_batch_size=True),
                                 TypeError, "virtual_batch_size must be an int"),
    "ghost-virtual-batch-float": (lambda: GhostBatchNorm(4, virtual_batch_size=2.5),
                                  TypeError, "virtual_batch_size must be an int"),
    "ghost-guard-a-string": (lambda: GhostBatchNorm(4, guard="False"), TypeError,
                             "guard must be True or False"),
    "per-activation-float-size": (lambda: PerActivationBatchNorm(4, (2.5,)), TypeError,
                                  "spatial_shape entry must be an int"),
    "per-activation-bool-size": (lambda: PerActivationBatchNorm(4, (True, 4)), TypeError,
                                 "spatial_shape entry must be an int"),
    "per-activation-zero-size": (lambda: PerActivationBatchNorm(4, (0,)), ValueError,
                                 "must be >= 1"),
    "per-activation-string-shape": (lambda: PerActivationBatchNorm(4, "44"), TypeError,
                                    "spatial_shape must be a tuple of ints"),
    "per-activation-int-shape": (lambda: PerActivationBatchNorm(4, 4), TypeError,
                                 "spatial_shape must be a tuple of ints"),
    "sync-process-group-a-string": (lambda: SyncBatchNorm(4, process_group="gloo"),
                                    TypeError, "process_group must be None"),
    "sync-affine-a-string": (lambda: SyncBatchNorm(4, affine="False"), TypeError,
                             "affine must be True or False"),
    "frozen-freeze-affine-a-string": (lambda: FrozenBatchNorm2d(4, freeze_affine="no"),
                                      TypeError, "freeze_affine must be True or False"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_variant_constructor_refuses_nonsense(case):
    build, exc, match = REFUSED[case]
    with pytest.raises(exc, match=match):
        build()


FUNCTIONAL = {
    "groups-0": (lambda x: group_norm(x, 0), ValueError, "num_groups must be >= 1"),
    "groups-bool": (lambda x: group_norm(x, True), TypeError, "num_groups must be an int"),
    "eps-a-string": (lambda x: group_norm(x, 2, eps="1e-5"), TypeError, "eps must be a float"),
    "weight-wrong-size": (lambda x: group_norm(x, 2, torch.ones(3)), TypeError,
                          "weight must be None or a tensor of 4 elements"),
}


@pytest.mark.parametrize("case", sorted(FUNCTIONAL))
def test_group_norm_functional_refuses_wrong_arguments(case):
    call, exc, match = FUNCTIONAL[case]
    with pytest.raises(exc, match=match):
        call(torch.randn(3, 4, 2))


@pytest.mark.parametrize("attrs", [{"momentum": None}, {"momentum": 1}, {"momentum": 0.0},
                                   {"eps": 1e-3}, {"eps": 1}],
                         ids=["momentum-None", "momentum-int-1", "momentum-0", "eps-1e-3",
                              "eps-int-1"])
def test_valid_attribute_changes_still_train_like_torch(attrs):
    ours, ref = bnlab.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    for m in (ours, ref):
        for k, v in attrs.items():
            setattr(m, k, v)
    for _ in range(3):
        x = torch.randn(8, 3) * 2 + 1
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


def test_layers_do_not_import_the_tools_built_on_them():
    # freeze/unfreeze lived in variants/frozen.py and imported convert, which imports the
    # frozen layers: a circle (tests/test_layering.py finds circles anywhere in bnlab).
    tools = {"convert", "fold", "precise", "state", "transaction"}
    for path in (NORM / "variants").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module.rpartition(".")[2]} | {a.name for a in node.names}
                assert not (node.module.startswith("bnlab.norm") and names & tools), (
                    path.name, node.module)


def test_checks_at_use_keep_torch_compile_fullgraph_working():
    # The reference path (BNLAB_FAST=0) is the compiled one; the inference-tensor check
    # must not break the trace.
    code = ("import torch, bnlab\n"
            "m = bnlab.BatchNorm2d(3)\n"
            "f = torch.compile(m, fullgraph=True, backend='eager')\n"
            "x = torch.randn(4, 3, 5, 5)\n"
            "torch.testing.assert_close(f(x), bnlab.BatchNorm2d(3)(x))\n"
            "print('ok')\n")
    env = {**os.environ, "BNLAB_FAST": "0", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]
