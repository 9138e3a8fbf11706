"""What the normalization layers of a trained model learned: gamma, beta, running statistics.

Layer names come from the checkpoint, which may be hostile: printed to a terminal, an ANSI
escape sequence in a name could move the cursor, recolour or retitle it, or hide lines. Every
name goes through ``printable``, which shows control and other non-printing characters as
Python escapes (``\x1b``) instead of sending them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bnlab.errors import CorruptFileError
from bnlab.files import load_checkpoint

__all__ = ["bn_layers", "format_layers", "load_state", "printable"]

FIX = "pass a checkpoint.pt written by bnlab train (or its run directory)"


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict from a checkpoint file or a run directory (weights only)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (is the run started?)")
    state = load_checkpoint(path, FIX)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptFileError(path, "neither a state dict of tensors nor a checkpoint holding "
                               "one under 'model'", FIX)
    return state


def bn_layers(state: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One entry per layer that has running statistics, in model order."""
    layers = []
    for key in state:
        if not key.endswith("running_mean"):
            continue
        prefix = key[: -len("running_mean")]
        entry: dict[str, Any] = {"layer": prefix.rstrip(".") or "(root)"}
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = state.get(prefix + name)
            entry[name] = None if t is None else t.detach().flatten().real.double()
        nbt = state.get(prefix + "num_batches_tracked")
        entry["num_batches_tracked"] = _count(nbt)
        layers.append(entry)
    return layers


def _count(t: torch.Tensor | None) -> int | None:
    """A one-element counter's value (None when absent or not a finite single number)."""
    if t is None or t.numel() != 1:
        return None
    value = float(t.detach().real.flatten()[0])
    return int(value) if math.isfinite(value) else None


def _summary(t: torch.Tensor | None, show: int) -> str:
    if t is None:
        return "-"
    if t.numel() == 0:
        return "[] (empty)"
    head = ", ".join(f"{v:.3f}" for v in t[:show].tolist())
    more = ", ..." if t.numel() > show else ""
    return f"[{head}{more}] mean {t.mean():.3f} min {t.min():.3f} max {t.max():.3f}"


def printable(text: str) -> str:
    """`text` with every non-printing character (controls, escapes, bidi marks) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_layers(layers: list[dict[str, Any]], show: int = 6) -> str:
    lines = []
    names = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
             "running_var": "running_var"}
    for e in layers:
        c = next((e[k].numel() for k in names if e[k] is not None), 0)
        lines.append(f"layer {printable(e['layer'])} ({c} channels, "
                     f"{e['num_batches_tracked']} batches tracked)")
        for k, label in names.items():
            lines.append(f"  {label:<13}{_summary(e[k], show)}")
    return "\n".join(lines)
