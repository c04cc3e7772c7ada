"""Shared test fixtures. Tests run single-threaded: on a 2-core VM OpenMP parallel regions cost more than
they save for the tiny models used here."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
