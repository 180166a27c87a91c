"""Shared test fixtures: where ../shared lives, and skips with stated reasons when data or tools are absent."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# tests/mosquitto.py: the `mosquitto_broker` fixture (a real broker on a free port) for every test module
pytest_plugins = ["mosquitto"]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
MODELS = SHARED / "models"


def need_shared(*relative: str) -> Path:
    """Return DATA/relative (or SHARED/…); skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test data folder), which is absent on this machine")
    return path


def need_dlib():
    """Import dlib (dlib-bin, the reference implementation) or skip with the reason."""
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib-bin (the reference implementation; pip install -e .[dev])")
    import dlib

    return dlib


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need_shared("data")
