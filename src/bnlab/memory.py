"""The process's memory policy: keep freed tensor memory for the next tensor, or give it back.

On Linux with glibc, ``malloc`` serves a large request (from 128 KiB; the threshold adapts up to
32 MiB) with a fresh ``mmap`` and ``free`` unmaps it. A training step frees and allocates the
same activation-sized tensors every step, so under that default each output of each layer is
fresh pages, and the first write to each 4 KiB page is a page fault in which the kernel zeroes
it: a (64, 64, 56, 56) float32 tensor is 12,544 faults, and copying it into a fresh tensor takes
3-5x as long as copying it into a reused one (``benchmarks/bench_bn.py`` measures both). Two
``mallopt`` settings make freed memory stay in the process for the next allocation:

* ``M_MMAP_MAX = 0``: never serve a request with its own mapping; everything from the heap;
* ``M_TRIM_THRESHOLD = 1 GiB``: do not return the heap's free top to the system until a whole
  GiB of it is free.

The cost is memory: the process keeps its peak for its lifetime (the resident size stays at
its high-water mark instead of falling between steps), and the heap first grows past the peak
while small allocations split freed chunks, until every size has a place to be reused (in
``tests/test_memory.py``'s loop, about ten 64 MiB tensors' worth). That suits a training process
and not necessarily a program that embeds bnlab. So the policy is the application's to choose:

* the ``bnlab`` command (and so the trainer and the studies it runs) applies ``reuse`` at start;
  ``BNLAB_MEMORY=system`` leaves the C library as it is;
* the library never changes it by itself: a program calls ``set_policy("reuse")`` to opt in.

``reuse`` cannot be fully undone: glibc turns its adaptive mmap threshold off for good once
either setting is changed. ``set_policy("system")`` after ``reuse`` puts glibc's starting
values back (mmap from 128 KiB, trim above 128 KiB), with that threshold fixed; the policy then
reads ``"system-fixed"``. Before any ``reuse``, ``set_policy("system")`` changes nothing.

Elsewhere than glibc (``mallopt`` absent, or refusing) the policy stays the system's, with a
warning where a ``mallopt`` refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings

from bnlab.errors import UserError

__all__ = ["POLICIES", "current", "policy_from_env", "set_policy"]

POLICIES = ("reuse", "system")

# mallopt parameters (glibc's malloc.h) and glibc's defaults for them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_SETTINGS = {
    "reuse": {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30},
    "system": {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024},
}
_state = {"policy": "system"}


def _mallopt():
    """glibc's mallopt, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def set_policy(policy: str) -> str:
    """Apply ``"reuse"`` (keep freed memory for reuse) or ``"system"`` (the C library's own
    behaviour) to this process; returns the policy in force afterwards: ``"reuse"``,
    ``"system"`` (never changed: also where the C library has no ``mallopt``), or
    ``"system-fixed"`` (glibc's starting values restored after ``reuse``, its adaptive mmap
    threshold off; see the module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"memory policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "system" and _state["policy"] == "system":
        return "system"  # untouched: calling mallopt at all would fix glibc's thresholds
    mallopt = _mallopt()
    if mallopt is None:
        return _state["policy"]
    refused = [param for param, value in _SETTINGS[policy].items() if mallopt(param, value) != 1]
    if refused and len(refused) == len(_SETTINGS[policy]):
        warnings.warn(f"mallopt refused every setting of the {policy!r} memory policy; the "
                      f"policy stays {_state['policy']!r}", RuntimeWarning, stacklevel=2)
        return _state["policy"]
    if refused:  # (glibc accepts both; another C library may take one and not the other)
        warnings.warn(f"mallopt refused {refused} of the {policy!r} memory policy; the others "
                      f"are in force", RuntimeWarning, stacklevel=2)
    _state["policy"] = "reuse" if policy == "reuse" else "system-fixed"
    return _state["policy"]


def current() -> str:
    """The policy in force as this module set it: ``"system"`` (never changed), ``"reuse"`` or
    ``"system-fixed"``."""
    return _state["policy"]


def policy_from_env() -> str:
    """The command line's policy: ``BNLAB_MEMORY`` (``reuse``, the default, or ``system``)."""
    value = os.environ.get("BNLAB_MEMORY", "reuse").strip().lower() or "reuse"
    if value not in POLICIES:
        raise UserError(f"BNLAB_MEMORY={value!r} is not one of {', '.join(POLICIES)} (reuse is "
                        f"the default); unset it or set one of those")
    return value
