"""The compiled kernels (bnlab.norm.kernels) against the readable reference and a float64 truth.

The kernels are the CPU default, so every parity test of the suite runs through them (and
through the other backends); this file checks what is specific to them: agreement with the
reference on every layout and shape class the kernels distinguish (planes, rows, channels_last,
tiny planes, large batches split into chunks), accuracy against float64, determinism, layouts
they copy first, and that bnlab works without them (no compiler, switched off).

Tolerances: float64 kernels vs reference <= 1e-12 relative to the largest value (different
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
from pathlib import Path

import pytest
import torch

import bnlab.functional as BF
from bnlab.norm import backends, kernels

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


def _run(x, w, b, g, training, kernels_on, dtype=None):
    """Forward + backward on private copies; returns (y, dx, dw, db, running_mean, running_var)."""
    dtype = dtype or x.dtype
    c = x.shape[1]
    xs = x.detach().to(dtype).clone(memory_format=torch.preserve_format).requires_grad_()
    ws, bs = w.detach().to(dtype).requires_grad_(), b.detach().to(dtype).requires_grad_()
    rm = torch.linspace(-1, 1, c, dtype=dtype)
    rv = torch.linspace(0.5, 2, c, dtype=dtype)
    with backends.forced("kernels" if kernels_on else "reference"):
        y = BF.batch_norm(xs, rm, rv, ws, bs, training, 0.2, 1e-5)
        y.backward(g.to(dtype))
    return [t.detach() for t in (y, xs.grad, ws.grad, bs.grad, rm, rv)]


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def test_kernels_are_built_and_loaded():
    """make setup builds them; a suite that silently fell back would test nothing here."""
    assert kernels.available(), kernels.status()
    assert "loaded from" in kernels.status()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape_id", SHAPES)
def test_float64_kernels_equal_reference(shape_id, training):
    shape, fmt = SHAPES[shape_id]
    x, w, b, g = _case(shape, fmt, torch.float64)
    ours = _run(x, w, b, g, training, kernels_on=True)
    ref = _run(x, w, b, g, training, kernels_on=False)
    for a, r in zip(ours, ref, strict=True):
        assert _rel(a, r) <= 1e-12
    assert ours[0].stride() == ref[0].stride() and ours[1].stride() == ref[1].stride()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape_id", SHAPES)
def test_float32_close_to_float64_truth(shape_id, training):
    shape, fmt = SHAPES[shape_id]
    x, w, b, g = _case(shape, fmt, torch.float32, offset=50.0)  # |mean| >> std
    ours = _run(x, w, b, g, training, kernels_on=True)
    truth = _run(x, w, b, g, training, kernels_on=False, dtype=torch.float64)
    for a, t in zip(ours, truth, strict=True):
        assert a.dtype == torch.float32
        assert _rel(a, t) <= 2e-6


def test_deterministic():
    """Chunking is fixed by the thread count, not by scheduling: repeated calls agree bitwise."""
    x, w, b, g = _case((4096, 24), torch.contiguous_format, torch.float32)
    first = _run(x, w, b, g, True, kernels_on=True)
    for _ in range(3):
        again = _run(x, w, b, g, True, kernels_on=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("act", [kernels.IDENTITY, kernels.SIGMOID, kernels.RELU],
                         ids=["identity", "sigmoid", "relu"])
def test_planes_same_bits_either_loop(act):
    """Contiguous inputs: a channel is written right after its reduction when there are two
    channels a thread or more, in a second loop otherwise. Both compute every value the same
    way: 1 thread (4 channels each: one loop) and 4 threads (one channel each: two loops) give
    the same bits, forward and backward, whether dx is wanted or not."""
    x, w, b, g = _case((8, 4, 9, 7), torch.contiguous_format, torch.float32)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 4):
            torch.set_num_threads(n)
            rm, rv = torch.zeros(4), torch.ones(4)
            y, mean, invstd = torch.ops.bnlab.batch_norm_forward(x, w, b, rm, rv, True, 0.1,
                                                                 1e-5, act, 1)
            full = torch.ops.bnlab.batch_norm_backward(g, x, w, b, mean, invstd, True, act, 1,
                                                       True)
            sums = torch.ops.bnlab.batch_norm_backward(g, x, w, b, mean, invstd, True, act, 1,
                                                       False)
            outs.append([y, mean, invstd, rm, rv, *full, *sums[1:]])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, c) for a, c in zip(*outs, strict=True))


def test_the_rule_picks_the_kernels_for_float_cpu_tensors_only():
    x = torch.randn(8, 3, 4, 4)
    assert backends.select(x) == "kernels"
    assert backends.select(x.contiguous(memory_format=torch.channels_last)) == "kernels"
    assert backends.select(x.double()) == "kernels"
    assert backends.select(x.transpose(2, 3)) == "kernels"  # copied to a dense layout first
    assert backends.select(x.half()) == "reference"
    assert backends.select(x.bfloat16()) == "reference"
    assert backends.select(x, guarded=True) == "reference"  # only the reference can refuse
    assert backends.select(x.to("meta")) == "aten"  # off the CPU (CUDA: see test_cuda.py)
    with backends.forced("aten"):
        assert backends.select(x) == "aten"
        assert backends.select(x, guarded=True) == "reference"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        backends.forced("fast").__enter__()


@pytest.mark.parametrize("case", ["transposed", "strided-params", "strided-buffers",
                                  "expanded", "pooled-channels_last"])
def test_layouts_the_kernels_copy_first(case):
    """The operator takes any strides: inputs it does not walk are made dense, buffers it
    does not write in place are updated through a copy; results as the reference's."""
    x = torch.randn(6, 3, 6, 4, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    pool = 1
    if case == "transposed":
        x = x.transpose(2, 3)
    elif case == "strided-params":
        w = torch.rand(6, dtype=torch.float64)[::2] + 0.5
        b = torch.randn(6, dtype=torch.float64)[1::2]
    elif case == "strided-buffers":
        rm = torch.zeros(3, 2, dtype=torch.float64)[:, 0]
        rv = torch.ones(6, dtype=torch.float64)[::2]
    elif case == "expanded":
        x = torch.randn(1, 3, 6, 4, dtype=torch.float64).expand(6, 3, 6, 4)
    else:
        x, pool = x.contiguous(memory_format=torch.channels_last), 2

    def run(backend):
        xs = x.clone().requires_grad_()  # (a leaf of the same strides)
        if case == "expanded":
            xs = x.detach().requires_grad_()
        m, v = rm.clone(), rv.clone()
        with backends.forced(backend):
            if pool == 2:
                from bnlab.norm.fused import batch_norm_sigmoid

                y = batch_norm_sigmoid(xs, m, v, w, b, True, 0.3, pool=2)
            else:
                y = BF.batch_norm(xs, m, v, w, b, True, 0.3)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape))
        return y.detach(), xs.grad, m, v

    for a, r in zip(run("kernels"), run("reference"), strict=True):
        assert _rel(a, r) <= 1e-12
    if case == "strided-buffers":  # updated in place through their own strides
        base = torch.zeros(3, 2, dtype=torch.float64)
        with backends.forced("kernels"):
            BF.batch_norm(x, base[:, 0], rv.clone(), w, b, True, 0.3)
        assert base[:, 0].abs().min() > 0 and base[:, 1].abs().max() == 0


def test_other_layouts_match_torch():
    """A transposed (non-dense-format) input is copied to a dense one, with the same result."""
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


def test_double_backward_through_the_kernels_forward():
    """create_graph=True: the kernels' forward, then the reference's differentiable backward."""
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
    from bnlab.norm import backends, kernels
    x = torch.randn(32, 6, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = BF.batch_norm(x, None, None, None, None, True)
        BF.batch_norm(x, None, None, None, None, True)
    assert (y - F.batch_norm(x, None, None, None, None, True)).abs().max() < 1e-5
    print(kernels.available(), len([w for w in caught if "unavailable" in str(w.message)]))
    print(kernels.status())
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
    out = _python("import bnlab.functional", BNLAB_FAST="yes")
    assert out.returncode != 0
    assert "BNLAB_FAST='yes' is not one of auto, 0, 1" in out.stderr


def test_cli_status_and_build(capsys):
    from bnlab.cli import main

    assert main(["kernels", "status"]) == 0
    assert "loaded from" in capsys.readouterr().out
    assert main(["kernels", "build"]) == 0  # already built: returns the library's path
    assert capsys.readouterr().out.strip().endswith(".so")


def _fake_compiler(tmp_path, real):
    """A 'compiler' that produces the real library by copying it (a build in milliseconds)."""
    cxx = tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ncp "{real}" "$2"\n')
    cxx.chmod(0o755)
    return cxx


PLANT_DAMAGED = """
    import shutil, sys
    from pathlib import Path
    from bnlab.norm.kernels.library import library_path
    path = library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sys.argv[1], path)
    shutil.copy(sys.argv[1] + ".sha256", str(path) + ".sha256")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)  # a disk that filled up mid-copy
    print(path)
"""


def test_damaged_library_is_never_loaded_and_is_rebuilt(tmp_path):
    """A truncated library would die in dlopen with SIGBUS: it fails verification instead, and
    the next build (here automatic, on first use) compiles it again."""
    real = kernels.library_path()
    env = {"BNLAB_KERNELS": str(tmp_path / "k"), "CXX": str(_fake_compiler(tmp_path, real))}
    planted = subprocess.run([sys.executable, "-c", textwrap.dedent(PLANT_DAMAGED), str(real)],
                             capture_output=True, text=True, env={**os.environ, **env})
    assert planted.returncode == 0, planted.stderr
    damaged = Path(planted.stdout.strip())
    assert kernels.verify(damaged) is not None  # (checked without loading it)
    out = _python(CHECK_AGAINST_TORCH, **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "True 0"  # rebuilt, loaded, no fallback warning
    assert "compiling the fast BatchNorm kernels" in out.stderr
    assert damaged.stat().st_size == real.stat().st_size and kernels.verify(damaged) is None


def test_damaged_library_refused_when_it_cannot_be_rebuilt(tmp_path):
    real = kernels.library_path()
    env = {"BNLAB_KERNELS": str(tmp_path / "k"), "CXX": str(tmp_path / "no-compiler")}
    planted = subprocess.run([sys.executable, "-c", textwrap.dedent(PLANT_DAMAGED), str(real)],
                             capture_output=True, text=True, env={**os.environ, **env})
    assert planted.returncode == 0, planted.stderr
    out = _python(CHECK_AGAINST_TORCH, **env)
    assert out.returncode == 0, out.stderr  # no signal: the reference served the call
    assert out.stdout.splitlines()[0] == "False 1"
    with pytest.raises(kernels.KernelBuildError, match=r"refusing to load .* damaged"):
        kernels.ops._import(Path(planted.stdout.strip()))


def test_kernels_build_command_rebuilds_what_does_not_verify(tmp_path):
    real = kernels.library_path()
    env = {"BNLAB_KERNELS": str(tmp_path / "k"), "CXX": str(_fake_compiler(tmp_path, real))}
    planted = subprocess.run([sys.executable, "-c", textwrap.dedent(PLANT_DAMAGED), str(real)],
                             capture_output=True, text=True, env={**os.environ, **env})
    damaged = Path(planted.stdout.strip())
    record = damaged.with_name(damaged.name + ".sha256")
    record.unlink()  # a library without its record is not trusted either
    out = subprocess.run([sys.executable, "-m", "bnlab", "kernels", "build"], text=True,
                         capture_output=True, env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "compiling" in out.stderr and out.stdout.strip() == str(damaged)
    assert kernels.verify(damaged) is None and record.exists()
