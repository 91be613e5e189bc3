"""The registry of Caffe layer converters. Adding a layer type is one decorated function in layers/."""

from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .builder import LayerContext, Shape

LayerConverter = Callable[[LayerContext], list[Shape]]

LAYER_CONVERTERS: Registry[LayerConverter] = Registry("Caffe layer type")
converter = LAYER_CONVERTERS.register
