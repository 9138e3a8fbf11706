"""The README's runnable sections: a code block after a ``<!-- SECTION: NAME`` marker, and a
block of shell commands split into argument lists (lines joined at a trailing backslash)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(section: str, marker: str) -> str:
    text = README.read_text()
    start = text.index(f"<!-- {section}: {marker}")
    match = re.search(r"```\w*\n(.*?)```", text[start:], re.S)
    assert match, f"no code block after the {section}: {marker!r} marker"
    return match.group(1)


def commands(section: str) -> list[list[str]]:
    return [shlex.split(c) for c in block(section, "commands").replace("\\\n", " ").splitlines()
            if c.strip()]
