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


@pytest.fixture()
def lenet(assets):
    folder = assets / "models" / "lenet_mnist"
    return folder / "lenet.prototxt", folder / "lenet_iter_10000.caffemodel"


@pytest.fixture()
def mnist_data(tmp_path):
    """Two random 28x28 gray images and LeNet's preprocessing, as --data_list/--image_params arguments."""
    import json

    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (28, 28), dtype=np.uint8))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"size": [28, 28], "color_format": "gray", "scale": 0.00390625}))
    return ["--data_list", str(images), "--image_params", str(params)]
