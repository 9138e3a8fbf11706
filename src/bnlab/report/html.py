"""One self-contained page (and a Markdown twin) from study directories.

Reads only what the runs wrote: ``study.json``, ``table.md``, ``verdict``, ``figure.png`` and
each run's ``config.json``. A ``bnlab reproduce`` directory is a study directory too.
Figures are embedded as base64 PNG, so the HTML file can be mailed or opened offline; the
layout is one column that reflows on a phone.

Those files are not trusted: they are read through ``bnlab.files`` (a damaged one is a
``CorruptFileError`` naming it), names taken from them become paths only through
``bnlab.files.inside`` (nothing is read or written outside the directories given; a
``verdict`` or ``figure.png`` that links outside its study directory is refused), and every
string from them enters the page through ``h``, which escapes it, and the Markdown twin through
``md``, which escapes HTML the same way (Markdown renders raw HTML, ``<script>`` included).
The outputs are written by ``bnlab.files.write_files``: all of them or none, so a failed
report leaves no partial ``figures/``.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bnlab.errors import CorruptFileError
from bnlab.files import (
    LIMITS,
    check_no_links,
    inside,
    read_bytes,
    read_json,
    read_text,
    write_files,
)

__all__ = ["Section", "build_report", "h", "load_section", "md"]

PNG = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; display: block; overflow-x: auto; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; }
nav a { margin-right: 1rem; }
.verdict { background: #eef6ee; border-left: 4px solid #4a4; padding: 0.5rem 1rem; }
pre { background: #f7f7f7; overflow-x: auto; padding: 0.5rem; font-size: 0.8rem; }
.provenance { color: #555; font-size: 0.85rem; }
"""


class Markup(str):
    """HTML that is safe as it is: a literal of this module, or the output of `h`."""


def h(template: str, *values: Any) -> Markup:
    """`template` (HTML written here) with its ``{}`` fields filled by `values`, each escaped
    (quotes too, so they are safe in attributes) unless already Markup. Every string that
    comes from a file enters the page through here."""
    return Markup(template.format(*(v if isinstance(v, Markup) else
                                    html.escape(str(v), quote=True) for v in values)))


@dataclass
class Section:
    name: str
    title: str
    verdict: str
    table_md: str
    figure: bytes | None  # PNG bytes, or None when missing or not a PNG
    configs: dict[str, dict]  # run path -> config
    source: Path  # the file the section was read from
    provenance: str = ""  # code versions, torch, machine, threads, wall time (one line)


def _md_table_to_html(md: str) -> Markup:
    lines = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return h("<pre>{}</pre>", md)
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head = Markup("".join(h("<th>{}</th>", c) for c in cells[0]))
    body = Markup("".join(h("<tr>{}</tr>", Markup("".join(h("<td>{}</td>", c) for c in row)))
                          for row in cells[2:]))
    return h("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def md(text: Any) -> str:
    """`text` for a Markdown page: HTML escaped (``&``, ``<``, ``>``), as ``h`` does for HTML."""
    return html.escape(str(text), quote=False)


def _png(path: Path, root: Path, fix: str) -> bytes | None:
    """The bytes of a PNG file, or None (absent or not a PNG); one that is not a regular file,
    too large, or a link leaving `root` is a CorruptFileError."""
    if not os.path.lexists(path):
        return None
    data = read_bytes(path, fix, limit=LIMITS["figure"], root=root)
    return data if data.startswith(PNG) else None


def _study_fields(meta: dict[str, Any], source: Path, fix: str) -> tuple[str, str, list[str]]:
    """study.json's name, question and run paths, checked."""
    name, question, arms = meta.get("name"), meta.get("question"), meta.get("arms")
    if not isinstance(name, str) or not isinstance(question, str):
        raise CorruptFileError(source, "no 'name' and 'question' strings", fix)
    if not isinstance(arms, list) or not all(
            isinstance(a, dict) and isinstance(a.get("runs"), list) for a in arms):
        raise CorruptFileError(source, "'arms' is not a list of arms with 'runs' lists", fix)
    runs = [run for arm in arms for run in arm["runs"]]
    if not all(isinstance(run, str) for run in runs):
        raise CorruptFileError(source, "a run path is not a string", fix)
    wall = meta.get("wall_time", {})
    if not isinstance(wall, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e12
            for v in wall.values()):  # a string, a 400-digit integer, inf, NaN
        shown = repr(wall) if len(repr(wall)) <= 60 else f"{repr(wall)[:40]}..."
        raise CorruptFileError(source, f"'wall_time' is {shown}, not a wall time in seconds",
                               fix)
    return name, question, runs


def load_section(directory: str | Path) -> Section:
    d = Path(directory)
    if not (d / "study.json").exists():
        raise FileNotFoundError(f"{d}: not a study directory (no study.json); pass directories "
                                f"written by bnlab study or bnlab reproduce")
    source = d / "study.json"
    fix = (f"rebuild the study's files with `bnlab study NAME --analyze-only --out {d}` "
           f"(or restore them)")
    meta = read_json(source, fix, root=d)
    name, question, runs = _study_fields(meta, source, fix)
    inside(d, name, source, flat=True)  # it names the figure's copy: checked here
    # A published record (docs/studies/NAME) has no run directories: the arm's config stands in.
    arm_of = {run: arm.get("config", {}) for arm in meta["arms"] for run in arm["runs"]}
    configs = {}
    for run in runs:
        cfg = inside(d, run, source) / "config.json"
        configs[run] = read_json(cfg, fix, root=d) if cfg.exists() else arm_of.get(run, {})
    return Section(name, question, read_text(d / "verdict", fix, root=d).strip(),
                   read_text(d / "table.md", fix, root=d), _png(d / "figure.png", d, fix),
                   configs, source, provenance_line(meta))


def _commit(code: Any) -> str:
    if not isinstance(code, dict):
        return "unrecorded"
    if "commit" not in code:
        return f"package {code.get('package', '?')}"
    return str(code["commit"])[:10] + ("" if code.get("clean") else " (uncommitted changes)")


def provenance_line(meta: dict[str, Any]) -> str:
    """Where a study's numbers come from, in one line (empty for a record without one)."""
    prov = meta.get("provenance")
    if not isinstance(prov, dict):
        return ""
    analysis: dict[str, Any] = prov["analysis"] if isinstance(prov.get("analysis"), dict) \
        else {}
    runs = [r for r in prov.get("runs") or [] if isinstance(r, dict)]
    machine: dict[str, Any] = analysis["machine"] if isinstance(analysis.get("machine"),
                                                                dict) else {}
    wall: dict[str, Any] = meta["wall_time"] if isinstance(meta.get("wall_time"), dict) else {}
    seconds = wall.get("training") or 0.0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 <= seconds < 1e12):  # a string, a 400-digit integer, inf: not a wall time
        seconds = 0.0
    trained = "; ".join(f"{_commit(r.get('code'))} ({r.get('runs', '?')} runs, torch "
                        f"{r.get('torch', '?')})" for r in runs) or "unrecorded"
    return (f"Trained at {trained}{_on_ray(meta)}; analysed at "
            f"{_commit(analysis.get('code'))}; "
            f"{machine.get('cpus', '?')}-CPU {machine.get('arch', '?')} machine, "
            f"{analysis.get('threads', '?')} threads; {meta.get('seeds', '?')} "
            f"seed{'' if meta.get('seeds') == 1 else 's'}; "
            f"training wall time "
            f"{f'{seconds / 60:.1f} min' if seconds >= 60 else f'{seconds:.0f} s'}.")


def _on_ray(meta: dict[str, Any]) -> str:
    """", on Ray (...)" when study.json says its runs trained as Ray tasks
    (``bnlab.studies.sweep``), else nothing."""
    ex = meta.get("executor")
    if not isinstance(ex, dict) or ex.get("executor") != "ray":
        return ""
    cluster = ex.get("cluster")
    where = "this machine" if cluster == "local" else f"the cluster at {cluster}"
    return (f", on Ray ({ex.get('workers', '?')} workers of {ex.get('threads', '?')} "
            f"thread(s), {where})")


def _img(png: bytes | None) -> Markup:
    if png is None:
        return Markup("<p><em>figure missing</em></p>")
    return h('<img alt="figure" src="data:image/png;base64,{}">', base64.b64encode(png).decode())


def build_report(directories: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (figures embedded) and ``report.md`` (figures copied into
    ``out/figures``) into `out`; return their paths."""
    out = Path(out)
    sections = [load_section(d) for d in directories]  # every file checked before writing
    outputs: dict[str, bytes] = {}
    nav = Markup("".join(h('<a href="#{}">{}</a>', s.name, s.name) for s in sections))
    parts = [h("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
               "<meta name='viewport' content='width=device-width, initial-scale=1'>"
               "<title>bnlab report</title><style>{}</style></head><body>"
               "<h1>bnlab report</h1><nav>{}</nav>", Markup(CSS), nav)]
    text = ["# bnlab report", ""]
    for s in sections:
        tables = Markup("".join(_md_table_to_html(block) for block in
                                s.table_md.strip().split("\n\n") if block.strip()))
        parts.append(h("<section id='{}'><h2>{}: {}</h2><p class='verdict'>{}</p>{}{}"
                       "<p class='provenance'>{}</p>"
                       "<details><summary>configuration of every run ({})</summary>"
                       "<pre>{}</pre></details></section>",
                       s.name, s.name, s.title, s.verdict, _img(s.figure), tables,
                       s.provenance, len(s.configs), json.dumps(s.configs, indent=1)))
        figure_md = ""
        if s.figure is not None:  # a copy beside the Markdown file
            check_no_links(out / "figures" / f"{s.name}.png", out)  # a planted link: named
            inside(out, f"figures/{s.name}.png", s.source)
            outputs[f"figures/{s.name}.png"] = s.figure
            figure_md = f"![{md(s.name)}](figures/{quote(s.name)}.png)"
        text += [f"## {md(s.name)}: {md(s.title)}", "", f"**Verdict:** {md(s.verdict)}", "",
                 figure_md, "", md(s.table_md), ""]
        text += [f"**Provenance:** {md(s.provenance)}", ""] if s.provenance else []
    # Records, once the page has loaded, how many figures decoded and whether the page fits the
    # window's width (read back by the headless-browser test; harmless for a reader).
    parts.append(Markup(
        "<script>addEventListener('load', () => { const imgs = [...document.images];"
        " document.body.dataset.figures = imgs.length; document.body.dataset.loaded ="
        " imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        " document.body.dataset.fits = String(document.documentElement.scrollWidth"
        " <= innerWidth); });</script></body></html>"))
    outputs["report.html"] = "".join(parts).encode()
    outputs["report.md"] = "\n".join(text).encode()
    write_files(out, outputs)
    return out / "report.html", out / "report.md"
