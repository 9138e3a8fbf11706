"""All or nothing for any function that changes a model: snapshot it, restore it on failure.

bnlab promises that a failed call leaves every parameter and buffer byte-identical. For one
layer the checks run before anything is written; a tool that walks a whole model (precise_bn,
fold, convert, freeze, fuse, load_state_dict) can fail at its tenth layer after changing nine.
``all_or_nothing(model)`` makes such a call a transaction::

    with all_or_nothing(model):
        ...change model in place...      # any exception: the model is put back, then re-raised

What a snapshot holds, and why this way rather than working on a deep copy:

* every parameter and buffer *by value* (a clone), restored into the *same tensor objects*: an
  optimizer, a DDP wrapper or a user variable holding them stays valid after a failure;
* every module's class and attribute dictionary, with its ``_parameters``, ``_buffers`` and
  ``_modules`` tables copied: the module tree (children, their names and types),
  hyper-parameters, train/eval flags and attributes rebound by the tool come back; attribute
  objects mutated in place (a list the module owns) are not copied, as no bnlab tool mutates
  one;
* every tensor's ``requires_grad`` flag (freeze and unfreeze change them).

The price is one clone of the model's tensors for the duration of the call.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

__all__ = ["Snapshot", "all_or_nothing"]

_TABLES = ("_parameters", "_buffers", "_modules")


def _copy_tables(state: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of a module's __dict__ whose child/tensor tables are copies too."""
    out = dict(state)
    for key in _TABLES:
        if key in out:
            out[key] = OrderedDict(out[key]) if isinstance(out[key], OrderedDict) \
                else dict(out[key])
    if "_non_persistent_buffers_set" in out:
        out["_non_persistent_buffers_set"] = set(out["_non_persistent_buffers_set"])
    return out


class Snapshot:
    """The state of one or more module trees, restorable any number of times."""

    def __init__(self, *modules: nn.Module) -> None:
        self._modules: dict[int, tuple[nn.Module, type[nn.Module], dict[str, Any]]] = {}
        self._tensors: dict[int, tuple[Tensor, Tensor, bool]] = {}
        for root in modules:
            for m in root.modules():
                if id(m) in self._modules:
                    continue
                self._modules[id(m)] = (m, type(m), _copy_tables(m.__dict__))
                for t in (*m._parameters.values(), *m._buffers.values()):
                    if t is not None and id(t) not in self._tensors and not is_lazy(t):
                        # (a lazy layer's uninitialized tensor has no bytes to keep)
                        self._tensors[id(t)] = (t, t.detach().clone(), t.requires_grad)

    def restore(self) -> None:
        """Put every module's attributes and every tensor's bytes and flags back."""
        for m, cls, state in self._modules.values():
            if type(m) is not cls:  # torch.nn.utils.parametrize swaps a module's class
                m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update(_copy_tables(state))  # a copy: the snapshot stays restorable
        with torch.no_grad():
            for t, saved, requires_grad in self._tensors.values():
                _restore_tensor(t, saved)
                if t.requires_grad != requires_grad and t.is_leaf:
                    t.requires_grad_(requires_grad)


def _restore_tensor(t: Tensor, saved: Tensor) -> None:
    if t.is_meta:
        return  # no data to restore
    if t.shape != saved.shape or t.dtype != saved.dtype or t.device != saved.device:
        t.data = saved.clone()  # rebound by the tool (e.g. .to(dtype)): rebind it back
        return
    if _same_bytes(t, saved):
        return  # untouched: leave its version counter alone
    # An inference tensor (made under torch.inference_mode()) only accepts writes inside it.
    ctx = torch.inference_mode() if t.is_inference() else contextlib.nullcontext()
    with ctx:
        t.copy_(saved)


def _same_bytes(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality (NaN == NaN, 0.0 != -0.0), unlike torch.equal."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if ints is None:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


@contextlib.contextmanager
def all_or_nothing(*modules: nn.Module) -> Iterator[Snapshot]:
    """Run the block as a transaction on `modules`: any exception restores them, then re-raises.

    The snapshot is yielded, so a tool can also restore on purpose (precise_bn's passes over
    the data are a dry run: it restores, then writes only the new statistics).
    """
    snapshot = Snapshot(*modules)
    try:
        yield snapshot
    except BaseException:  # KeyboardInterrupt too: a Ctrl-C must not leave half a model
        snapshot.restore()
        raise
