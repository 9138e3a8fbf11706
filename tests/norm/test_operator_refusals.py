"""What the ``torch.ops.bnlab.*`` operators refuse, before they touch memory or a buffer.

* Layouts the kernels do not walk (nested, sparse COO/CSR, quantized, MKL-DNN, lazily negated
  views, ZeroTensors), in every tensor argument of every operator: NotImplementedError, one
  line, naming the argument (a nested input was once read as dense memory it does not own).
  These direct calls run in a subprocess: a crash fails the test, naming the case.
* Forward-mode AD (dual tensors, torch.func.jvp) through the operators: refused with torch's
  NotImplementedError ("Trying to use forward AD with ..."), never a silent zero or None
  tangent; bnlab's functional API and layers give such calls to ATen, whose tangent is checked
  against torch's jvp of F.batch_norm and against finite differences in float64.
* batch_norm_forward / batch_norm_backward with an input that requires grad (their outputs
  would have no history): RuntimeError; under no_grad they run.
* A running buffer that requires grad, with grad mode on: RuntimeError, as torch raises.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.testing import assert_close

import bnlab
import bnlab.functional as BF
from bnlab.norm import backends, kernels
from bnlab.norm.fused import batch_norm_act

OPS = torch.ops.bnlab


def setup_module() -> None:
    assert kernels.available(), kernels.status()


LAYOUTS = r"""
import torch
import bnlab.norm  # loads the operators
ops = torch.ops.bnlab

def bad(t, kind):
    if kind == "nested":
        return torch.nested.nested_tensor([t[0], t[0][..., :1]] if t.dim() > 1 else [t])
    if kind == "sparse_coo":
        return t.to_sparse()
    if kind == "sparse_csr":
        return t.reshape(t.shape[0], -1).to_sparse_csr() if t.dim() >= 2 else t.to_sparse()
    if kind == "quantized":
        return torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)
    if kind == "mkldnn":
        return t.float().to_mkldnn()
    if kind == "neg_view":
        return torch._neg_view(t)
    return torch._efficientzerotensor(t.shape)

x = torch.randn(4, 3, 2, 2)
w, b = torch.rand(3) + 0.5, torch.randn(3)
y, mean, invstd = ops.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
g = torch.randn_like(x)
CALLS = {  # operator: (its tensor arguments by name, the call from them)
    "batch_norm": (dict(input=x, weight=w, bias=b, running_mean=torch.zeros(3),
                        running_var=torch.ones(3)),
                   lambda a: ops.batch_norm(*a.values(), True, 0.1, 1e-5)),
    "batch_norm_forward": (dict(input=x, weight=w, bias=b, running_mean=torch.zeros(3),
                                running_var=torch.ones(3)),
                           lambda a: ops.batch_norm_forward(*a.values(), True, 0.1, 1e-5)),
    "batch_norm_backward": (dict(grad_out=g, input=x, weight=w, bias=b, mean=mean,
                                 invstd=invstd),
                            lambda a: ops.batch_norm_backward(*a.values(), True, 0, 1, True)),
}
KINDS = ("nested", "sparse_coo", "sparse_csr", "quantized", "mkldnn", "neg_view", "zerotensor")
for op, (args, call) in CALLS.items():
    for name in args:
        for kind in KINDS:
            case = f"{op}/{name}/{kind}"
            print("START", case, flush=True)
            a = {k: v.clone() for k, v in args.items()}
            before = {k: v.clone() for k, v in a.items()}
            a[name] = bad(a[name], kind)
            try:
                call(a)
                outcome = "no error"
            except Exception as e:
                outcome = f"{type(e).__name__}|{len(str(e).splitlines())}|{str(e)}"
            untouched = all(torch.equal(a[k], before[k]) for k in a if k != name)
            print("DONE", case, "|", untouched, "|", outcome, flush=True)
print("ALL DONE", flush=True)
"""


def test_every_operator_refuses_foreign_layouts_in_every_argument():
    proc = subprocess.run([sys.executable, "-c", LAYOUTS], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())
    lines = proc.stdout.splitlines()
    started = [ln[6:] for ln in lines if ln.startswith("START ")]
    assert proc.returncode == 0, (proc.returncode, started[-1:], proc.stderr[-2000:])
    assert lines[-1] == "ALL DONE"
    done = [ln[5:].split(" | ", 2) for ln in lines if ln.startswith("DONE ")]
    assert len(done) == len(started) == 7 * (5 + 5 + 6)
    wrong = {}
    for case, untouched, outcome in done:
        name = case.split("/")[1].replace("input", "the input")
        kind, nlines, message = outcome.split("|", 2)
        if not (untouched == "True" and kind == "NotImplementedError" and nlines == "1"
                and message.startswith(f"bnlab::batch_norm: {name} ")):
            wrong[case] = (untouched, outcome[:200])
    assert not wrong, wrong


# ---- forward-mode AD -------------------------------------------------------------------------

def _args(dtype=torch.float64):
    x = torch.randn(4, 3, 2, 2, dtype=dtype)
    return dict(input=x, weight=torch.rand(3, dtype=dtype) + 0.5,
                bias=torch.randn(3, dtype=dtype), running_mean=torch.randn(3, dtype=dtype),
                running_var=torch.rand(3, dtype=dtype) + 0.5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("op,act", [("batch_norm", 0), ("batch_norm", 1), ("batch_norm", 2),
                                    ("batch_norm_forward", 0)])
@pytest.mark.parametrize("dual", ["input", "weight", "bias", "running_mean"])
def test_operators_refuse_dual_tensors(dual, op, act, training):
    a = _args()
    before = {k: v.clone() for k, v in a.items()}
    with fwAD.dual_level():
        a[dual] = fwAD.make_dual(a[dual], torch.ones_like(a[dual]))
        with pytest.raises(NotImplementedError, match=r"^Trying to use forward AD with "
                                                      rf"bnlab::{op} that does not support"):
            getattr(OPS, op)(*a.values(), training, 0.1, 1e-5, act)
    assert all(torch.equal(fwAD.unpack_dual(a[k]).primal, before[k]) for k in a)


def test_backward_operator_refuses_dual_tensors():
    a = _args()
    _, mean, invstd = OPS.batch_norm_forward(*a.values(), True, 0.1, 1e-5)
    with fwAD.dual_level():
        g = fwAD.make_dual(torch.ones_like(a["input"]), torch.ones_like(a["input"]))
        with pytest.raises(NotImplementedError, match="bnlab::batch_norm_backward"):
            OPS.batch_norm_backward(g, a["input"], None, None, mean, invstd, True, 0, 1, True)


@pytest.mark.parametrize("act", [0, 1])
def test_operator_refuses_jvp(act):
    a = _args()
    with pytest.raises(NotImplementedError, match="forward AD with bnlab::batch_norm "):
        torch.func.jvp(lambda t: OPS.batch_norm(t, *list(a.values())[1:], True, 0.1, 1e-5, act),
                       (a["input"],), (torch.ones_like(a["input"]),))


def _finite_difference(f, primals, tangents, h=1e-6):
    plus = f(*(p + h * t for p, t in zip(primals, tangents, strict=True)))
    minus = f(*(p - h * t for p, t in zip(primals, tangents, strict=True)))
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", [None, "sigmoid", "relu"])
def test_bnlab_api_under_jvp_gives_torchs_tangent(act, training):
    """bnlab's own entry points (which pick the kernels for these float64 CPU tensors) give
    jvp to ATen: the tangent is torch's and the finite differences' (float64: central
    differences with h = 1e-6 are good to about 1e-8 here)."""
    a = _args()
    rm, rv = a["running_mean"], a["running_var"]
    primals = (a["input"], a["weight"], a["bias"])
    tangents = tuple(torch.randn_like(p) for p in primals)
    fn = torch.sigmoid if act == "sigmoid" else torch.relu if act == "relu" else (lambda z: z)

    def ours(x, w, b):
        if act is None:
            return BF.batch_norm(x, rm.clone(), rv.clone(), w, b, training)
        return batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, act=act)

    def theirs(x, w, b):
        return fn(F.batch_norm(x, rm.clone(), rv.clone(), w, b, training))

    assert backends.select(a["input"]) == "kernels"
    y, t = torch.func.jvp(ours, primals, tangents)
    y0, t0 = torch.func.jvp(theirs, primals, tangents)
    assert_close(y, y0, rtol=1e-12, atol=1e-12)
    assert_close(t, t0, rtol=1e-10, atol=1e-10)
    assert_close(t, _finite_difference(theirs, primals, tangents), rtol=1e-6, atol=1e-7)
    assert t.abs().max() > 0.1  # a real tangent, not a zero one


def test_dual_tensors_through_bnlab_layers_match_torch():
    ours, theirs = bnlab.BatchNorm2d(3).double(), torch.nn.BatchNorm2d(3).double()
    x, tx = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2,
                                                                     dtype=torch.float64)
    for training in (True, False):
        tangents = []
        for layer in (ours.train(training), theirs.train(training)):
            with fwAD.dual_level():
                tangents.append(fwAD.unpack_dual(layer(fwAD.make_dual(x, tx))).tangent)
        assert tangents[0] is not None
        assert_close(tangents[0], tangents[1], rtol=1e-10, atol=1e-10)
    assert_close(ours.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)


# ---- non-differentiable operators and buffers that require grad ------------------------------

def test_forward_and_backward_operators_refuse_inputs_that_require_grad():
    a = _args()
    x = a["input"].clone().requires_grad_()
    rm = a["running_mean"].clone()
    with pytest.raises(RuntimeError, match="bnlab::batch_norm_forward is not differentiable"):
        OPS.batch_norm_forward(x, a["weight"], a["bias"], rm, a["running_var"], True, 0.1,
                               1e-5)
    assert torch.equal(rm, a["running_mean"])
    with torch.no_grad():
        y, mean, invstd = OPS.batch_norm_forward(x, a["weight"], a["bias"], None, None, True,
                                                 0.1, 1e-5)
    assert_close(y, F.batch_norm(a["input"], None, None, a["weight"], a["bias"], True),
                 rtol=1e-12, atol=1e-12)
    g = torch.ones_like(y).requires_grad_()
    with pytest.raises(RuntimeError, match="bnlab::batch_norm_backward is not differentiable"):
        OPS.batch_norm_backward(g, x, a["weight"], None, mean, invstd, True, 0, 1, True)


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("entry", ["reference", "kernels", "aten", "operator", "fused"])
def test_running_buffer_that_requires_grad_is_refused_as_torch(entry, training, which):
    a = _args()
    a[which] = a[which].clone().requires_grad_()
    before = {k: v.detach().clone() for k, v in a.items()}
    with pytest.raises(RuntimeError, match="not differentiable"):  # the oracle
        F.batch_norm(*(a[k] for k in ("input", "running_mean", "running_var")), training=training)
    with pytest.raises(RuntimeError, match=rf"not differentiable with respect to argument "
                                           rf"'{which}'. This input cannot have requires_grad"):
        if entry == "operator":
            OPS.batch_norm(*a.values(), training, 0.1, 1e-5)
        elif entry == "fused":
            batch_norm_act(a["input"], a["running_mean"], a["running_var"], training=training)
        else:
            with backends.forced(entry):
                BF.batch_norm(a["input"], a["running_mean"], a["running_var"], training=training)
    assert all(torch.equal(a[k].detach(), before[k]) for k in a)
    with torch.no_grad():  # as torch: allowed where nothing is recorded
        BF.batch_norm(a["input"], a["running_mean"], a["running_var"], training=training)
