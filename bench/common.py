"""Shared pieces of the benchmark scripts: the shared assets, labelled splits, int8 evaluation helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluation_utils  # noqa: E402,F401  (registers the metrics)
from int8tune.data import DataItem, iter_batches, read_data_list  # noqa: E402
from int8tune.image_params import load_image_params  # noqa: E402
from test_utils import prepare_image  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
MODELS = {
    "squeezenet_v1.0": ("deploy.prototxt", "squeezenet_v1.0.caffemodel"),
    "lenet_mnist": ("lenet.prototxt", "lenet_iter_10000.caffemodel"),
    "yolov3_nano_voc": ("MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel"),
    "yoloface_500k_v2": ("yoloface-500k-v2.prototxt", "yoloface-500k-v2.caffemodel"),
    "res10_ssd_face": ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel"),
    "landmark106": ("landmark106.prototxt", "landmark106.caffemodel"),
}


# the darknet .cfg beside each YOLO model: the yolo metric's heads, anchors and classes
YOLO_CFG = {"yolov3_nano_voc": "MobileNetV2-YOLOv3-Nano-voc.cfg", "yoloface_500k_v2": "yoloface-500k-v2.cfg"}


def yolo_params(name: str) -> dict:
    """The yolo metric's parameters for a shared YOLO model."""
    return {"cfg": str(ASSETS / "models" / name / YOLO_CFG[name])}


def detection_split(offset: int = 0, count: int = 10) -> tuple[list[Path], list[Path]]:
    """The detection+natural photos sorted by name: every third from `offset` (at most `count`) to tune on, and
    the others held out."""
    paths = sorted([p for folder in ("detection", "natural") for p in (ASSETS / "images" / folder).iterdir()],
                   key=lambda p: p.name)
    tune = paths[offset::3][:count]
    return tune, [p for p in paths if p not in tune]


def workspace_of(name: str, equalize: bool = False):
    """(the loaded model, its image parameters) for a shared model (cross-layer equalized with `equalize`)."""
    from int8tune.pipeline.workspace import load_workspace

    proto, model = model_paths(name)
    return load_workspace(proto, model, equalize), params_for(name)


def require_assets() -> None:
    if not ASSETS.is_dir():
        print(f"skipped: the shared assets are not at {ASSETS}")
        sys.exit(0)


def model_paths(name: str) -> tuple[Path, Path]:
    proto, model = MODELS[name]
    return ASSETS / "models" / name / proto, ASSETS / "models" / name / model


def params_for(name: str):
    return load_image_params(REPO / "examples" / "image_params" / f"{name}.json")


def labelled(folder: str) -> list[DataItem]:
    """The labelled list of an image folder (labels.txt), in file order."""
    return read_data_list(ASSETS / "images" / folder / "labels.txt")


def split(items: list, first: int, second: int | None = None) -> tuple[list, list]:
    """The first `first` items and the next `second` (default: the rest). Deterministic: file order."""
    return items[:first], items[first:first + second if second else None]


def batches_of(items, params, input_shape, batch_size: int = 10) -> list[np.ndarray]:
    return [b for b, _ in iter_batches(items, prepare_image, params, input_shape, batch_size)]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean())
