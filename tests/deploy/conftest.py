"""The deploy tests' common setting: torch.onnx's own logging and warnings kept quiet (the
tests assert on what the exporters produce, not on what they say)."""

from __future__ import annotations

import logging
import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_exporters():
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
