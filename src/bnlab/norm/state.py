"""Load a state dict into a whole model, all or nothing.

Each bnlab layer refuses a state dict of the wrong shape without copying anything, but
``nn.Module.load_state_dict`` walks the model layer by layer: when the tenth layer's entry is
wrong, the nine before it have already been overwritten, and torch reports the error only at
the end. A resumed training run that dies on such an error keeps a model that is half old
weights, half checkpoint. ``load_state_dict(model, state_dict)`` runs the same load inside
``all_or_nothing(model)``: on any error (a size mismatch, a missing or unexpected key under
``strict``, a value that is not a tensor, a tensor that cannot be written) every parameter and
buffer is put back, and the error says so. bnlab's trainer and ``Run.model()`` load
checkpoints with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bnlab.norm.checks import check_tool_args
from bnlab.norm.transaction import all_or_nothing

__all__ = ["load_state_dict"]


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True,
                    assign: bool = False) -> Any:
    """``model.load_state_dict(state_dict, strict=strict, assign=assign)``, all or nothing.

    Returns torch's ``(missing_keys, unexpected_keys)`` result. On an error nothing is
    changed; the exception is torch's, with a last line saying that nothing was loaded.
    """
    check_tool_args("load_state_dict", model, strict=strict, assign=assign)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_state_dict expects a mapping of names to tensors (what "
                        f"model.state_dict() returns), got {type(state_dict).__name__}")
    try:
        with all_or_nothing(model):
            return model.load_state_dict(state_dict, strict=strict, assign=assign)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nbnlab.norm.load_state_dict: nothing was loaded; every "
                           f"parameter and buffer of the {type(model).__name__} is as it was "
                           f"before the call") from e
