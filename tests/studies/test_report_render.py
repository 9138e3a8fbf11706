"""The report page renders in headless Chromium with every figure loaded, at phone width too."""

import re
import shutil
import subprocess

import pytest

from bnlab.report.html import build_report
from bnlab.studies.base import run_study
from bnlab.studies.registry import get_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make test` "
                                             "installs it where apt exists)")
@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_report_renders_with_every_figure(tmp_path, width):
    studies = []
    for name in ("axes", "placement"):
        run_study(get_study(name), tmp_path / name, quick=True, log=lambda m: None)
        studies.append(tmp_path / name)
    page, _ = build_report(studies, tmp_path / "report")
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        f"--window-size={width},900", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, r.stdout[:500]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs.get("figures") == "2" and attrs.get("loaded") == "2", attrs
    assert attrs.get("fits") == "true", attrs
    shot = tmp_path / f"shot-{width}.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                    f"--window-size={width},900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
