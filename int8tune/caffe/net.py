"""The clean net: what the loader hands to the converter.

Blob naming (the one documented mapping between what the user sees and what runs):

- A *blob* is a name as the user sees it in the prototxt.
- Each time a layer writes a blob, that written version becomes a distinct *value*. In-place layers
  (top == bottom, e.g. Convolution -> BatchNorm -> Scale -> ReLU all writing "conv1") produce several
  versions of one blob. The **last** version keeps the plain blob name, because that is what Caffe holds
  in the blob after a forward pass and what every later consumer reads. Every earlier version is named
  ``"<blob>@<layer>"``: the blob as written by that layer (``"conv1@conv1"``, ``"conv1@bn1"``, ...).
- `CaffeNet.blob_of` maps every value back to its user-visible blob; `CaffeNet.value_of_layer_output`
  finds the value a given layer wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERSION_SEPARATOR = "@"


@dataclass(frozen=True)
class Layer:
    """One Caffe layer after loading: values instead of raw blob names, weights attached."""

    name: str
    type: str
    bottoms: tuple[str, ...]  # value names read
    tops: tuple[str, ...]  # value names written
    param: Any  # caffe_pb2.LayerParameter, for the *_param fields
    blobs: tuple[np.ndarray, ...] = ()  # learned parameters from the caffemodel, in Caffe order
    index: int = 0  # position in the prototxt (0-based), for messages
    user_bottoms: tuple[str, ...] = ()
    user_tops: tuple[str, ...] = ()

    @property
    def in_place(self) -> bool:
        return bool(set(self.user_tops) & set(self.user_bottoms))

    def describe(self) -> str:
        return f"layer {self.name!r} (type {self.type}, #{self.index} in the prototxt)"


@dataclass
class CaffeNet:
    """A deploy net: inputs, layers in execution order, and the blob <-> value mapping."""

    name: str
    proto_path: Path | None
    model_path: Path | None
    inputs: dict[str, tuple[int, ...]]  # input value -> declared shape (NCHW as written)
    layers: list[Layer]
    blob_of: dict[str, str] = field(default_factory=dict)  # value -> user-visible blob
    dropped: list[str] = field(default_factory=list)  # human-readable notes of layers not run

    @property
    def outputs(self) -> list[str]:
        """Values written and never read: the model's outputs, in the order they were written."""
        read = {b for layer in self.layers for b in layer.bottoms}
        seen: list[str] = []
        for layer in self.layers:
            for top in layer.tops:
                if top not in read and top not in seen:
                    seen.append(top)
        return seen

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        from ..errors import ModelError

        raise ModelError(f"no layer named {name!r} in {self.proto_path or self.name}; layers: "
                         f"{', '.join(l.name for l in self.layers[:20])}{' ...' if len(self.layers) > 20 else ''}")

    def values(self) -> list[str]:
        """Every value in execution order (inputs first)."""
        out = list(self.inputs)
        for layer in self.layers:
            out.extend(t for t in layer.tops if t not in out)
        return out

    def blobs(self) -> list[str]:
        """Every user-visible blob in first-written order."""
        out: list[str] = []
        for value in self.values():
            blob = self.blob_of[value]
            if blob not in out:
                out.append(blob)
        return out

    def producer(self) -> dict[str, Layer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[Layer]]:
        out: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                out.setdefault(b, []).append(layer)
        return out
