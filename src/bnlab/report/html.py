"""One self-contained page (and a Markdown twin) from study and reproduce directories.

Reads only what the runs wrote: ``study.json``, ``table.md``, ``verdict``, ``figure.png`` and
each run's ``config.json`` (or a reproduce directory's ``REPORT.md`` and ``curves.png``).
Figures are embedded as base64 PNG, so the HTML file can be mailed or opened offline; the
layout is one column that reflows on a phone.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Section", "build_report", "load_section"]

CSS = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; display: block; overflow-x: auto; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; }
nav a { margin-right: 1rem; }
.verdict { background: #eef6ee; border-left: 4px solid #4a4; padding: 0.5rem 1rem; }
pre { background: #f7f7f7; overflow-x: auto; padding: 0.5rem; font-size: 0.8rem; }
"""


@dataclass
class Section:
    name: str
    title: str
    verdict: str
    table_md: str
    figure: Path | None
    configs: dict[str, dict]  # run path -> config


def _md_table_to_html(md: str) -> str:
    lines = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(md)}</pre>"
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def load_section(directory: str | Path) -> Section:
    d = Path(directory)
    if (d / "study.json").exists():
        meta = json.loads((d / "study.json").read_text())
        configs = {}
        for arm in meta["arms"]:
            for run in arm["runs"]:
                cfg = d / run / "config.json"
                configs[run] = json.loads(cfg.read_text()) if cfg.exists() else {}
        return Section(meta["name"], meta["question"], (d / "verdict").read_text().strip(),
                       (d / "table.md").read_text(), d / "figure.png", configs)
    if (d / "REPORT.md").exists():  # a `bnlab reproduce` directory
        configs = {p.parent.name: json.loads(p.read_text())
                   for p in sorted(d.glob("*/config.json"))}
        lines = (d / "REPORT.md").read_text().splitlines()
        table = "\n".join(ln for ln in lines if ln.startswith("|"))
        summary = "; ".join(ln.strip() for ln in lines if ": loss " in ln)  # textbook lines
        return Section("reproduce", "The textbook's LeNet comparison", summary, table,
                       d / "curves.png", configs)
    raise FileNotFoundError(f"{d}: neither a study directory (study.json) nor a reproduce "
                            f"directory (REPORT.md)")


def _img(path: Path | None) -> str:
    if path is None or not path.exists():
        return "<p><em>figure missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def build_report(directories: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (figures embedded) and ``report.md`` (figures copied into
    ``out/figures``) into `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [load_section(d) for d in directories]
    nav = "".join(f'<a href="#{s.name}">{html.escape(s.name)}</a>' for s in sections)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>bnlab report</title><style>{CSS}</style></head><body>"
             f"<h1>bnlab report</h1><nav>{nav}</nav>"]
    md = ["# bnlab report", ""]
    for s in sections:
        configs = html.escape(json.dumps(s.configs, indent=1))
        parts.append(f"<section id='{s.name}'><h2>{html.escape(s.name)}: "
                     f"{html.escape(s.title)}</h2><p class='verdict'>{html.escape(s.verdict)}"
                     f"</p>{_img(s.figure)}{_md_table_to_html(s.table_md)}"
                     f"<details><summary>configuration of every run ({len(s.configs)})"
                     f"</summary><pre>{configs}</pre></details></section>")
        figure_md = ""
        if s.figure is not None and s.figure.exists():  # a copy beside the Markdown file
            (out / "figures").mkdir(exist_ok=True)
            shutil.copyfile(s.figure, out / "figures" / f"{s.name}.png")
            figure_md = f"![{s.name}](figures/{s.name}.png)"
        md += [f"## {s.name}: {s.title}", "", f"**Verdict:** {s.verdict}", "", figure_md, "",
               s.table_md, ""]
    # Records, once the page has loaded, how many figures decoded and whether the page fits the
    # window's width (read back by the headless-browser test; harmless for a reader).
    parts.append("<script>addEventListener('load', () => { const imgs = [...document.images];"
                 " document.body.dataset.figures = imgs.length; document.body.dataset.loaded ="
                 " imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
                 " document.body.dataset.fits = String(document.documentElement.scrollWidth"
                 " <= innerWidth); });</script></body></html>")
    page, text = out / "report.html", out / "report.md"
    page.write_text("".join(parts))
    text.write_text("\n".join(md))
    return page, text
