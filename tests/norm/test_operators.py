# ruff: noqa: E501 (the table of hostile calls reads best one case per line)
"""The kernels as PyTorch operators: registration checked by PyTorch, and hostile calls.

``torch.library.opcheck`` is PyTorch's own test of a custom operator: the schema's mutation
annotations against what the kernel writes, the fake implementation against the real one
(shapes, dtypes, strides), the autograd registration, and that the operator traces under
torch.compile. Then every argument the C++ side dereferences is attacked, directly through
``torch.ops.bnlab.*`` and the library's Python binding as well as through bnlab's functional
API: each call must raise a Python exception of the stated type, never end the process with a
signal. The calls run in a subprocess, so that a crash is this test failing (naming the case),
not the test runner dying.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bnlab.norm import kernels


def setup_module() -> None:
    """make setup builds the kernels; a suite without them would test nothing here."""
    assert kernels.available(), kernels.status()


def _samples() -> list[tuple]:
    """(x, weight, bias, running_mean, running_var, training, momentum, eps, act, pool)."""
    torch.manual_seed(0)
    x4 = torch.randn(4, 3, 4, 6, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)

    def stats():
        return torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    return [
        (x4, w, b, *stats(), True, 0.1, 1e-5, 0, 1),
        (x4, w, b, *stats(), False, 0.0, 1e-5, 0, 1),
        (x4.contiguous(memory_format=torch.channels_last), w, None, *stats(), True, 0.3, 1e-3,
         0, 1),
        (torch.randn(16, 3, dtype=torch.float64), None, b, None, None, True, 0.1, 1e-5, 0, 1),
        (x4.float(), w.float(), b.float(), *(t.float() for t in stats()), True, 0.1, 1e-5, 1, 2),
        (x4.transpose(2, 3), w, b, *stats(), True, 0.1, 1e-5, 1, 1),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck_forward_and_entry(case):
    args = _samples()[case]
    x = args[0].detach().requires_grad_(True)
    w = args[1].detach().requires_grad_(True) if args[1] is not None else None
    torch.library.opcheck(torch.ops.bnlab.batch_norm.default, (x, w, *args[2:]))
    torch.library.opcheck(torch.ops.bnlab.batch_norm_forward.default, args)


@pytest.mark.parametrize("case", range(6))
def test_opcheck_backward(case):
    x, w, b, rm, rv, training, momentum, eps, act, pool = _samples()[case]
    y, mean, invstd = torch.ops.bnlab.batch_norm_forward(x, w, b, rm, rv, training, momentum,
                                                         eps, act, pool)
    g = torch.randn_like(y)
    for need_input_grad in (True, False):
        torch.library.opcheck(torch.ops.bnlab.batch_norm_backward.default,
                              (g, x, w, b, mean, invstd, training, act, pool, need_input_grad))


# name -> (expected exception type, the call). Names in the table are what a failure reports.
HOSTILE = r"""
import math, sys, torch
import bnlab.functional as BF
from bnlab.norm import kernels
from bnlab.norm.fused import batch_norm_sigmoid

kernels.available()
ops = torch.ops.bnlab
P = kernels.ops._state["module"].batch_norm  # the library's own Python binding
x = torch.randn(4, 3, 2, 2)
w, b, rm, rv = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
A = (1, 0.1, 1e-5)  # training, momentum, eps

def E(*args, act=0, pool=1, **kw):
    t = dict(x=x, w=w, b=b, rm=rm, rv=rv, training=True, momentum=0.1, eps=1e-5, act=act,
             pool=pool)
    t.update(kw)
    return ops.batch_norm(t["x"], t["w"], t["b"], t["rm"], t["rv"], t["training"],
                          t["momentum"], t["eps"], t["act"], t["pool"])

def Fw(**kw):
    t = dict(x=x, w=w, b=b, rm=rm, rv=rv, training=True, momentum=0.1, eps=1e-5, act=0, pool=1)
    t.update(kw)
    return ops.batch_norm_forward(*t.values())

y, mean, invstd = ops.batch_norm_forward(x, w, b, rm.clone(), rv.clone(), True, 0.1, 1e-5)

def Bw(**kw):
    t = dict(g=torch.ones_like(x), x=x, w=w, b=b, mean=mean, invstd=invstd, training=True,
             act=0, pool=1, need=True)
    t.update(kw)
    return ops.batch_norm_backward(*t.values())

CASES = {
    "functional: running_mean without running_var": (ValueError, lambda: BF.batch_norm(x, rm, None, training=True)),
    "functional: running_var without running_mean": (ValueError, lambda: BF.batch_norm(x, None, rv, training=True)),
    "functional: expanded running_var": (RuntimeError, lambda: BF.batch_norm(x, rm, torch.ones(1).expand(3), training=True)),
    "fused: running_mean without running_var": (ValueError, lambda: batch_norm_sigmoid(x, rm, None, training=True, pool=2)),
    "op: running_mean without running_var": (ValueError, lambda: E(rv=None)),
    "op: running_var without running_mean": (ValueError, lambda: E(rm=None)),
    "op: eval without running statistics": (RuntimeError, lambda: E(rm=None, rv=None, training=False)),
    "op: weight of 4 for 3 channels": (RuntimeError, lambda: E(w=torch.ones(4))),
    "op: bias of 2 for 3 channels": (RuntimeError, lambda: E(b=torch.ones(2))),
    "op: running_mean of 0": (RuntimeError, lambda: E(rm=torch.zeros(0))),
    "op: weight float64 for float32 input": (TypeError, lambda: E(w=torch.ones(3, dtype=torch.float64))),
    "op: running_var int64": (TypeError, lambda: E(rv=torch.ones(3, dtype=torch.long))),
    "op: integer input": (TypeError, lambda: E(x=x.long(), w=None, b=None, rm=None, rv=None)),
    "op: half input": (TypeError, lambda: E(x=x.half(), w=None, b=None, rm=None, rv=None)),
    "op: complex input": (TypeError, lambda: E(x=x.cfloat(), w=None, b=None, rm=None, rv=None)),
    "op: 1-D input": (ValueError, lambda: E(x=torch.randn(3))),
    "op: 0-D input": (ValueError, lambda: E(x=torch.tensor(1.0))),
    "op: one value per channel in training": (ValueError, lambda: E(x=torch.randn(1, 3))),
    "op: act=7": (ValueError, lambda: E(act=7)),
    "op: act=-1": (ValueError, lambda: E(act=-1)),
    "op: pool=3": (ValueError, lambda: E(act=1, pool=3)),
    "op: pool=0": (ValueError, lambda: E(act=1, pool=0)),
    "op: pool=2 without the sigmoid": (ValueError, lambda: E(act=0, pool=2)),
    "op: pool=2 with odd height": (ValueError, lambda: E(x=torch.randn(4, 3, 3, 2), act=1, pool=2)),
    "op: pool=2 of a 3-D input": (ValueError, lambda: E(x=torch.randn(4, 3, 2), act=1, pool=2)),
    "op: negative eps": (ValueError, lambda: E(eps=-1.0)),
    "op: NaN eps": (ValueError, lambda: E(eps=math.nan)),
    "op: infinite eps": (ValueError, lambda: E(eps=math.inf)),
    "op: expanded running_mean": (RuntimeError, lambda: E(rm=torch.zeros(1).expand(3))),
    "op: weight on the meta device": (RuntimeError, lambda: E(w=torch.ones(3, device="meta"))),
    "op: sparse input": (NotImplementedError, lambda: E(x=x.to_sparse(), w=None, b=None, rm=None, rv=None)),
    "op: training given as a string": (RuntimeError, lambda: E(training="False")),
    "op: momentum given as a string": (RuntimeError, lambda: E(momentum="0.1")),
    "op: input None": (ValueError, lambda: E(x=None)),
    "op: input on the meta device, buffers on the CPU": (RuntimeError, lambda: E(x=x.to("meta"))),
    "backward op: grad_out on the meta device": (RuntimeError, lambda: Bw(g=torch.ones(4, 3, 2, 2, device="meta"))),
    "forward op: running_mean without running_var": (ValueError, lambda: Fw(rv=None)),
    "forward op: eval without running statistics": (RuntimeError, lambda: Fw(rm=None, rv=None, training=False)),
    "forward op: weight of 2": (RuntimeError, lambda: Fw(w=torch.ones(2))),
    "backward op: grad_out of another shape": (RuntimeError, lambda: Bw(g=torch.ones(4, 3, 2, 1))),
    "backward op: grad_out float64": (TypeError, lambda: Bw(g=torch.ones(4, 3, 2, 2, dtype=torch.float64))),
    "backward op: mean of 2": (RuntimeError, lambda: Bw(mean=torch.zeros(2))),
    "backward op: invstd int": (TypeError, lambda: Bw(invstd=torch.ones(3, dtype=torch.int32))),
    "backward op: pooled grad_out for an unpooled call": (RuntimeError, lambda: Bw(g=torch.ones(4, 3, 1, 1), act=1, pool=1)),
    "backward op: act=9": (ValueError, lambda: Bw(act=9)),
    "backward op: 1-D input": (ValueError, lambda: Bw(x=torch.randn(3))),
    "binding: running_mean without running_var": (ValueError, lambda: P(x, w, b, rm, None, *A, 0, 1)),
    "binding: input None": (TypeError, lambda: P(None, w, b, rm, rv, *A, 0, 1)),
    "binding: a list for the weight": (TypeError, lambda: P(x, [1.0, 1.0, 1.0], b, rm, rv, *A, 0, 1)),
    "binding: too few arguments": (TypeError, lambda: P(x, w)),
}
for name, (expected, call) in CASES.items():
    print("START", name, flush=True)
    try:
        call()
        outcome = "no error"
    except Exception as e:
        outcome = type(e).__name__ + ": " + str(e).splitlines()[0][:200]
    print("DONE", name, "|", outcome, flush=True)
print("EXPECTED", repr({n: e.__name__ for n, (e, _) in CASES.items()}), flush=True)
"""


def test_hostile_calls_raise_never_crash():
    proc = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())
    lines = proc.stdout.splitlines()
    started = [ln[6:] for ln in lines if ln.startswith("START ")]
    assert proc.returncode == 0, (
        f"the process ended with status {proc.returncode} during case {started[-1:]!r}\n"
        f"{proc.stderr[-2000:]}")
    expected = eval(next(ln for ln in lines if ln.startswith("EXPECTED "))[9:])
    outcomes = dict(ln[5:].split(" | ", 1) for ln in lines if ln.startswith("DONE "))
    assert outcomes.keys() == expected.keys()
    wrong = {n: o for n, o in outcomes.items() if not o.startswith(expected[n] + ":")}
    assert not wrong, wrong
    assert len(outcomes) >= 45


EMPTY = r"""
import torch
import bnlab
import bnlab.functional as BF
from bnlab.norm import backends
from bnlab.norm.fused import batch_norm_sigmoid

for shape, fmt in [((0, 3, 4, 4), None), ((4, 3, 0), None), ((2, 3, 0, 4), None),
                   ((0, 3, 4, 4), torch.channels_last), ((0, 3), None)]:
    x = torch.randn(shape) if fmt is None else torch.randn(shape).contiguous(memory_format=fmt)
    for training in (True, False):
        print("START", shape, training, flush=True)
        kind = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}
        ours, theirs = bnlab.BatchNorm(3).train(training), kind[x.dim()](3).train(training)
        with torch.no_grad():
            ours.running_var.fill_(2.0)
            theirs.running_var.fill_(2.0)
        assert ours(x).shape == theirs(x).shape == x.shape
        y = torch.ops.bnlab.batch_norm(x, None, None, torch.zeros(3), torch.ones(3), training,
                                       0.1, 1e-5)
        assert y.shape == x.shape
        if x.dim() == 4 and fmt is None:
            assert batch_norm_sigmoid(x, torch.zeros(3), torch.ones(3), training=training,
                                      pool=2).shape == (x.shape[0], 3, x.shape[2] // 2,
                                                        x.shape[3] // 2)
        assert ours.num_batches_tracked == 0 and torch.equal(ours.running_var, torch.full((3,), 2.0))
print("ALL DONE", flush=True)
"""


def test_empty_inputs_in_every_mode_never_crash():
    """An empty batch (N = 0, or a spatial size of 0) in training and in eval, through the
    module, the operator and the fused layer: torch's output shape, buffers untouched. (In eval
    the kernels once divided their work by a zero length: SIGFPE.)"""
    proc = subprocess.run([sys.executable, "-c", EMPTY], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    started = [ln for ln in proc.stdout.splitlines() if ln.startswith("START")]
    assert proc.returncode == 0, (proc.returncode, started[-1:], proc.stderr[-1500:])
    assert proc.stdout.rstrip().endswith("ALL DONE")


@pytest.mark.parametrize("shape", [(6, 3, 4), (64, 3), (4, 3, 4, 4)])
def test_overflowing_values_agree_across_backends(shape):
    """|x| ~ 1e200 in float64: the squared deviations overflow; every backend gives torch's
    answer (output 0, running variance inf), none a NaN (inf * 0 in a merge once did)."""
    import bnlab.functional as BF
    from bnlab.norm import backends

    x = torch.randn(shape, dtype=torch.float64) * 1e200
    if len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for backend in backends.BACKENDS:
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        with backends.forced(backend):
            y = BF.batch_norm(x, rm, rv, training=True)
        results.append((y, rm, rv))
    for y, rm, rv in results:
        assert not y.isnan().any() and torch.equal(y, results[2][0])
        assert torch.equal(rv, results[2][2]) and rv.isinf().all()
        assert torch.allclose(rm, results[2][1], rtol=1e-12)
