"""Images, as every run sees them: batches of prepared float32 NCHW arrays, with their labels and file names.

Two front ends build them: the CLI from a data list and the user's prepare_image (prepared once, on first use,
and kept in memory: tuning reuses them for every candidate), the API from a dataloader. Calibration streams
them instead (`stream()`), so a calibration set larger than memory is never held whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..config import DataConfig
from ..data import DataItem, iter_batches
from ..errors import DataError
from ..image_params import load_image_params

Batches = list[np.ndarray]


@dataclass
class Images:
    """A set of images in batches. `description` says where they come from (report lines name it)."""

    description: str
    count: int  # images
    labels: list[np.ndarray] | None = None  # per batch, for task metrics (top1, f1, ...)
    names: list[list[str]] | None = None  # per batch, the image files
    _prepare: Callable[[], Iterator[np.ndarray]] | None = field(default=None, repr=False)
    _batches: Batches | None = field(default=None, repr=False)

    @property
    def batches(self) -> Batches:
        """Every batch, prepared once and kept."""
        if self._batches is None:
            assert self._prepare is not None
            self._batches = list(self._prepare())
        return self._batches

    def stream(self) -> Iterator[np.ndarray]:
        """A fresh pass over the batches (prepared on the fly unless already in memory)."""
        if self._batches is not None or self._prepare is None:
            return iter(self.batches)
        return self._prepare()

    @property
    def batch_count(self) -> int:
        return len(self._batches) if self._batches is not None else len(self.names or []) or len(self.batches)

    @property
    def paths(self) -> list[str] | None:
        return [n for batch in self.names for n in batch] if self.names else None

    def head(self, images: int) -> "Images":
        """The first batches holding at most `images` images (at least one batch): the measurement subset."""
        kept, n = [], 0
        for k, b in enumerate(self.batches):
            if k and n + len(b) > images:
                break
            kept.append(b)
            n += len(b)
        k = len(kept)
        return Images(f"the first {n} of {self.description}", n,
                      self.labels[:k] if self.labels else None, self.names[:k] if self.names else None,
                      _batches=kept)

    def take(self, indices: list[int], what: str) -> "Images":
        """The batches at `indices` (in that order), described as `what` of this set."""
        batches = [self.batches[i] for i in indices]
        count = sum(len(b) for b in batches)
        return Images(f"{count} image(s) {what} ({self.description})", count,
                      [self.labels[i] for i in indices] if self.labels else None,
                      [self.names[i] for i in indices] if self.names else None, _batches=batches)

    def digest(self) -> str:
        """sha256 of the file names when known, else of the pixels: what a trial log's fingerprint holds."""
        h = hashlib.sha256()
        if self.names:
            for n in self.paths or []:
                h.update(n.encode() + b"\n")
        else:
            for b in self.batches:
                h.update(np.ascontiguousarray(b).tobytes())
        return h.hexdigest()

    # -- front ends -------------------------------------------------------------------------------------------
    @staticmethod
    def from_files(items: list[DataItem], data: DataConfig, prepare_image: Callable,
                   input_shape: tuple[int, ...], what: str = "") -> "Images":
        params = load_image_params(data.image_params)
        b = data.batch_size
        labels = None
        if items and all(i.label is not None for i in items):
            labels = [np.array([i.label for i in items[k:k + b]], dtype=np.int64) for k in range(0, len(items), b)]
        names = [[str(i.path) for i in items[k:k + b]] for k in range(0, len(items), b)]
        return Images(f"{len(items)} image(s) {what or 'of'} {data.data_list}", len(items), labels, names,
                      _prepare=lambda: (batch for batch, _ in iter_batches(items, prepare_image, params, input_shape,
                                                                              b)))

    @staticmethod
    def from_loader(loader: Iterable, name: str) -> "Images":
        """Batches from a Python iterable: arrays, or (array, labels) pairs. Read into memory once."""
        arrays, labels = [], []
        for k, item in enumerate(loader):
            if isinstance(item, (tuple, list)) and len(item) == 2:
                array, label = item
                labels.append(np.asarray(label, dtype=np.int64).reshape(-1))
            else:
                array = item
            array = np.asarray(array, dtype=np.float32)
            if array.ndim != 4 or not np.isfinite(array).all():
                raise DataError(f"{name} batch {k}: expected a finite float32 NCHW array, found shape {array.shape}")
            arrays.append(array)
        if not arrays:
            raise DataError(f"{name} yielded no batch")
        if labels and len(labels) != len(arrays):
            raise DataError(f"{name}: some batches have labels and some do not")
        count = sum(len(a) for a in arrays)
        return Images(f"{count} image(s) from {name}", count, labels or None, None, _batches=arrays)


