"""Every public function that takes a model or a layer, on generated bad input: it raises a
clear error, and the model is byte-identical afterwards (state dict, module tree, flags).

One property, many cases (hostile_tool_cases.py, hostile_layer_cases.py): each case builds a
model with hypothesis (how many healthy layers come before the faulty one, which library they
are from, their width and warm-up) and calls one function on it in a way that must fail. The
faulty part comes after healthy layers, so a function that changes layers one by one has
changed some before it fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import hostile_layer_cases, hostile_tool_cases  # noqa: F401 (register)
from tests.reliability.hostile import CASES, image


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_failed_call_leaves_the_model_byte_identical(name, data):
    build, exc, match = CASES[name]
    model, call = build(data.draw)
    before = image(model)
    with pytest.raises(exc, match=match):
        call(model)
    assert image(model) == before


def test_every_case_is_documented_in_reliability_md():
    text = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    documented = re.findall(r"test_failed_call_leaves_the_model_byte_identical\[([^\]]+)\]",
                            text)
    assert sorted(documented) == sorted(CASES)
