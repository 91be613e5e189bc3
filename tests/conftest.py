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
