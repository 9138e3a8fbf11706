"""Shared test settings: deterministic seeds and a small thread count for a 2-core machine."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CUDA tests run where a GPU is present; elsewhere they are skipped with a stated reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine (run on a GPU host)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
