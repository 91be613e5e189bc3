"""Shared test fixtures: the repo root on sys.path, and the real assets in ../shared (skipped when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT.parent / "shared" / "assets"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"real models and images not found at {ASSETS} (clone the project beside ../shared)")
    return ASSETS


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI installs its own handler on the int8tune logger; give every later test (caplog) the logger back."""
    from int8tune.log import logger

    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
