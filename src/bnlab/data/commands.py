"""The Python twins of ``bnlab data info|check|fetch``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bnlab.data.dataset import load_split, locate
from bnlab.data.registry import SPLITS, get_spec
from bnlab.data.sources import candidate_dirs, fetch_to_cache, find_source, verify_checksum

__all__ = ["data_check", "data_fetch", "data_info"]


def data_info(name: str, data_dir: str | None = None) -> str:
    """Where the dataset would be read from, and every place that was considered."""
    spec = get_spec(name)
    lines = [f"{spec.title} ({name}): {len(spec.classes)} classes, "
             f"{spec.sizes['train']} train / {spec.sizes['test']} test examples"]
    if spec.layout == "synthetic":
        return "\n".join([*lines, "using: generated in memory, the same on every machine "
                           "(bnlab.data.synthetic); no files"])
    chosen = find_source(spec, data_dir)
    lines.append(f"using: {chosen.directory} ({chosen.kind})" if chosen else
                 f"using: nothing found locally (`bnlab data fetch --dataset {name}` "
                 f"downloads it)")
    lines.append("looked in, in order:")
    for kind, d in candidate_dirs(spec, data_dir):
        mark = "*" if chosen and d == chosen.directory else " "
        lines.append(f" {mark} {kind:<12} {d}{'' if d.is_dir() else '  (absent)'}")
    return "\n".join(lines)


def data_check(name: str, data_dir: str | None = None, log: Callable[[str], None] = print) -> (
        bool):
    """Validate every file of the copy in use: IDX structure, counts, checksums."""
    try:  # given --data-dir, a missing copy there is an error naming it (UserError)
        source = locate(name, data_dir, download=False, log=log)
    except FileNotFoundError:
        log(f"{name}: no local copy found; run `bnlab data fetch --dataset {name}`")
        return False
    spec = get_spec(name)
    ok = True
    if spec.layout == "synthetic":
        log(f"{name}: generated in memory; nothing on disk to check")
    for split in SPLITS:
        s = load_split(name, split, data_dir, download=False, log=log)
        log(f"{split}: {len(s)} examples, images {tuple(s.images.shape)} from "
            f"{source.directory}")
        if len(s) != spec.sizes[split]:
            log(f"  warning: expected {spec.sizes[split]} examples")
            ok = False
    for key, path in source.files.items():
        verdict = verify_checksum(spec, key, path)
        log(f"{path.name}: checksum {verdict}")
        ok = ok and verdict in ("ok", "unknown")
    return ok


def data_fetch(name: str, data_dir: str | None = None, force: bool = False,
               log: Callable[[str], None] = print) -> str:
    """Make sure a copy exists; download into the cache (or --data-dir) when none does."""
    spec = get_spec(name)
    if spec.layout == "synthetic":
        msg = f"{name}: generated in memory (bnlab.data.synthetic); nothing to download"
        log(msg)
        return msg
    source = None if force else find_source(spec, data_dir)
    if source is not None:
        msg = f"{name}: already available in {source.directory} ({source.kind})"
    else:
        target = Path(data_dir) if data_dir else None
        source = fetch_to_cache(spec, log=log, directory=target)
        msg = f"{name}: downloaded and verified into {source.directory}"
    log(msg)
    return msg
