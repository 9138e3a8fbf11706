"""What a model's forward really computes, for the tools that rewrite it (fold, fuse).

A tool that replaces two layers by one is only right when the model's dataflow runs them one
after the other, and nothing else reads what is in between. The order of a container's
children proves nothing: a ``forward`` may index, slice or iterate an ``nn.Sequential``, call
a layer twice, or use an output twice. So the tools trace ``forward`` with ``torch.fx`` and
read the graph; a model fx cannot trace is left alone (fuse) or handled by a weaker, stated
rule (fold), never guessed at.

Things a graph does not show are checked on the modules: hooks (they would be lost, or see
another tensor), parametrizations and old-style ``weight_norm`` (the weight is computed at each
call), a module registered under two names (replacing one slot would split it).
"""

from __future__ import annotations

from collections import Counter

import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from bnlab.norm.base import is_batch_norm

__all__ = ["CONV_LINEAR", "LeafTracer", "calls", "hooked", "module_uses", "only_input", "trace",
           "why_touched"]

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class LeafTracer(fx.Tracer):
    """Keeps normalization, conv and linear layers whole (bnlab's check their input in Python,
    which a symbolic trace cannot run); torch.nn layers are leaves as in fx's default."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (is_batch_norm(m) or isinstance(m, CONV_LINEAR)
                or type(m).__module__.startswith("bnlab.norm")
                or super().is_leaf_module(m, module_qualified_name))

    def path_of_module(self, mod: nn.Module) -> str:
        """A slice of an installed nn.Sequential (``self.seq[1:]``) is a new container that is
        not installed; it is traced through (its layers are installed), so it needs no name."""
        try:
            return super().path_of_module(mod)
        except NameError:
            if type(mod) is nn.Sequential:
                return "<a slice of an nn.Sequential>"
            raise


def trace(model: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """The dataflow graph of `model`'s forward, or None and why it could not be traced.

    Tracing runs the model's own forward code: callers undo what it did (``all_or_nothing``).
    """
    try:
        return LeafTracer().trace(model), None
    except Exception as e:  # any failure of the user's forward under tracing
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"{type(e).__name__}: {first}"


def module_uses(model: nn.Module) -> Counter[int]:
    """How many places (parent, name) each module object is registered at, by id."""
    return Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))


def calls(graph: fx.Graph) -> Counter[str]:
    """How many times forward calls each module, by qualified name."""
    return Counter(str(n.target) for n in graph.nodes if n.op == "call_module")


def only_input(node: fx.Node, source: fx.Node) -> bool:
    """Whether `node` is called with `source` as its one argument (nothing else)."""
    return len(node.args) == 1 and not node.kwargs and node.args[0] is source


def hooked(m: nn.Module) -> bool:
    """Whether hooks observe or change the module's own call."""
    return any(getattr(m, name, None) for name in _HOOKS)


def why_touched(m: nn.Module, what: str) -> str | None:
    """Why `m` cannot be replaced by something computed from its parameters: hooks (including
    old-style ``weight_norm``/``spectral_norm``, which are pre-hooks) or parametrizations."""
    if parametrize.is_parametrized(m):
        names = ", ".join(sorted(m.parametrizations.keys()))  # type: ignore[union-attr, operator]
        return (f"the {what} is parametrized ({names}: weight_norm, spectral_norm or "
                f"torch.nn.utils.parametrize); its weight is computed at each call")
    if hooked(m):
        return f"the {what} has hooks (they would be lost or see another tensor)"
    return None
