"""Access to the generated Caffe bindings (proto/caffe_pb2.py).

Installed, proto/ is the package `int8tune.proto`. Run from a source tree without installing, it is found
beside this package, so `python main.py` works in a fresh clone before `pip install`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load(module: str) -> ModuleType:
    name = f"int8tune.proto.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[2] / "proto" / f"{module}.py"
        if not path.is_file():
            raise
        # Register under the installed name, so that every importer shares this one copy (protobuf refuses
        # to load the same .proto file twice in a process).
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None  # a file that exists always has a spec
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod


caffe_pb2 = _load("caffe_pb2")
