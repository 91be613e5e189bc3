"""Differential check of the fp32 conversion against OpenCV's independent Caffe importer.

Both run the same preprocessed inputs; every blob the two can name is compared. Figures per blob:
    max_abs = max |ours - opencv|      over all images and elements
    rel     = max_abs / max |opencv|   (the difference relative to the blob's own range; 0 if both are 0)
A blob passes when rel <= tolerance. Users run this to prove the conversion before blaming quantization.

OpenCV 4.x only: 5.x removed `cv2.dnn.readNetFromCaffe`. OpenCV has no darknet2caffe `Upsample`, so a nearest
Upsample layer is registered with it here (as the shared assets' reference run did).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .caffe.net import CaffeNet
from .errors import ConfigError
from .log import logger
from .runtime import Engine


@dataclass
class BlobDiff:
    value: str  # value name (see caffe/net.py for the naming of in-place versions)
    blob: str  # the user-visible blob
    layer: str  # the layer that wrote it
    layer_type: str
    shape: tuple[int, ...]
    max_abs: float = 0.0
    ref_max_abs: float = 0.0
    note: str = ""  # why a blob was not compared, or how

    @property
    def rel(self) -> float:
        if self.ref_max_abs == 0.0:
            return 0.0 if self.max_abs == 0.0 else float("inf")
        return self.max_abs / self.ref_max_abs


@dataclass
class CheckReport:
    proto: str
    model: str
    images: list[str]
    tolerance: float
    diffs: list[BlobDiff] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds_ours: float = 0.0
    seconds_opencv: float = 0.0

    @property
    def compared(self) -> list[BlobDiff]:
        return [d for d in self.diffs if not d.note.startswith("not compared")]

    @property
    def failures(self) -> list[BlobDiff]:
        return [d for d in self.compared if not d.rel <= self.tolerance]

    @property
    def passed(self) -> bool:
        return not self.failures and bool(self.compared)

    def worst(self) -> BlobDiff | None:
        return max(self.compared, key=lambda d: d.rel, default=None)

    def to_json(self) -> dict:
        worst = self.worst()
        return {
            "proto": self.proto, "model": self.model, "images": self.images, "tolerance": self.tolerance,
            "passed": self.passed, "outputs": self.outputs,
            "worst": {"value": worst.value, "rel": worst.rel, "max_abs": worst.max_abs} if worst else None,
            "seconds": {"int8tune": self.seconds_ours, "opencv": self.seconds_opencv},
            "blobs": [{**asdict(d), "rel": d.rel, "passed": d.rel <= self.tolerance} for d in self.diffs],
        }


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - cv2 is a pinned dependency
        raise ConfigError("the check needs opencv-python-headless 4.x (pip install -e .)") from e
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise ConfigError(f"OpenCV {cv2.__version__} has no Caffe importer (5.x removed it); install "
                          f"opencv-python-headless 4.x as pinned in pyproject.toml")
    return cv2


class _NearestUpsample:
    """darknet2caffe's Upsample for OpenCV's dnn (which lacks it): out[y, x] = in[y // s, x // s]."""

    def __init__(self, params, blobs):  # noqa: D401 - OpenCV's custom layer protocol
        self.scale = int(float(params.get("scale", 2)))

    def getMemoryShapes(self, inputs):  # noqa: N802 - name fixed by OpenCV
        n, c, h, w = inputs[0]
        return [[n, c, h * self.scale, w * self.scale]]

    def forward(self, inputs):
        x = inputs[0]
        return [np.repeat(np.repeat(x, self.scale, axis=2), self.scale, axis=3)]


_REGISTERED = False


def opencv_net(proto: str | Path, model: str | Path):
    global _REGISTERED
    cv2 = _cv2()
    if not _REGISTERED:
        cv2.dnn_registerLayer("Upsample", _NearestUpsample)
        _REGISTERED = True
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    net.enableFusion(False)  # keep every layer's own output, as Caffe does
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def _comparable(net: CaffeNet, cv_layers: set[str]) -> tuple[list[BlobDiff], dict[str, str]]:
    """One BlobDiff per value a layer writes; the OpenCV layer name to fetch it by (its first top only)."""
    diffs, fetch = [], {}
    for layer in net.layers:
        for i, value in enumerate(layer.tops):
            d = BlobDiff(value, net.blob_of[value], layer.name, layer.type, ())
            if i > 0:
                d.note = "not compared: OpenCV returns only a layer's first top by name"
            elif layer.name in cv_layers:
                fetch[value] = layer.name
            else:
                d.note = f"not compared: OpenCV has no layer named {layer.name!r}"
            diffs.append(d)
    return diffs, fetch


def compare_with_opencv(engine: Engine, proto: str | Path, model: str | Path,
                        batches: Iterable[tuple[np.ndarray, Sequence[str]]], tolerance: float = 1e-4) -> CheckReport:
    """Run every batch through both implementations and compare all blobs OpenCV can return."""
    net = engine.net
    cv_net = opencv_net(proto, model)
    cv_layers = set(cv_net.getLayerNames())
    diffs, fetch = _comparable(net, cv_layers)
    by_value = {d.value: d for d in diffs}
    report = CheckReport(str(proto), str(model), [], tolerance, diffs, outputs=list(net.outputs))
    values = list(fetch)
    cv_names = [fetch[v] for v in values]
    for batch, names in batches:
        report.images.extend(str(n) for n in names)
        t0 = time.perf_counter()
        ours = engine.run(batch, values)
        t1 = time.perf_counter()
        if isinstance(batch, dict):
            for name, array in batch.items():
                cv_net.setInput(array, name)
        else:
            cv_net.setInput(batch)
        theirs = cv_net.forward(cv_names)
        t2 = time.perf_counter()
        report.seconds_ours += t1 - t0
        report.seconds_opencv += t2 - t1
        for value, ref in zip(values, theirs):
            diff = by_value[value]
            prepare = ROW_VIEWS.get(diff.layer_type)
            if prepare is not None:  # variable-length outputs: compare their meaningful rows
                _accumulate(diff, prepare(ours[value]), prepare(np.asarray(ref)), note="rows compared")
            else:
                _accumulate(diff, ours[value], np.asarray(ref))
    logger.info("compared %d blobs on %d images", len(report.compared), len(report.images))
    return report


def _detection_rows(blob: np.ndarray) -> np.ndarray:
    """Kept detections in a canonical order: by image, label, score rounded to 1e-5, then box corner, so that
    two implementations whose scores differ in the last bits (and so order near-ties differently) line up."""
    from .convert.layers.ssd import detection_rows

    rows = detection_rows(blob, 0.0)
    return rows[np.lexsort((rows[:, 4], rows[:, 3], -np.round(rows[:, 2], 5), rows[:, 1], rows[:, 0]))]


# Layer types whose output length varies: both sides are reduced to comparable rows first. DetectionOutput:
# Caffe writes the kept detections; OpenCV pads to keep_top_k rows of zeros and orders rows by score.
ROW_VIEWS = {"DetectionOutput": _detection_rows}


def _accumulate(diff: BlobDiff, ours: np.ndarray, ref: np.ndarray, note: str = "") -> None:
    diff.shape = tuple(ours.shape)
    if note and not diff.note:
        diff.note = note
    if ours.size != ref.size:
        diff.note = f"shape differs: ours {tuple(ours.shape)}, OpenCV {tuple(ref.shape)}"
        diff.max_abs = float("inf")
        diff.ref_max_abs = max(diff.ref_max_abs, float(np.abs(ref).max()) if ref.size else 0.0)
        return
    ref = ref.reshape(ours.shape)  # OpenCV may drop or add unit axes (e.g. 2-D InnerProduct outputs)
    diff.max_abs = max(diff.max_abs, float(np.abs(ours.astype(np.float64) - ref).max()) if ours.size else 0.0)
    diff.ref_max_abs = max(diff.ref_max_abs, float(np.abs(ref).max()) if ref.size else 0.0)
