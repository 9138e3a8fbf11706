"""A study: a question, the arms that answer it, and an analysis of their run directories.

``run_study(study, out)`` trains every arm for every seed into ``out/runs/<arm>-s<seed>`` (or
where the study's ``run_path`` puts it; finished runs are reused, interrupted ones resumed),
then writes, from those directories alone: ``table.md`` and ``table.csv`` (mean +- std over
seeds), ``figure.png``, ``verdict`` (one line the data support) and ``study.json`` (question,
arms, seeds, every config). With ``analyze_only=True`` nothing is trained: the report is
rebuilt from the saved runs.

With `model` and/or `dataset` (``bnlab.studies.subject``) the arms run on the user's network
and data; the arms that do not apply to that network are listed, with the reason, at the end
of the table and the verdict, and the study's analysis sees only the arms that ran.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnlab.errors import UserError
from bnlab.files import check_no_links, write_files
from bnlab.provenance import provenance
from bnlab.studies.claims import (
    NOT_RUN,
    Judgement,
    claims_headline,
    claims_literature,
    judge,
    lead,
    literature_text,
    primary_table,
    primary_text,
    run_marks,
)
from bnlab.studies.options import QUICK_SEEDS, STUDY_SEEDS
from bnlab.studies.recompute import declared_claims
from bnlab.studies.stats import (
    FAILED_ACCURACY,
    Comparison,
    Summary,
    compare,
    fmt,
    holm,
    p_text,
    summary,
)
from bnlab.studies.subject import Subject
from bnlab.studies.sweep import Job, Outcome, Sweep, run_jobs
from bnlab.train import Run, TrainConfig
from bnlab.train.config import CUSTOM
from bnlab.train.epoch import Probe
from bnlab.train.progress import Progress
from bnlab.train.rundir import RunDir

__all__ = ["Arm", "ArmResult", "Findings", "Study", "accuracy_comparisons", "accuracy_text",
           "compare_arms", "ran_on", "run_study", "summarize"]


@dataclass(frozen=True)
class Arm:
    """One configuration of a study, trained once per seed."""

    name: str
    label: str
    config: TrainConfig
    tags: dict[str, Any] = field(default_factory=dict)  # e.g. {"lr": 0.1, "norm": "bnlab"}
    probe: Callable[[], Probe] | None = None  # a fresh per-step measurement for each run
    needs: str | None = None  # why it runs only on bnlab's own network (None: on any network)


# What makes two arms' seed-s runs see the same batches in the same order.
BATCH_ORDER = ("seed", "dataset", "batch_size", "limit_train", "epochs", "drop_last")
PRECISE_EXAMPLES = 10_000  # PreciseBN re-estimation per evaluation (Wu & Johnson: ~10^4)


@dataclass
class ArmResult:
    arm: Arm
    runs: list[Run]

    def finals(self, key: str) -> list[float]:
        """Each seed's final value of `key` (NaN where the run did not record it)."""
        return [float(r.final.get(key, math.nan)) for r in self.runs]

    def summary(self, key: str) -> Summary:
        return summary(self.finals(key))

    def mean_std(self, key: str) -> tuple[float, float]:
        """Mean and sample std over seeds (NaN if any seed's value is not finite)."""
        s = self.summary(key)
        return s.mean, s.std

    def has(self, key: str) -> bool:
        return bool(self.runs) and all(key in r.final for r in self.runs)

    def fair_finals(self, key: str) -> list[float]:
        """Each seed's `key`; an arm without running statistics (no PreciseBN accuracy) counts
        its plain test accuracy in its place: it has no statistics to re-estimate."""
        return self.finals(key if self.has(key) else "test_acc")

    @property
    def diverged(self) -> int:
        """Seeds whose final train loss is not finite (``bnlab.studies.stats``)."""
        return sum(1 for v in self.finals("train_loss") if not math.isfinite(v))

    @property
    def failed(self) -> int:
        """Seeds that diverged or never beat chance (``bnlab.studies.stats``)."""
        return sum(1 for loss, acc in zip(self.finals("train_loss"), self.finals("test_acc"),
                                          strict=True)
                   if not math.isfinite(loss) or acc <= FAILED_ACCURACY)

    def paired_with(self, other: ArmResult) -> bool:
        """Whether seed s of both arms saw the same batches in the same order."""
        if len(self.runs) != len(other.runs):
            return False
        for a, b in zip(self.runs, other.runs, strict=True):
            ca, cb = a.config.to_dict(), b.config.to_dict()
            if any(ca.get(k) != cb.get(k) for k in BATCH_ORDER):
                return False
        return True


def _network(config: TrainConfig) -> str:
    """A run's network as its config names it: a registry name, an import path, or (a network
    object passed to ``train``) its class."""
    info = config.model_info or {}
    return str(info.get("class") or config.model) if config.model == CUSTOM else config.model


def ran_on(results: Sequence[ArmResult]) -> str:
    """What the runs trained, read from their own configs: "lenet-bn on fashion-mnist",
    "mymod:net on mymod:data" (figure titles and study.json say what ran, not the design)."""
    configs = [run.config for r in results for run in r.runs]
    models = dict.fromkeys(_network(c) for c in configs)
    data = dict.fromkeys(c.dataset for c in configs)
    return f"{', '.join(models) or 'nothing'} on {', '.join(data) or 'no data'}"


def compare_arms(a: ArmResult, b: ArmResult, key: str, label: str, *,
                 higher_is_better: bool = True) -> Comparison:
    """`b` against `a` on the final `key`, paired when they share seeds and batches. The
    study's analysis passes all its comparisons through ``stats.holm`` before wording them."""
    return compare(a.finals(key), b.finals(key), metric=key, label=label,
                   paired=a.paired_with(b), higher_is_better=higher_is_better)


def accuracy_comparisons(a: ArmResult, b: ArmResult, label: str) -> list[Comparison]:
    """Test accuracy with the running averages and, where either arm has it, with PreciseBN
    statistics (the accuracy the weights deserve; an arm without BN counts its plain
    accuracy, ``ArmResult.fair_finals``): the fair accuracy is both."""
    out = [compare_arms(a, b, "test_acc", label)]
    if a.has("test_acc_precise") or b.has("test_acc_precise"):
        # an arm without BN has no statistics to re-estimate: its plain accuracy stands in
        out.append(compare(a.fair_finals("test_acc_precise"), b.fair_finals("test_acc_precise"),
                           metric="test_acc_precise", label=label, paired=a.paired_with(b)))
    return out


def accuracy_text(running: Comparison, precise: Comparison | None = None) -> str:
    """Both accuracies' verdicts, and a warning when they disagree."""
    text = f"test accuracy {running.text()}"
    if precise is None:
        return text
    text += f"; with PreciseBN statistics {precise.text()}"
    if running.word != precise.word:
        text += (f" [the two evaluations disagree: running averages {running.word}, PreciseBN "
                 f"{precise.word}]")
    return text


@dataclass
class Findings:
    rows: list[dict[str, Any]]  # the table
    verdict: str
    plot: Callable[[Path], None]  # draws figure.png at the given path
    # Every other comparison the study makes: its own Holm family (``claims.exploratory``),
    # reported, never worded as a verdict on the paper.
    exploratory: list[Comparison] = field(default_factory=list)
    # One computed sentence for the summary table of docs/studies.md, and the computed
    # statement of whether the result agrees with the literature the study cites.
    headline: str = ""
    literature: str = ""
    # One judgement per literature claim the study declared (``claims.judge``: Holm over
    # these only, worded by the one rule).
    primary: list[Judgement] = field(default_factory=list)
    # Every declared claim not in `primary`, with the reason (claim key -> reason; the runner
    # adds any the analysis left out, ``claims.NOT_RUN``): study.json's ``not_judged``.
    not_judged: dict[str, str] = field(default_factory=dict)

    @property
    def comparisons(self) -> list[Comparison]:
        """Every comparison made: the primary ones (as judged), then the exploratory ones."""
        return [j.comparison for j in self.primary] + list(self.exploratory)


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    arms: Callable[[bool], list[Arm]]  # quick -> arms
    analyze: Callable[[list[ArmResult]], Findings]
    seeds: int = STUDY_SEEDS  # per arm (``bnlab.studies.options``: the one default)
    # Why none of its arms runs on a user's network (None: each arm says, ``Arm.needs``).
    needs: str | None = None
    # For docs/studies.md (``bnlab.report.studies_doc``): the design in prose (what is
    # trained, how long, what is measured), and what limits the result. Static text only:
    # every number from the runs goes into Findings.
    setup: str = ""
    caveats: str = ""
    # Where seed `seed` of arm `arm` (of `n_seeds`) lives, relative to the study's directory;
    # None: ``runs/<arm>-s<seed>`` (``default_run_path``).
    run_path: Callable[[str, int, int], str] | None = None


def default_run_path(arm: str, seed: int, n_seeds: int) -> str:
    """``runs/<arm>-s<seed>``: every study's layout unless it names its own."""
    return f"runs/{arm}-s{seed}"


def put_spread(row: dict[str, Any], key: str, values: Sequence[float]) -> None:
    """``row[key]`` and ``row[key + "_std"]``: the mean and sample std over seeds of `values`
    (``stats.Summary``: NaN if any value is not finite; the std also with one value), the
    pair ``markdown_table`` shows as one "mean +- std" column."""
    s = summary(values)
    row[key], row[f"{key}_std"] = s.mean, s.std


def summarize(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    """The default table: final test accuracy (with the running averages, and with PreciseBN
    statistics where the arm has BN layers) and train loss, mean +- sample std over seeds,
    with the failed and diverged seed counts."""
    rows = []
    for res in results:
        row: dict[str, Any] = {"arm": res.arm.label, **res.arm.tags, "seeds": len(res.runs)}
        keys = ["test_acc", "test_acc_precise", "train_loss"]
        for key in keys:
            if key != "test_acc_precise" or any(r.has(key) for r in results):
                put_spread(row, key, res.finals(key) if res.has(key) else [math.nan])
        row["failed"], row["diverged"] = res.failed, res.diverged
        rows.append(row)
    return rows


HEADERS = {"test_acc": "test acc", "test_acc_precise": "test acc (PreciseBN)",
           "train_loss": "train loss"}
# A comparison on PreciseBN accuracy counts an arm without BN layers by its plain accuracy
# (``accuracy_comparisons``: it has no statistics to re-estimate): its table says so.
COMPARED = {**HEADERS, "test_acc_precise": "test acc (PreciseBN; plain for an arm without BN)"}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as Markdown: a column ``k`` with a partner ``k_std`` becomes one "mean +- std"
    column, rounded to the spread (``stats.fmt``); other floats get 4 significant figures."""
    keys = [k for k in (list(rows[0]) if rows else []) if not (
        k.endswith("_std") and k[:-4] in rows[0])]
    paired = {k for k in keys if f"{k}_std" in rows[0]}

    def cell(r: dict[str, Any], k: str) -> str:
        if k in paired and isinstance(r[k], float):
            if math.isnan(r[k]) and r.get("diverged") and k == "train_loss":
                return f"diverged {r['diverged']}/{r.get('seeds', '?')}"  # stats' rule
            return "n/a" if math.isnan(r[k]) else fmt(r[k], r[f"{k}_std"])
        return _cell(r[k])

    heads = [HEADERS.get(k, k.replace("_", " ")) + (" (mean +- std)" if k in paired else "")
             for k in keys]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def comparisons_table(comparisons: Sequence[Comparison]) -> str:
    """Every test the verdict rests on: difference, 95% CI, test, p and Holm-adjusted p."""
    lines = ["| comparison | metric | difference (unadjusted 95% CI) | test | p | Holm p | "
             "verdict |",
             "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.label} | {COMPARED.get(c.metric, c.metric)} | {c.diff_text()} | "
                     f"{c.test.split(':')[0]} | {p_text(c.p)} | {p_text(c.p_holm)} | "
                     f"{c.word} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out: Path,
                comparisons: Sequence[Comparison] = (),
                primary: Sequence[Judgement] = ()) -> None:
    text = markdown_table(rows)
    if primary:
        text += "\n" + primary_table(primary)
    if comparisons:
        text += ("\nExploratory comparisons (their own Holm family; not verdicts on the "
                 "literature):\n\n" if primary else "\n") + comparisons_table(comparisons)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_files(out, {"table.md": text.encode(), "table.csv": table.getvalue().encode()})


def _skip(study: Study, arms: list[Arm], subject: Subject) -> dict[str, str]:
    """arm name -> why it does not apply to `subject`; a UserError when none applies."""
    skip = {a.name: why for a in arms
            if (why := subject.not_applicable(a.config, study.needs or a.needs))}
    if len(skip) == len(arms):
        raise UserError(f"study {study.name}: none of its arms applies to {subject.name} "
                        f"({next(iter(skip.values()))}); run it without --model, or pick a "
                        f"study that varies training settings (lr, batch-size)")
    return skip


def _not_run(rows: list[dict[str, Any]], arms: list[Arm], skip: dict[str, str],
             subject: Subject) -> tuple[list[dict[str, Any]], str]:
    """The table with the skipped arms as rows (status n/a), and the verdict's note on them."""
    keys = list(rows[0]) if rows else ["arm"]
    rows = [{**r, "status": "ran"} for r in rows]
    skipped = [a for a in arms if a.name in skip]
    rows += [{**dict.fromkeys(keys, ""), "arm": a.label, **a.tags,
              "status": f"n/a: {skip[a.name]}"} for a in skipped]
    reasons: dict[str, list[str]] = {}
    for a in skipped:
        reasons.setdefault(skip[a.name], []).append(a.label)
    note = " ".join(f"Not run on {subject.name}: {'; '.join(labels)} ({why})."
                    for why, labels in reasons.items())
    return rows, note


def run_study(study: Study, out: str | Path, *, quick: bool = False, seeds: int | None = None,
              analyze_only: bool = False, data_dir: str | None = None,
              threads: int | None = None, log: Callable[[str], None] = print,
              progress: bool = True, model: str | Callable[..., Any] | None = None,
              dataset: str | tuple[Any, Any] | None = None, first_seed: int = 0,
              sweep: Sweep | None = None) -> Findings:
    """Train (or, `analyze_only`, read) every arm for every seed, then write the report files.

    With `progress`, one bar over the runs ("run 7 of 24, 2 running, ETA 4:00"; see
    ``bnlab.train.progress`` for where bars are drawn) and a line per finished run. With
    `model` and `dataset` (a factory or import path, and data), the arms run on the user's
    network and data; the arms that cannot apply to it are named in the table and the verdict.
    The seeds are ``first_seed, first_seed + 1, ...``. `sweep` says where the runs train
    (``bnlab.studies.sweep``: in this process by default, or on Ray); `threads` is its
    threads per run. One study writes `out` at a time (the run directories' lock, on `out`).
    """
    out = Path(out)
    with RunDir(out).lock():
        return _run_study(study, out, quick, seeds, analyze_only, data_dir, log, progress,
                          Subject(model, dataset), first_seed,
                          replace(sweep or Sweep(), threads=threads))


def _run_study(study: Study, out: Path, quick: bool, seeds: int | None, analyze_only: bool,
               data_dir: str | None, log: Callable[[str], None], progress: bool,
               subject: Subject, first_seed: int, sweep: Sweep) -> Findings:
    started = time.perf_counter()
    if analyze_only:  # the saved study's subject, mode and seeds, unless given again
        subject, quick, seeds = _recorded(out, subject, quick, seeds)
    n_seeds = seeds or (QUICK_SEEDS if quick else study.seeds)
    threads = sweep.threads
    arms = study.arms(quick)
    skip = _skip(study, arms, subject)
    to_run = [a for a in arms if a.name not in skip]
    jobs = [Job(out / (study.run_path or default_run_path)(arm.name, seed, n_seeds),
                f"{arm.label}, seed {seed}",
                replace(arm_config(arm, subject), seed=seed, data_dir=data_dir, progress=False),
                arm.probe, subject.train_kw())
            for arm in to_run for seed in range(first_seed, first_seed + n_seeds)]
    for job in jobs:
        check_no_links(job.path, out)  # a run directory planted as a link is not trained into
    executor: dict[str, Any] = {}
    if analyze_only:
        for job in jobs:
            if not (job.path / "DONE").exists():
                raise FileNotFoundError(f"{job.path} is not a finished run: train the study "
                                        f"first (without --analyze-only)")
        runs = [Run(job.path) for job in jobs]
    else:
        runs, executor = _train_all(study.name, jobs, sweep, log, progress)
        executor["ran_on"] = {str(Path(k).relative_to(out)): v
                              for k, v in executor["ran_on"].items()}
    results = [ArmResult(arm, runs[i * n_seeds:(i + 1) * n_seeds])
               for i, arm in enumerate(to_run)]
    findings = study.analyze(results)
    judged = {j.claim.key for j in findings.primary}
    findings.not_judged = {k: findings.not_judged.get(k, NOT_RUN)
                           for k in declared_claims(study.analyze) if k not in judged}
    check_families(study.name, findings)
    if findings.primary or findings.not_judged:  # the claims lead every text (``recompute``)
        findings.verdict, findings.headline, findings.literature = lead_texts(findings)
    if skip:
        findings.rows, note = _not_run(findings.rows, arms, skip, subject)
        findings.verdict = f"{findings.verdict} {note}"
    ran = _ran(results, quick, n_seeds)
    # the verdict names what it rests on (``recompute`` checks these marks exactly)
    mark = run_marks(quick, n_seeds, None if subject.default else ran["on"])
    if mark:  # on every computed sentence that may be quoted alone
        findings.verdict, findings.headline = mark + findings.verdict, mark + findings.headline
        findings.literature = mark + findings.literature if findings.literature else ""
    write_table(findings.rows, out, findings.exploratory, findings.primary)
    findings.plot(out / "figure.png")
    runs = [run for r in results for run in r.runs]
    study_json = json.dumps(_finite({
        "name": study.name, "question": study.question, "quick": quick, "seeds": n_seeds,
        "subject": subject.record(), "not_run": skip, "ran": ran,
        "provenance": {"analysis": provenance(threads), "runs": _run_versions(runs)},
        **({"executor": executor} if executor else {}),
        "wall_time": {"training": sum(_wall(run) for run in runs),
                      "this_call": time.perf_counter() - started},
        "headline": findings.headline, "literature": findings.literature,
        "setup": _setup(study, ran, n_seeds), "caveats": study.caveats,
        "primary": [j.record() for j in findings.primary], "not_judged": findings.not_judged,
        "exploratory": [c.record() for c in findings.exploratory],
        "arms": [{"name": r.arm.name, "label": r.arm.label, "tags": r.arm.tags,
                  "runs": [str(run.path.relative_to(out)) for run in r.runs],
                  "config": arm_config(r.arm, subject).to_dict()} for r in results],
    }), indent=2, allow_nan=False) + "\n"
    write_files(out, {"verdict": (findings.verdict.strip() + "\n").encode(),
                      "study.json": study_json.encode()})
    for line in findings.verdict.strip().splitlines():  # the claims' line, then the study's
        log(f"[{study.name}] {line}")
    return findings


def _ran(results: Sequence[ArmResult], quick: bool, n_seeds: int) -> dict[str, Any]:
    """What this call trained (or read): network and data, arms and seeds, from the runs."""
    return {"on": ran_on(results), "arms": [r.arm.name for r in results], "seeds": n_seeds,
            "quick": quick}


def _setup(study: Study, ran: dict[str, Any], n_seeds: int) -> str:
    """The study's design; where this call ran less or something else, it says so first."""
    arms = len(study.arms(False))
    if not ran["quick"] and n_seeds == study.seeds and len(ran["arms"]) == arms \
            and not study.setup.startswith("["):
        return study.setup
    return (f"[This call ran {ran['on']}: {len(ran['arms'])} of the design's {arms} arms, "
            f"{n_seeds} seed{'s' if n_seeds != 1 else ''} each"
            f"{', quick mode' if ran['quick'] else ''}. The full design:] {study.setup}")


def _recorded(out: Path, subject: Subject, quick: bool,
              seeds: int | None) -> tuple[Subject, bool, int | None]:
    """--analyze-only: the subject (a name or import path), quick mode and seeds that the
    saved study.json records, where the call does not give them. (The recorded subject is
    never imported: whether its factory takes `norm` is read from the record too.)"""
    from bnlab.files import read_json

    path = out / "study.json"
    if not path.is_file():
        return subject, quick, seeds
    saved = read_json(path, "train the study again (without --analyze-only)")
    record: dict[str, Any] = saved["subject"] if isinstance(saved.get("subject"), dict) else {}
    if subject.default:
        subject = Subject.from_record(record)
    elif subject.dataset is None:  # a network given again: the recorded data with it
        subject = Subject(subject.model, Subject.from_record(record).dataset)
    ran: dict[str, Any] = saved["ran"] if isinstance(saved.get("ran"), dict) else {}
    count = ran.get("seeds", saved.get("seeds"))
    usable = isinstance(count, int) and not isinstance(count, bool) and count > 0
    return subject, quick or saved.get("quick") is True, seeds or (count if usable else None)


# "[lr] run 17 of 50, 2 running, ETA 06:12 |####  | 04:40" (tqdm's fields)
BAR = "{desc} run {n_fmt} of {total_fmt}{postfix}, ETA {remaining} |{bar}| {elapsed}"


def _train_all(name: str, jobs: list[Job], sweep: Sweep, log: Callable[[str], None],
               progress: bool) -> tuple[list[Run], dict[str, Any]]:
    """Every job trained or reused (``sweep.run_jobs``) under one bar, a line per finished run."""
    bar = Progress(len(jobs), f"[{name}]", progress, unit="run", bar_format=BAR)
    say = bar.write if bar.enabled and log is print else log  # lines above the bar
    done = 0

    def finished(job: Job, outcome: Outcome) -> None:
        nonlocal done
        done += 1
        bar.update(done)
        acc = outcome.run.final.get("test_acc")
        said = f"test acc {acc:.4f}, " if isinstance(acc, float) else ""
        say(f"[{name}] {job.label}: reused (finished earlier)" if outcome.where == "reused"
            else f"[{name}] {job.label}: {said}{outcome.seconds:.1f} s on {outcome.where}")

    try:
        return run_jobs(jobs, sweep, finished=finished,
                        running=lambda n: bar.status(f"{n} running"))
    finally:
        bar.close()


def lead_texts(findings: Findings) -> tuple[str, str, str]:
    """Verdict, headline and literature sentence, each led by its claims part generated from
    the judgements and the claims not judged: ``primary_text`` alone on the verdict's first
    line, ``claims_headline`` and ``claims_literature`` first in the others (a study's own
    literature sentence that already starts with the claims' wording is not repeated)."""
    p, skipped = findings.primary, findings.not_judged
    own = literature_text(p)
    rest = findings.literature.strip()
    rest = rest[len(own):].removeprefix(".").strip() if own and rest.startswith(own) else rest
    return (f"{primary_text(p, skipped)}\n{findings.verdict.strip()}".strip(),
            lead(claims_headline(p, skipped), findings.headline.strip()),
            lead(claims_literature(p, skipped), rest))


def check_families(name: str, findings: Findings) -> None:
    """The runner's check of the two families: the exploratory comparisons Holm-corrected as
    one family (a study that split them into two holm calls would get smaller p values), and
    the primary judgements exactly what ``claims.judge`` gives for their claims and values (so
    no judgement was built or reworded by hand, and they were judged together)."""
    if not same_family(findings.exploratory):
        raise AssertionError(f"study {name}: its exploratory comparisons were not "
                             f"Holm-corrected as one family (pass all of them through one "
                             f"claims.exploratory call)")
    again = judge([(j.claim, j.comparison.a.values, j.comparison.b.values, j.paired)
                   for j in findings.primary],
                  family=len(findings.primary) + len(findings.not_judged))
    if _finite([j.record() for j in again]) != _finite([j.record() for j in findings.primary]):
        raise AssertionError(f"study {name}: its primary judgements are not one claims.judge "
                             f"call over all its claims (judge every claim together, with family = "
                             f"the number of declared claims when some did not run)")


def same_family(comparisons: Sequence[Comparison]) -> bool:
    """Whether every testable comparison carries the Holm p of the whole family."""
    again = holm([replace(c, p_holm=math.nan) for c in comparisons])
    return all(not c.testable or (c.p_holm == c.p_holm and math.isclose(c.p_holm, r.p_holm))
               for c, r in zip(comparisons, again, strict=True))


def arm_config(arm: Arm, subject: Subject) -> TrainConfig:
    """The config an arm trains with: its own on `subject`, evaluated also with PreciseBN
    statistics each epoch (``Study``'s fair accuracy)."""
    return replace(subject.config(arm.config), precise_bn=PRECISE_EXAMPLES)


def _wall(run: Run) -> float:
    done = run.dir.read_done() or {}
    return float(done.get("wall_time", run.final.get("wall_time", 0.0)))


def _run_versions(runs: list[Run]) -> list[dict[str, Any]]:
    """The distinct code versions (and torch versions) the runs were trained with."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        prov = run.dir.read_config().get("provenance") or {"code": "unrecorded"}
        key = json.dumps([prov.get("code"), prov.get("torch")], sort_keys=True)
        seen.setdefault(key, {"code": prov.get("code"), "torch": prov.get("torch"),
                              "runs": 0})["runs"] += 1
    return list(seen.values())


def _finite(v: Any) -> Any:
    """`v` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
