"""The user's own network: an ``nn.Module``, a zero-argument factory, or ``"package.module:attr"``.

A run's config.json must say what was trained, and resuming must refuse another network, so a
user model is recorded as ``describe(...)``: its import path when it has one (``factory``), its
class and repr, and ``state``: every parameter and buffer name with its shape (``"lazy"`` for
a lazy layer's, which the first batch sets). Two runs *match*
when their descriptions agree on everything but the repr (which may change with cosmetic
edits): the same factory (or class) and the same state names and shapes, i.e. exactly what a
checkpoint needs to load.

A factory with a ``norm`` parameter receives the run's norm name (build layers with
``bnlab.norm.registry.create_norm(norm, num_features)``, which gives None for "none"): then
studies that vary the normalization can vary it in the user's network too.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.nn.parameter import is_lazy

from bnlab.errors import UserError
from bnlab.train.config import CUSTOM, LAZY
from bnlab.user_code import user_code

__all__ = ["CUSTOM", "IMPORT_PATH", "ModelInput", "build", "describe", "import_path",
           "is_import_path", "load_factory", "takes_norm"]

ModelInput = nn.Module | Callable[[], nn.Module] | str
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_HOW = "write it as package.module:factory, the module importable from the current directory " \
       "or PYTHONPATH"


def is_import_path(text: str) -> bool:
    return bool(IMPORT_PATH.match(text))


def load_factory(path: str, flag: str = "--model") -> Callable[..., Any]:
    """The object at ``package.module:attr``, importing from the current directory too."""
    if not is_import_path(path):
        raise UserError(f"{flag} {path!r} is not an import path; {_HOW}")
    module_name, attr = path.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the `bnlab` script omits it
        sys.path.append(os.getcwd())
    try:
        with user_code(f"importing {module_name!r} ({flag} {path})"):
            obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        where = (f"module {module_name!r} was not found" if missing and
                 module_name.startswith(missing) else f"importing {module_name!r} failed ({e})")
        raise UserError(f"{flag} {path}: {where}; {_HOW}") from e
    except SyntaxError as e:  # (the frame is the compiler's: the file and line are in `e`)
        raise UserError(f"{flag} {path}: {e.msg} at {e.filename}:{e.lineno}; fix the module "
                        f"and run again") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{flag} {path}: module {module_name!r} has no attribute "
                            f"{attr!r}; name a function or class in it that builds "
                            f"{'the data' if flag == '--dataset' else 'an nn.Module'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{flag} {path}: {attr!r} is not callable (type {type(obj).__name__}); "
                        f"name a function that builds "
                        f"{'the data' if flag == '--dataset' else 'the network'}")
    return obj


def import_path(factory: Callable[..., Any]) -> str | None:
    """``module:qualname`` when importing it gives back this very object, else None."""
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{name}" if found is factory else None


def takes_norm(factory: Callable[..., Any]) -> bool:
    try:
        return "norm" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def build(factory: Callable[..., Any], name: str, norm: str | None) -> nn.Module:
    """Call the factory (with ``norm=`` when given) and check that it built an nn.Module."""
    kw = {} if norm is None else {"norm": norm}
    try:
        inspect.signature(factory).bind(**kw)
    except TypeError as e:
        raise UserError(f"model {name}: cannot be called as {name}"
                        f"({', '.join(f'{k}={v!r}' for k, v in kw.items())}) ({e}); give it "
                        f"defaults for every other argument") from e
    except ValueError:
        pass  # no signature to check: the call itself will say
    model = factory(**kw)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name}: returned an object of type {type(model).__name__}, not a "
                        f"torch nn.Module; return the network itself")
    return model


def describe(model: nn.Module, factory: str | None, norm: bool) -> dict[str, Any]:
    """What config.json records about a user network (see the module docstring)."""
    cls = type(model)
    return {"factory": factory, "class": f"{cls.__module__}.{cls.__qualname__}",
            "takes_norm": norm, "repr": repr(model),
            "state": {k: LAZY if is_lazy(v) else list(v.shape)
                      for k, v in model.state_dict().items()}}
