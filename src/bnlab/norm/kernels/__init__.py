"""bnlab's compiled CPU BatchNorm kernels: a plug-in under the readable reference.

``csrc/batch_norm_cpu.cpp`` implements the math of ``bnlab.norm.reference`` as fused C++
kernels (cache-blocked per-channel statistics that read x once, one pass to normalize, a
backward of one reduction pass and one elementwise pass) and registers them as PyTorch
operators, ``torch.ops.bnlab.*``. ``library`` compiles and verifies the library once per machine
(``bnlab kernels build``, run by ``make setup``), ``ops`` loads it and registers the operators'
fake implementations and double backward. This package knows only the reference; which calls
it serves is decided in one place, ``bnlab.norm.backends``.
"""

from bnlab.norm.kernels.library import KernelBuildError, build, kernel_dir, library_path, verify
from bnlab.norm.kernels.ops import (
    IDENTITY,
    RELU,
    SIGMOID,
    available,
    batch_norm,
    error,
    loaded,
    mode,
    preload,
    register_double_backward,
    status,
)

__all__ = ["IDENTITY", "RELU", "SIGMOID", "KernelBuildError", "available", "batch_norm", "build",
           "error", "kernel_dir", "library_path", "loaded", "mode", "preload",
           "register_double_backward", "status", "verify"]
