"""Differential check of the fp32 conversion against OpenCV's independent Caffe importer.

Both run the same preprocessed inputs; every blob the two can name is compared. Figures per blob:
    max_abs = max |ours - opencv|      over all images and elements
    rel     = max_abs / max |opencv|   (the difference relative to the blob's own range; 0 if both are 0)
A blob passes when rel <= tolerance and neither side holds NaN or inf: a non-finite value never compares equal,
not even with the same value on the other side (a net whose weights hold NaN is NaN everywhere on both sides).
Users run this to prove the conversion before blaming quantization.

DetectionOutput tops are compared as matched sets of rows: within each (image, label) the rows of the two sides
are paired by the assignment that minimises the score and box differences, so two detections with near-tied
scores that the two sides (or a canonical sort) put in a different order still line up.

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
    # NaN and +-inf elements seen in each side's blob, over all images (max_abs and ref_max_abs ignore them)
    nan_ours: int = 0
    inf_ours: int = 0
    nan_opencv: int = 0
    inf_opencv: int = 0
    values: int = 0  # elements of our blob seen, over all images

    @property
    def nonfinite(self) -> str:
        """Empty when both sides were finite, else which side held NaN/inf and how many."""
        ours = _counts(self.nan_ours, self.inf_ours)
        theirs = _counts(self.nan_opencv, self.inf_opencv)
        if not ours and not theirs:
            return ""
        if ours and theirs:
            return f"NaN/inf found in both: ours {ours}; OpenCV {theirs} (of {self.values} values)"
        side, counts = ("ours", ours) if ours else ("OpenCV", theirs)
        return f"NaN/inf found in {side} only: {counts} (of {self.values} values)"

    @property
    def rel(self) -> float:
        if self.nonfinite:
            return float("inf")
        if self.ref_max_abs == 0.0:
            return 0.0 if self.max_abs == 0.0 else float("inf")
        return self.max_abs / self.ref_max_abs

    def passed(self, tolerance: float) -> bool:
        return not self.nonfinite and self.rel <= tolerance


def _counts(nan: int, inf: int) -> str:
    return ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)


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
        return [d for d in self.compared if not d.passed(self.tolerance)]

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
            "blobs": [{**asdict(d), "rel": d.rel, "nonfinite": d.nonfinite, "passed": d.passed(self.tolerance)}
                      for d in self.diffs],
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
            mine, ref = np.asarray(ours[value]), np.asarray(ref)
            _count_nonfinite(diff, mine, ref)  # on the whole blobs, before any rows are selected
            match = ROW_MATCHERS.get(diff.layer_type)
            if match is not None:  # variable-length outputs: compare their meaningful rows, paired
                mine, ref, note = match(mine, ref)
                _accumulate(diff, mine, ref, note=note)
            else:
                _accumulate(diff, mine, ref)
    logger.info("compared %d blobs on %d images", len(report.compared), len(report.images))
    return report


def _match_detections(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The kept detections (score > 0) of two DetectionOutput tops, paired: row k of one side is matched with row k
    of the other. Caffe writes rows by image, label, then score; OpenCV by image then score across labels, padded
    with zero rows. Within each (image, label) the pairing minimises the summed differences of score and box
    (scipy's linear_sum_assignment), so near-tied scores in another order line up. When the sides keep different
    numbers of rows per (image, label), they are left in Caffe's order: the label or size difference fails."""
    from scipy.optimize import linear_sum_assignment

    from .convert.layers.ssd import detection_rows

    mine, theirs = detection_rows(ours, 0.0), detection_rows(ref, 0.0)
    if len(mine) != len(theirs):
        return mine, theirs, f"rows differ: ours keeps {len(mine)}, OpenCV {len(theirs)}"
    keys_mine = [tuple(k) for k in mine[:, :2]]
    keys_theirs = [tuple(k) for k in theirs[:, :2]]
    if keys_mine != keys_theirs:  # both sorted by (image, label): equal lists mean equal group sizes
        return mine, theirs, "rows differ in their labels; compared in Caffe's order"
    paired = np.empty_like(theirs)
    start = 0
    while start < len(mine):
        end = start + 1
        while end < len(mine) and keys_mine[end] == keys_mine[start]:
            end += 1
        a, b = mine[start:end, 2:].astype(np.float64), theirs[start:end, 2:].astype(np.float64)
        cost = np.nan_to_num(np.abs(a[:, None, :] - b[None, :, :]).max(axis=2), nan=1e30, posinf=1e30)
        rows, cols = linear_sum_assignment(cost)
        paired[start + rows] = theirs[start + cols]
        start = end
    return mine, paired, "rows matched as sets by image, label, score and box"


# Layer types whose output length varies: both sides are reduced to comparable, paired rows first.
# DetectionOutput: Caffe writes the kept detections; OpenCV pads to keep_top_k rows of zeros and orders by score.
ROW_MATCHERS = {"DetectionOutput": _match_detections}


def _count_nonfinite(diff: BlobDiff, ours: np.ndarray, ref: np.ndarray) -> None:
    """Add each side's NaN and inf elements to `diff` (the blob fails when any side has one)."""
    diff.values += int(ours.size)
    diff.nan_ours += int(np.count_nonzero(np.isnan(ours)))
    diff.inf_ours += int(np.count_nonzero(np.isinf(ours)))
    diff.nan_opencv += int(np.count_nonzero(np.isnan(ref)))
    diff.inf_opencv += int(np.count_nonzero(np.isinf(ref)))


def _accumulate(diff: BlobDiff, ours: np.ndarray, ref: np.ndarray, note: str = "") -> None:
    diff.shape = tuple(ours.shape)
    if ours.size != ref.size and not note.startswith("rows differ"):
        note = f"shape differs: ours {tuple(ours.shape)}, OpenCV {tuple(ref.shape)}"
    if note and not diff.note.startswith(("rows differ", "shape differs")):  # a difference note stays
        diff.note = note
    if ours.size != ref.size:
        diff.max_abs = float("inf")
        diff.ref_max_abs = max(diff.ref_max_abs, _finite_max(np.abs(ref)))
        return
    ref = ref.reshape(ours.shape)  # OpenCV may drop or add unit axes (e.g. 2-D InnerProduct outputs)
    with np.errstate(invalid="ignore"):  # inf - inf; the non-finite elements are counted apart
        delta = np.abs(ours.astype(np.float64) - ref)
    diff.max_abs = max(diff.max_abs, _finite_max(delta))
    diff.ref_max_abs = max(diff.ref_max_abs, _finite_max(np.abs(ref)))


def _finite_max(a: np.ndarray) -> float:
    """max over the finite elements (0 when none): NaN must not leak into a figure that `max` would then drop."""
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0
