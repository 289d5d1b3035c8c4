"""Shared test setup: offline hubs, fixture paths, tiny deterministic helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parent
PARITY_DIR = TESTS / "fixtures" / "tips_parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Official TIPS parity fixtures (copied from ../shared/fixtures/tips_parity)."""
    return PARITY_DIR


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep caches (weights, features) of every test inside a temp dir."""
    home = tmp_path_factory.getbasetemp() / "tips_eval_home"
    monkeypatch.setenv("TIPS_EVAL_HOME", str(home))
