"""Every write into the file system goes through ``bnlab.files`` (issue 26, class 1).

An AST scan of src/bnlab: any call that creates, writes, renames or removes a file or a
directory outside files.py fails this test, unless the allow-list below names the file, the
call and why it is safe. A new writer that bypasses the module (a ``Path.write_text``, an
``open(..., "w")``, a ``savefig(path)``, a ``shutil`` call) is caught here, before it can
write through a planted link.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bnlab"

# Methods that write, whatever they are called on (Path's, a figure's), except on the
# ``files`` module itself.
METHODS = {"write_text", "write_bytes", "savefig", "mkdir", "makedirs", "rename", "renames",
           "symlink_to", "hardlink_to", "link_to", "touch", "unlink", "rmdir", "chmod"}
# Functions of these modules that write (every function, for shutil and tempfile).
MODULES = {"os": {"replace", "rename", "renames", "remove", "unlink", "link", "symlink",
                  "mkdir", "makedirs", "rmdir", "removedirs", "truncate", "ftruncate",
                  "mkfifo", "chmod"},
           "torch": {"save"}, "shutil": None, "tempfile": None}
OPENERS = {"tarfile", "gzip", "bz2", "lzma", "io", "codecs", "zipfile"}  # open(path, mode)
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}

# (file under src/bnlab, call name) -> why it may bypass bnlab.files
ALLOWED = {
    ("norm/kernels/library.py", "*"): "bnlab.norm imports nothing else from bnlab "
    "(tests/test_layering.py); it writes only under mkstemp names, renames into place, and "
    "reads with O_NOFOLLOW | O_NONBLOCK (tests/norm/test_kernel_records.py)",
    ("train/rundir.py", "save"): "torch.save into the file object bnlab.files.atomic_write "
    "hands it (a mkstemp temporary)",
    ("train/rundir.py", "ftruncate"): "the lock's fd, from bnlab.files.open_in_place "
    "(O_NOFOLLOW, a regular file with one link)",
    ("train/rundir.py", "rmdir"): "removes the run directory it created, if still empty",
    ("train/rundir.py", "unlink"): "the lock file it holds, released without a bnlab call "
    "between the unlink and the close (a Ctrl-C cannot land between them)",
    ("data/download.py", "TemporaryFile"): "proves the directory writable: O_EXCL, unlinked",
    ("train/tensorboard_log.py", "SummaryWriter"): "writes inside the directory "
    "bnlab.files.make_dirs made (a link there is refused first)",
    ("report/figures.py", "savefig"): "into an in-memory buffer; bnlab.files writes it",
    ("studies/sweep_jobs.py", "TemporaryDirectory"): "a Ray worker's private directory for "
    "one run, outside every output; the run's files reach the output through the driver's "
    "bnlab.files writers",
}


def _mode_writes(call: ast.Call) -> bool:
    """Whether an ``open`` call's mode may write: the first argument of a method (Path.open),
    the second of a function (open, tarfile.open, gzip.open)."""
    owner = call.func.value.id if isinstance(call.func, ast.Attribute) and isinstance(
        call.func.value, ast.Name) else None
    at = 0 if isinstance(call.func, ast.Attribute) and owner not in OPENERS else 1
    mode = call.args[at] if len(call.args) > at else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return any(c in mode.value for c in "wax+")
    return True  # a computed mode: assume it writes


def _flags_write(call: ast.Call) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr in WRITE_FLAGS
               for arg in call.args[1:2] for n in ast.walk(arg))


def _call(node: ast.Call) -> tuple[str | None, str]:
    """(module or None, name) of the called function: ``os.replace`` -> ("os", "replace")."""
    func = node.func
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    return None, func.id if isinstance(func, ast.Name) else ""


def _writes(node: ast.Call) -> bool:
    owner, name = _call(node)
    if owner in MODULES:
        names = MODULES[owner]
        if owner == "os" and name == "open":
            return _flags_write(node)
        return names is None or name in names
    if name == "open":  # open(...), Path.open(...), tarfile.open(...): by their mode
        return _mode_writes(node)
    if isinstance(node.func, ast.Attribute) and owner != "files":
        return name in METHODS
    return name == "SummaryWriter"


def raw_writes(source: str) -> list[tuple[int, str]]:
    """(line, call) of every call in `source` that writes to the file system directly."""
    return [(node.lineno, _call(node)[1]) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and _writes(node)]


def test_the_scan_sees_every_kind_of_writer():
    """The scanner itself, on one line per writer it must catch (and reads it must not)."""
    caught = raw_writes("\n".join([
        "p.write_text('x')", "open(p, 'w')", "open(p, mode='ab')", "p.open('r+')",
        "os.open(p, os.O_WRONLY | os.O_CREAT)", "fig.savefig(p)", "torch.save(s, p)",
        "shutil.rmtree(p)", "os.replace(a, b)", "p.mkdir()", "tempfile.mkstemp()"]))
    assert [line for line, _ in caught] == list(range(1, 12))
    assert raw_writes("open(p)\np.open('rb')\nos.open(p, os.O_RDONLY)\ns.replace('a', 'b')"
                      "\np.read_text()\ntarfile.open(p, 'r:*')\nfiles.write_bytes(p, b)"
                      "\nrows.remove(x)") == []


def test_every_write_goes_through_bnlab_files():
    bypasses, used = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "files.py":
            continue
        for line, name in raw_writes(path.read_text()):
            allowed = {(rel, name), (rel, "*")} & ALLOWED.keys()
            used |= allowed
            if not allowed:
                bypasses.append(f"src/bnlab/{rel}:{line}: {name}")
    assert not bypasses, ("these calls write without bnlab.files (use its writers, or add "
                          "them to ALLOWED with the reason they are safe):\n"
                          + "\n".join(bypasses))
    assert used == ALLOWED.keys(), f"stale allow-list entries: {ALLOWED.keys() - used}"
