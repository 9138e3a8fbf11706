"""docs/studies.md, computed: every word that depends on a run comes from the study directories.

``write_studies_doc(directories, path, figures)`` writes one Markdown page: how the studies
decide (the statistics of ``bnlab.studies.stats``), a summary table built from each study's
``headline`` and ``literature`` (computed by its analysis), and per study its question, setup,
figure, tables, verdict, caveats and provenance (the commit and tree state its runs were
trained and analysed with, torch, machine, threads, wall time). Nothing in it is typed by hand:
``tests/test_docs_fresh.py`` rebuilds it from the committed study records and compares.

The study files are not trusted: read through ``bnlab.files`` (bounded, no link leaving the
study directory), every string from them enters the page through ``md`` (HTML escaped, as in
the report), and the page is written by ``bnlab.files.write_text`` (atomic, no link followed).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from bnlab.files import read_json, read_text, write_text
from bnlab.report.html import md, provenance_line

__all__ = ["write_studies_doc"]

INTRO = """\
# Studies: the learner's questions, measured

Each study is `bnlab study NAME` (Python: `bnlab.studies.base.run_study(get_study(NAME), out)`):
every arm is trained for every seed into its own run directory, then a table, a figure and a
verdict are computed from those directories alone. This page is generated from the study
directories in `docs/studies/` by `bnlab report docs/studies/* --out docs/report --docs
docs/studies.md`; each section says which commit trained and analysed it. The same results as
one HTML page with every run's configuration: [docs/report/report.html](report/report.html).

**How a verdict is decided** (`bnlab.studies.claims` and `bnlab.studies.stats`, the same
rule in every study):

* Each seed gives one value per arm (the final epoch's unless a study says otherwise); tables
  show the mean +- the *sample* standard deviation over seeds, rounded to the spread.
* Each study declares, before it runs, one **primary comparison per literature claim**: the
  metric, the direction the paper states and the smallest effect that matters (the margin).
  Holm's correction runs over those primary comparisons only; every other comparison is
  **exploratory** (its own Holm family, reported, never a verdict on the paper).
* A difference between two arms is tested with a *paired* t-test when the arms share seeds and
  batches (seed s of both saw the same batches in the same order), Welch's t-test otherwise,
  with an (unadjusted) 95% confidence interval. Beside it, an exact test that needs no
  normality: the sign-flip test (paired) or the permutation test (unpaired).
* The wording, from one rule, equivalence first (*clear* = Holm p < 0.05 and, below 8 seeds,
  the exact test's Holm p < 0.05 too): **does not reproduce** when an equivalence test (TOST
  against +-margin) is clear, "does not reproduce (a clear effect smaller than the margin)"
  when the difference is clear as well; otherwise **reproduces** = clear in the paper's
  direction; **contradicts** = clear, the other way; otherwise **not shown**, with the minimum
  detectable effect (80% power at Holm's first level) beside it, "not shown (the exact test
  does not agree)" when the t-test alone is clear. At 5 paired seeds the exact test cannot go
  below p = 0.0625, so nothing there is called either way. Holm's m is the number of declared
  claims: a claim that could not be judged (its comparison did not run, or its arms are a
  floor: at chance, below) is named with its reason wherever the claims are, and counts as
  p = 1. For a primary comparison "better" means the paper's direction. An arm with one seed
  is "not testable".
* An arm is *at chance* when most of its seeds failed (below). On accuracy an arm at chance
  is never the reference another arm is measured from, and two arms at chance are not
  compared: the difference would be the floor they sit on (`bnlab.studies.chance`; in
  `batch-size` and `train-with-running-averages`, where arms reach it).
* A metric without a good direction (a drift against its noise floor, a manipulation check)
  is worded "higher"/"lower", not "better"/"worse".
* A seed *diverged* when its final training loss is not finite, and *failed* when it diverged
  or its test accuracy stayed at chance (<= 0.15 on 10 classes). A metric with a diverged seed
  has no mean and enters no test.
* Test accuracy of every arm with BatchNorm is measured twice: with the running averages the
  layers trained with (what `model.eval()` uses) and with statistics re-estimated by PreciseBN
  over 10,000 training examples (the accuracy the weights deserve, free of the averages' lag).
  Verdicts on accuracy give both and say when they disagree.
"""


def _seeds(n: object) -> str:
    """'1 seed', '8 seeds' ('? seeds' when the record has no count)."""
    return "1 seed" if n == 1 else f"{md(str(n if n is not None else '?'))} seeds"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _claims(meta: dict[str, object]) -> str:
    """'key: wording; ...' from the record's primary judgements, then 'key: not judged
    (reason)' for each declared claim the record lists as not judged."""
    primary, missing = meta.get("primary"), meta.get("not_judged")
    parts = [f"{p['claim']['key']}: {p['wording']}" for p in
             (primary if isinstance(primary, list) else [])
             if isinstance(p, dict) and isinstance(p.get("claim"), dict)]
    parts += [f"{k}: not judged ({why})" for k, why in
              (missing.items() if isinstance(missing, dict) else [])]
    return "; ".join(parts)


def write_studies_doc(directories: list[str | Path], path: str | Path,
                      figures: str | Path) -> Path:
    """Write the page to `path`; `figures` is the directory holding ``NAME.png`` copies
    (``build_report``'s ``figures/``), linked relative to the page."""
    path = Path(path)
    studies = []
    for d in map(Path, directories):
        fix = f"rebuild it with `bnlab study NAME --analyze-only --out {d}`"
        meta = read_json(d / "study.json", fix, root=d)
        studies.append((meta, md(read_text(d / "table.md", fix, root=d).strip()),
                        md(read_text(d / "verdict", fix, root=d).strip())))
    rel = Path(os.path.relpath(Path(figures), path.parent))
    lines = [INTRO, "## What the studies say, in one place", "",
             "| study | seeds | finding | claims (primary comparisons) |", "|---|---|---|---|"]
    for meta, _, verdict in studies:
        quick = " (quick mode: not evidence)" if meta.get("quick") else ""
        name = md(meta.get("name"))
        lines.append(f"| [`{name}`](#{quote(str(meta.get('name')))}) | "
                     f"{md(meta.get('seeds', '?'))}{quick} "
                     f"| {_cell(md(meta.get('headline') or '') or verdict)} | "
                     f"{_cell(md(_claims(meta) or meta.get('literature') or 'not stated'))} |")
    lines.append("")
    for meta, table, verdict in studies:
        raw = str(meta.get("name"))
        name = md(raw)
        lines += [f'<a id="{html.escape(raw)}"></a>', "",
                  f"## `{name}`: {md(meta.get('question'))}", ""]
        if meta.get("setup"):
            lines += [f"**Setup.** {md(meta['setup'])}", ""]
        lines += [f"![{name}]({quote((rel / f'{raw}.png').as_posix())})", "", table, "",
                  f"**Verdict** ({_seeds(meta.get('seeds'))}). {verdict}", ""]
        if meta.get("literature"):
            lines += [f"**Against the literature.** {md(meta['literature'])}", ""]
        if meta.get("caveats"):
            lines += [f"**Caveats.** {md(meta['caveats'])}", ""]
        lines += [f"**Provenance.** {md(provenance_line(meta))}", ""]
    write_text(path, "\n".join(lines))
    return path
