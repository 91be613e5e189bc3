"""What the CLI commands share: the images of a data list, the trial log's fingerprint."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from ..config import DataConfig
from ..data import DataItem, iter_batches, read_data_list
from ..image_params import load_image_params
from ..log import logger
from ..outputs import sha256_file, sha256_lines
from ..pipeline.images import Images
from ..pipeline.workspace import Workspace

PrepareImage = Callable


def data_items(data: DataConfig) -> list[DataItem]:
    items = read_data_list(data.data_list, data.dataset_path, data.data_limit)
    if len(items) < 5:
        logger.warning("only %d image(s): thresholds and differences measured on so few images are noisy "
                       "(use at least 5)", len(items))
    return items


def prepared_batches(items: list[DataItem], data: DataConfig, prepare_image: PrepareImage,
                     input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """All images prepared once and kept in memory (tuning reuses them for every candidate)."""
    params = load_image_params(data.image_params)
    return [batch for batch, _ in iter_batches(items, prepare_image, params, input_shape, data.batch_size)]


def fingerprint(ws: Workspace, items: list[DataItem], settings: dict) -> dict:
    return {"proto": sha256_file(ws.proto), "model": sha256_file(ws.model),
            "images": sha256_lines(str(i.path) for i in items), "settings": json.dumps(settings, sort_keys=True)}


def images_of(data: DataConfig, prepare_image: PrepareImage, ws: Workspace,
              what: str = "") -> tuple[list[DataItem], Images]:
    """The data list's items and their Images (prepared on first use)."""
    items = data_items(data)
    return items, Images.from_files(items, data, prepare_image, ws.input_shape, what)
