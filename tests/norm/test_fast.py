"""The compiled fast path (bnlab.norm.fast) against the readable reference and a float64 truth.

The fast kernels are the default wherever they apply, so every parity test of the suite runs
through them; this file checks what is specific to them: agreement with the reference on every
layout and shape class the kernels distinguish (planes, rows, channels_last, tiny planes, large
batches split into chunks), accuracy against float64, determinism, which calls they take, and
that bnlab works without them (no compiler, switched off).

Tolerances: float64 fast vs reference <= 1e-12 relative to the largest value (different
summation orders of ~1e5 terms, each exact to 1e-16); float32 <= 2e-6 relative to the largest
value against the float64 truth (measured on the shapes below: <= 5.6e-7 on the output and
input gradient, 1.4e-6 on the weight gradient; ATen's own CPU kernel is at up to 7e-6). The
float32 bound holds for the hundreds of values per channel these shapes have: with a few dozen,
the weight gradient's error is dominated by the float32 rounding of the saved mean (ATen's
too: both reach 2e-6 to 4e-6 there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bnlab.functional as BF
from bnlab.norm import fast

SHAPES = {
    "planes": ((32, 6, 12, 12), torch.contiguous_format),
    "planes-1x1": ((64, 5, 1, 1), torch.contiguous_format),
    "planes-3d": ((16, 7, 9), torch.contiguous_format),
    "rows-2d": ((300, 84), torch.contiguous_format),
    "rows-channels_last": ((32, 6, 12, 12), torch.channels_last),
    "rows-channels_last_3d": ((4, 5, 3, 4, 5), torch.channels_last_3d),
    "many-chunks": ((8192, 24), torch.contiguous_format),
    # Rows are walked k at a time ("wide rows" of k * C values, see the kernel's Layout);
    # the R % k rows left over (the tail) take their own path.
    "rows-tail": ((301, 84), torch.contiguous_format),  # k = 4: 75 wide rows + 1
    "rows-all-tail": ((15, 13), torch.contiguous_format),  # fewer rows than k = 16
    "rows-odd-C": ((257, 13), torch.contiguous_format),  # k = 16: 16 wide rows + 1
    "rows-capped-k": ((301, 127), torch.contiguous_format),  # k = 2 (not 16): 150 + 1
    "rows-wide-C": ((300, 200), torch.contiguous_format),  # C >= 128: k = 1
    "rows-channels_last-C16": ((9, 16, 3, 5), torch.channels_last),  # k = 8: 16 + 7
    "many-chunks-tail": ((8195, 24), torch.contiguous_format),  # 2 chunks, then 3 rows
    "one-channel": ((50, 1, 7, 7), torch.contiguous_format),
}


def _case(shape, fmt, dtype, offset=3.0):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + offset).to(dtype)
    x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, dtype=dtype) + 0.5
    b = torch.randn(c, dtype=dtype)
    g = torch.randn(shape, dtype=dtype)
    return x, w, b, g


def _run(x, w, b, g, training, use_fast, dtype=None):
    """Forward + backward on private copies; returns (y, dx, dw, db, running_mean, running_var)."""
    dtype = dtype or x.dtype
    c = x.shape[1]
    xs = x.detach().to(dtype).clone(memory_format=torch.preserve_format).requires_grad_()
    ws, bs = w.detach().to(dtype).requires_grad_(), b.detach().to(dtype).requires_grad_()
    rm = torch.linspace(-1, 1, c, dtype=dtype)
    rv = torch.linspace(0.5, 2, c, dtype=dtype)
    with fast.enabled(use_fast):
        y = BF.batch_norm(xs, rm, rv, ws, bs, training, 0.2, 1e-5)
        y.backward(g.to(dtype))
    return [t.detach() for t in (y, xs.grad, ws.grad, bs.grad, rm, rv)]


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def test_kernels_are_built_and_loaded():
    """make setup builds them; a suite that silently fell back would test nothing here."""
    assert fast.available(), fast.status()
    assert "loaded from" in fast.status()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape_id", SHAPES)
def test_float64_fast_equals_reference(shape_id, training):
    shape, fmt = SHAPES[shape_id]
    x, w, b, g = _case(shape, fmt, torch.float64)
    ours = _run(x, w, b, g, training, use_fast=True)
    ref = _run(x, w, b, g, training, use_fast=False)
    for a, r in zip(ours, ref, strict=True):
        assert _rel(a, r) <= 1e-12
    assert ours[0].stride() == ref[0].stride() and ours[1].stride() == ref[1].stride()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape_id", SHAPES)
def test_float32_close_to_float64_truth(shape_id, training):
    shape, fmt = SHAPES[shape_id]
    x, w, b, g = _case(shape, fmt, torch.float32, offset=50.0)  # |mean| >> std
    ours = _run(x, w, b, g, training, use_fast=True)
    truth = _run(x, w, b, g, training, use_fast=False, dtype=torch.float64)
    for a, t in zip(ours, truth, strict=True):
        assert a.dtype == torch.float32
        assert _rel(a, t) <= 2e-6


def test_deterministic():
    """Chunking is fixed by the thread count, not by scheduling: repeated calls agree bitwise."""
    x, w, b, g = _case((4096, 24), torch.contiguous_format, torch.float32)
    first = _run(x, w, b, g, True, use_fast=True)
    for _ in range(3):
        again = _run(x, w, b, g, True, use_fast=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_which_calls_take_the_fast_path():
    x = torch.randn(8, 3, 4, 4)
    w = torch.ones(3)
    assert fast.kernels_for(x, w) is not None
    assert fast.kernels_for(x.contiguous(memory_format=torch.channels_last), w) is not None
    assert fast.kernels_for(x.double(), w.double()) is not None
    # Not for: half types, mixed dtypes, other strides, empty inputs, strided parameters.
    assert fast.kernels_for(x.half(), w.half()) is None
    assert fast.kernels_for(x, w.double()) is None
    assert fast.kernels_for(x.transpose(2, 3), w) is None
    assert fast.kernels_for(x[:0], w) is None
    assert fast.kernels_for(x, torch.ones(6)[::2]) is None
    with fast.enabled(False):
        assert fast.kernels_for(x, w) is None


def test_the_kernels_own_rule_agrees_with_kernels_for():
    """Once loaded, the kernels' entry point decides by itself (returning None where it does
    not apply); its rule must be kernels_for's, case by case."""
    ops = fast.kernels_for(torch.randn(2, 2))
    x = torch.randn(8, 3, 4, 4)
    w = torch.ones(3)
    cases = [(x, w), (x.contiguous(memory_format=torch.channels_last), w), (x.double(), w.double()),
             (x.half(), w.half()), (x, w.double()), (x.transpose(2, 3), w), (x[:0], w),
             (x, torch.ones(6)[::2]), (torch.randn(5, 4), torch.ones(4)),
             (torch.randn(2, 3, 2, 2, 2).contiguous(memory_format=torch.channels_last_3d), w),
             (torch.randn(2, 3, 2, 2, 2).transpose(2, 4), w)]
    for xi, wi in cases:
        expected = fast.kernels_for(xi, wi) is not None
        assert (ops.batch_norm(xi, wi, None, None, None, True, 0.1, 1e-5, fast.IDENTITY, 1)
                is not None) == expected, (xi.shape, xi.stride(), xi.dtype, wi.dtype)
    # Pooling: only a contiguous 4-D input with even H and W.
    for xi, fits in [(x, True), (x[:, :, :3].contiguous(), False), (x.contiguous(
            memory_format=torch.channels_last), False)]:
        y = ops.batch_norm(xi, w, None, None, None, True, 0.1, 1e-5, fast.SIGMOID, 2)
        assert (y is not None) == fits


def test_other_layouts_still_correct():
    """A transposed (non-dense-format) input takes the reference path, with the same result."""
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64).transpose(2, 3)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ours = BF.batch_norm(x, rm.clone(), rv.clone(), None, None, True)
    ref = torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), None, None, True)
    assert _rel(ours, ref) <= 1e-12


def test_no_autograd_node_without_gradients():
    """Inference (no_grad, or nothing requiring grad) calls the kernels directly."""
    x = torch.randn(16, 4)
    rm, rv = torch.zeros(4), torch.ones(4)
    with torch.no_grad():
        y = BF.batch_norm(x, rm, rv, torch.ones(4), torch.zeros(4), False)
    assert y.grad_fn is None
    y = BF.batch_norm(x.requires_grad_(), rm, rv, None, None, False)
    assert y.grad_fn is not None


def test_double_backward_through_fast_forward():
    """create_graph=True: the fast forward, then the reference's differentiable backward."""
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, w: BF.batch_norm(x, None, None, w, None, True), (x, w))


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


CHECK_AGAINST_TORCH = """
    import warnings, torch, torch.nn.functional as F
    import bnlab.functional as BF
    from bnlab.norm import fast
    x = torch.randn(32, 6, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = BF.batch_norm(x, None, None, None, None, True)
        BF.batch_norm(x, None, None, None, None, True)
    assert (y - F.batch_norm(x, None, None, None, None, True)).abs().max() < 1e-5
    print(fast.available(), len([w for w in caught if "unavailable" in str(w.message)]))
    print(fast.status())
"""


def test_works_without_a_compiler(tmp_path):
    """No compiler (and nothing built yet): one warning, then the reference, same results."""
    out = _python(CHECK_AGAINST_TORCH, CXX=str(tmp_path / "no-such-compiler"),
                  BNLAB_KERNELS=str(tmp_path / "kernels"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False 1"
    assert "unavailable" in lines[1] and "no C++ compiler" in lines[1]
    assert not list((tmp_path / "kernels").glob("*"))  # nothing half-built left behind


def test_failed_compilation_leaves_nothing(tmp_path):
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'error: simulated compiler failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = _python(CHECK_AGAINST_TORCH, CXX=str(fake), BNLAB_KERNELS=str(tmp_path / "k"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "False 1"
    assert "simulated compiler failure" in out.stdout
    assert not list((tmp_path / "k").glob("*"))


def test_switched_off_and_required(tmp_path):
    off = _python(CHECK_AGAINST_TORCH, BNLAB_FAST="0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.splitlines()[0] == "False 0"  # off by choice: no warning
    required = _python(CHECK_AGAINST_TORCH, BNLAB_FAST="1", CXX=str(tmp_path / "none"),
                       BNLAB_KERNELS=str(tmp_path / "k"))
    assert required.returncode != 0
    assert "BNLAB_FAST=1 but the fast kernels are unavailable" in required.stderr


def test_bad_mode_is_named():
    out = _python("import bnlab", BNLAB_FAST="yes")
    assert out.returncode != 0
    assert "BNLAB_FAST='yes' is not one of auto, 0, 1" in out.stderr


def test_cli_status_and_build(capsys):
    from bnlab.cli import main

    assert main(["kernels", "status"]) == 0
    assert "loaded from" in capsys.readouterr().out
    assert main(["kernels", "build"]) == 0  # already built: returns the library's path
    assert capsys.readouterr().out.strip().endswith(".so")
