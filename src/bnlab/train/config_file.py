"""Training settings from a file: ``bnlab train --config FILE`` and its twin ``load_config``.

The file is JSON, or YAML when its name ends in ``.yaml``/``.yml``, and holds one mapping
whose keys are TrainConfig's settings (``bnlab.settings.file_keys``: the schema is generated
from the dataclass), the same names as in a run's ``config.json``. Any config.json bnlab
writes is a config file: the records it keeps beside the settings (``provenance``, and the
``model_info``/``data_info`` that describe a user's network and data) are skipped, never
taken as settings. On the command line, flags given explicitly win over the file, and the
file over the defaults.

A file is untrusted input, read with bounds: at most ``MAX_BYTES``; YAML through a loader
that refuses more than ``MAX_ALIASES`` aliases (a 0.5 KB "billion laughs" file would
otherwise expand to gigabytes) and nesting deeper than ``MAX_DEPTH`` (no RecursionError);
integers too long to convert (Python's 4,300-digit limit) are refused. A file is checked
whole before anything runs: an unknown key (with the nearest known one suggested), a value of
the wrong type or out of range is a ``CorruptFileError`` naming the file, the key and the
fix; ``bnlab`` prints it as one line and exits with status 1.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path
from typing import Any

from bnlab.errors import CorruptFileError, UnavailableError
from bnlab.settings import file_keys, settings
from bnlab.train.config import RECORDS, TrainConfig

__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "YAML_SUFFIXES", "load_config",
           "read_config_file"]

YAML_SUFFIXES = (".yaml", ".yml")
MAX_BYTES = 4 * 2**20  # a config.json with a user model's description is a few KB
MAX_ALIASES = 64  # a hand-written config may reuse a value; an alias bomb needs thousands
MAX_DEPTH = 32  # a config is a flat mapping; a run's records nest three levels


def _read_bounded(path: Path, fix: str) -> str:
    """The UTF-8 text of the regular file `path`, at most MAX_BYTES (never read whole first)."""
    if not path.exists():
        raise CorruptFileError(path, "missing", fix)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CorruptFileError(path, "not a regular file", fix)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise CorruptFileError(path, f"cannot be read ({e.strerror})", fix) from e
    if len(data) > MAX_BYTES:
        raise CorruptFileError(path, f"larger than {MAX_BYTES // 2**20} MiB, too large for a "
                               f"config file", fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not UTF-8 text (byte {e.start})", fix) from e


def _bounded_loader(yaml: Any) -> type:
    """PyYAML's SafeLoader (plain data, no tags that build objects) with an alias budget and a
    depth limit, both counted while composing, before anything is built."""

    class Loader(yaml.SafeLoader):
        aliases = 0
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise _Refused(f"more than {MAX_ALIASES} YAML aliases (*name)")
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


class _Refused(Exception):
    """A YAML file beyond the loader's bounds (the message says which)."""


def _parse_yaml(path: Path, fix: str) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise UnavailableError(f"{path}: reading YAML needs PyYAML ({e}); pip install pyyaml, "
                               f"or write the config as JSON") from e
    text = _read_bounded(path, fix)
    try:
        return yaml.load(text, Loader=_bounded_loader(yaml))  # a SafeLoader, bounded
    except _Refused as e:
        raise CorruptFileError(path, f"refused: {e}", fix) from None
    except yaml.YAMLError as e:
        raise CorruptFileError(path, f"not valid YAML ({str(e)[:300]})", fix) from None
    except ValueError as e:  # int() of a 4,300+ digit number; a bad date or base-60 value
        what = "an integer too long" if "digits" in str(e) else f"a value ({str(e)[:120]})"
        raise CorruptFileError(path, f"holds {what} to read", fix) from None
    except RecursionError:
        raise CorruptFileError(path, "nested too deeply", fix) from None


def _parse_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(_read_bounded(path, fix))
    except ValueError as e:
        what = "an integer too long to read" if "digits" in str(e) else str(e)[:300]
        raise CorruptFileError(path, f"not valid JSON ({what})", fix) from None
    except RecursionError:
        raise CorruptFileError(path, "JSON nested too deeply", fix) from None


def _coerce(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: take it as the number it means."""
    _, kinds, _ = settings(TrainConfig)[name]
    if float in kinds and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in `path`, keys and values checked (``CorruptFileError`` otherwise)."""
    path = Path(path)
    known = file_keys(TrainConfig)
    fix = f"write one mapping of {', '.join(known)} (a run's config.json is an example)"
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    data = _parse_yaml(path, fix) if is_yaml else _parse_json(path, fix)
    if data is None:
        data = {}  # an empty YAML file: every setting at its default
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"holds a {type(data).__name__}, not a mapping of "
                               f"settings", fix)
    data = {k: v for k, v in data.items() if k not in RECORDS}  # what a run recorded
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise CorruptFileError(path, f"unknown key {str(key)[:80]!r}",
                                   f"{hint}the keys are {', '.join(known)}")
    data = {k: _coerce(k, v) for k, v in data.items()}
    try:
        TrainConfig(**data)
    except (TypeError, ValueError) as e:
        raise CorruptFileError(path, str(e), "correct the value in the file, or give its "
                               "flag on the command line (flags win over the file)") from e
    directory = data.get("data_dir")
    if directory is not None and not os.path.isdir(directory):
        raise CorruptFileError(path, f"data_dir {directory[:200]!r} is not a directory",
                               "correct it, set it to null to find the data automatically, or "
                               "give --data-dir")
    return data


def load_config(path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """TrainConfig from the file at `path`, `overrides` winning (the Python twin of
    ``bnlab train --config FILE --flag ...``): ``load_config("runs/a/config.json", lr=0.1)``.
    """
    return TrainConfig(**{**read_config_file(path), **overrides})
