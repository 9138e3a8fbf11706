"""Probes are training code with a traceable home (``bnlab.studies.probes``): every registered
study's probes resolve to probe modules, and the rules that keep freshness honest fail loudly."""

from __future__ import annotations

import sys
import types
from functools import partial
from pathlib import Path

import pytest

from bnlab.studies.base import Arm
from bnlab.studies.probes import probe_class, probe_files, probe_modules
from bnlab.studies.probes.landscape import LandscapeProbe
from bnlab.studies.probes.running_averages import NormWeightsProbe
from bnlab.studies.registry import STUDIES
from bnlab.train import TrainConfig


def test_each_study_depends_on_its_own_probe_modules_only():
    files = {name: probe_files(study.arms(False)) for name, study in STUDIES.items()}
    assert files["ics"] == ["src/bnlab/studies/probes/ics.py"]
    assert files["landscape"] == ["src/bnlab/studies/probes/landscape.py"]
    assert files["train-with-running-averages"] == [
        "src/bnlab/studies/probes/running_averages.py"]
    assert files["weight-decay-on-norm"] == ["src/bnlab/studies/probes/weight_decay.py"]
    assert files["why-higher-lr"] == ["src/bnlab/studies/probes/why.py"]
    for name, paths in files.items():
        assert all(Path(__file__).resolve().parents[2].joinpath(p).is_file() for p in paths)
        if name not in ("ics", "landscape", "train-with-running-averages",
                        "weight-decay-on-norm", "why-higher-lr"):
            assert paths == [], name


def test_a_partial_resolves_to_its_class():
    assert probe_class(partial(NormWeightsProbe, 10)) is NormWeightsProbe
    assert probe_class(LandscapeProbe) is LandscapeProbe


def test_a_lambda_or_a_probe_outside_the_package_is_refused():
    with pytest.raises(TypeError, match=r"functools\.partial"):
        probe_class(lambda: NormWeightsProbe(1))

    class Local:
        pass

    with pytest.raises(TypeError, match=r"move it to a module of bnlab\.studies\.probes"):
        probe_class(Local)


def test_a_probe_module_that_imports_analysis_code_is_refused(tmp_path, monkeypatch):
    name = "bnlab.studies.probes._fake_for_test"
    src = tmp_path / "fake.py"
    src.write_text("from bnlab.studies.stats import holm\n\nclass P:\n    pass\n")
    module = types.ModuleType(name)
    module.__file__ = str(src)

    class P:
        pass

    P.__module__ = name
    module.P = P  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)
    arm = Arm("x", "x", TrainConfig(), probe=partial(P))
    with pytest.raises(TypeError, match=r"imports bnlab\.studies\.stats"):
        probe_modules([arm])
