"""Every study runs in quick mode, writes its artefacts, and re-analyzes without retraining."""

import csv
import json

import pytest

from bnlab.report.html import build_report
from bnlab.studies.base import run_study
from bnlab.studies.registry import STUDIES, get_study


@pytest.fixture(scope="module")
def quick_studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    verdicts = {name: run_study(study, root / name, quick=True, threads=2,
                                log=lambda m: None).verdict for name, study in STUDIES.items()}
    return root, verdicts


@pytest.mark.parametrize("name", list(STUDIES))
def test_quick_study_writes_everything(quick_studies, name):
    root, verdicts = quick_studies
    out = root / name
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "study.json").read_text())
    arms = STUDIES[name].arms(True)
    assert [a["name"] for a in meta["arms"]] == [a.name for a in arms]
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) >= len(arms) and "test_acc" in rows[0]  # inference-stats: per method
    verdict = (out / "verdict").read_text().strip()
    assert verdict == verdicts[name]
    assert verdict.startswith("[quick mode: a small subset, not evidence]")
    for arm in meta["arms"]:
        for run in arm["runs"]:
            assert (out / run / "DONE").exists()


def test_analyze_only_rebuilds_without_training(quick_studies):
    root, verdicts = quick_studies
    out = root / "lr"
    metrics = sorted(out.glob("runs/*/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in metrics]
    (out / "figure.png").unlink()
    findings = run_study(get_study("lr"), out, quick=True, analyze_only=True,
                         log=lambda m: None)
    assert findings.verdict == verdicts["lr"] and (out / "figure.png").exists()
    assert [p.stat().st_mtime_ns for p in metrics] == stamps


def test_analyze_only_without_runs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="without --analyze-only"):
        run_study(get_study("axes"), tmp_path, quick=True, analyze_only=True)


def test_report_embeds_every_study(quick_studies, tmp_path):
    root, _ = quick_studies
    page, text = build_report([root / n for n in STUDIES], tmp_path)
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(STUDIES)
    for name in STUDIES:
        assert f"id='{name}'" in html and f'href="#{name}"' in html
    assert "configuration of every run" in html and 'name="viewport"' in html.replace("'", '"')
    assert all(f"## {n}:" in text.read_text() for n in STUDIES)
    for n in STUDIES:  # the Markdown twin points at figure copies beside it
        assert f"](figures/{n}.png)" in text.read_text()
        assert (tmp_path / "figures" / f"{n}.png").exists()


def test_unknown_study():
    with pytest.raises(ValueError, match="unknown study 'magic'"):
        get_study("magic")
