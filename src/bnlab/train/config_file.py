"""Training settings from a file: ``bnlab train --config FILE`` and its twin ``load_config``.

The file is JSON, or YAML when its name ends in ``.yaml``/``.yml``, and holds one mapping
whose keys are TrainConfig's fields, the same names as in a run's ``config.json`` (so any
run's config.json is itself a config file). On the command line, flags given explicitly win
over the file, and the file over the defaults.

A file is checked whole before anything runs: an unknown key (with the nearest known one
suggested), a value of the wrong type or out of range is a ``CorruptFileError`` naming the
file, the key and the fix; ``bnlab`` prints it as one line and exits with status 1.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from bnlab.errors import CorruptFileError, UnavailableError
from bnlab.files import read_json, read_text
from bnlab.train.config import TrainConfig

__all__ = ["YAML_SUFFIXES", "load_config", "read_config_file"]

YAML_SUFFIXES = (".yaml", ".yml")


def _parse_yaml(path: Path, fix: str) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise UnavailableError(f"{path}: reading YAML needs PyYAML ({e}); pip install pyyaml, "
                               f"or write the config as JSON") from e
    text = read_text(path, fix)
    try:
        return yaml.safe_load(text)  # plain data only: no tags that build Python objects
    except yaml.YAMLError as e:
        raise CorruptFileError(path, f"not valid YAML ({e})", fix) from e


def _coerce(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: take it as the number it means."""
    kind = {f.name: str(f.type) for f in fields(TrainConfig)}[name]
    if kind.startswith("float") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in `path`, keys and values checked (``CorruptFileError`` otherwise)."""
    path = Path(path)
    known = [f.name for f in fields(TrainConfig)]
    fix = f"write one mapping of {', '.join(known)} (a run's config.json is an example)"
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    data = _parse_yaml(path, fix) if is_yaml else read_json(path, fix)
    if data is None:
        data = {}  # an empty YAML file: every setting at its default
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"holds a {type(data).__name__}, not a mapping of "
                               f"settings", fix)
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise CorruptFileError(path, f"unknown key {key!r}",
                                   f"{hint}the keys are {', '.join(known)}")
    data = {k: _coerce(k, v) for k, v in data.items()}
    try:
        TrainConfig(**data)
    except (TypeError, ValueError) as e:
        raise CorruptFileError(path, str(e), "correct the value in the file, or give its "
                               "flag on the command line (flags win over the file)") from e
    directory = data.get("data_dir")
    if directory is not None and not os.path.isdir(directory):
        raise CorruptFileError(path, f"data_dir {directory!r} is not a directory",
                               "correct it, set it to null to find the data automatically, or "
                               "give --data-dir")
    return data


def load_config(path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """TrainConfig from the file at `path`, `overrides` winning (the Python twin of
    ``bnlab train --config FILE --flag ...``): ``load_config("runs/a/config.json", lr=0.1)``.
    """
    return TrainConfig(**{**read_config_file(path), **overrides})
