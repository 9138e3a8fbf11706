"""The documents send readers only to files and tests that exist.

README, CONTRIBUTING, BENCHMARKS and the guides in docs/ name source files ("the derivation
lives in src/bnlab/norm/reference.py"), tests (``tests/norm/test_kernels.py::test_...``) and
other documents. Code moves and those names go stale silently (BENCHMARKS.md named
tests/norm/test_fast.py long after it had gone), so every repository path written in code
style or as a link target must exist, and every ``file.py::name`` must define ``name``. (A
pointer to a file that exists but no longer holds what the sentence says is beyond this test.)
Paths are read from backtick spans and Markdown link targets only: prose such as "examples/s"
is not a path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "README.zh-CN.md", "CONTRIBUTING.md", "CHANGELOG.md", "BENCHMARKS.md",
             "docs/variants.md", "docs/differences.md", "docs/reliability.md"]
SPANS = re.compile(r"`([^`\n]+)`|\]\(([^)\s]+)\)")  # `code` or [text](target)
# A repository path: a top-level folder of this repository, or bnlab/... (short for src/bnlab/),
# optionally followed by ::name (a test or a function in that file).
PATH = re.compile(r"(?<![\w/.-])((?:src|tests|docs|benchmarks|examples|notebooks|tools)/[\w./-]*\w"
                  r"|bnlab/[\w/]+\.py)(?:::(\w+))?")


def pointers(document: str) -> list[tuple[str, str | None]]:
    """(path relative to the repository root, name or None) for each path the document names."""
    text = (ROOT / document).read_text(encoding="utf-8")
    found = []
    for span in SPANS.finditer(text):
        for m in PATH.finditer(span.group(1) or span.group(2)):
            path = m.group(1)
            found.append(("src/" + path if path.startswith("bnlab/") else path, m.group(2)))
    return found


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_named_path_exists(document):
    named = pointers(document)
    missing = [p for p, _ in named if not (ROOT / p).exists()]
    assert not missing, f"{document} names files that do not exist: {missing}"
    undefined = [f"{p}::{name}" for p, name in named if name is not None
                 and not re.search(rf"^\s*(?:async )?(?:def|class) {name}\b",
                                   (ROOT / p).read_text(encoding="utf-8"), re.M)]
    assert not undefined, f"{document} names what its file does not define: {undefined}"


def test_the_pointers_are_read():
    """The reader itself: it finds the paths these documents are known to name."""
    assert ("src/bnlab/norm/reference.py", None) in pointers("README.md")
    assert ("src/bnlab/norm/reference.py", None) in pointers("docs/variants.md")
    assert ("tests/norm/test_tools.py", "test_registry_builds_every_norm") in pointers(
        "CONTRIBUTING.md")
    assert all(not p.startswith("examples/s") for p, _ in pointers("README.md"))


STUDY_TABLE = {"README.md": "| study | question |", "README.zh-CN.md": "| 研究 | 问题 |"}


@pytest.mark.parametrize("document", sorted(STUDY_TABLE))
def test_the_study_table_lists_every_registered_study_in_order(document):
    """Each README's table of studies names exactly the studies ``bnlab study`` runs, in the
    registry's order: a new study cannot go unlisted."""
    from bnlab.studies.registry import STUDIES

    lines = (ROOT / document).read_text().splitlines()
    start = lines.index(STUDY_TABLE[document]) + 2  # past the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip().strip("`"))
    assert rows == list(STUDIES), f"{document}: the study table lists {rows}"
