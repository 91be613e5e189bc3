"""`int8tune export`: the fp32 model as ONNX, as the tool runs it (the reference every int8 figure is measured
against)."""

from __future__ import annotations

from ..config import ModelConfig
from ..outputs import atomic_write_bytes
from ..pipeline.workspace import load_workspace
from .parse import input_shape


def run_export(args) -> int:
    model = ModelConfig(args.proto, args.model, input_shape(args.input_shape))  # checks the files exist
    ws = load_workspace(model.proto, model.model, args.equalize, model.input_shape)
    path = atomic_write_bytes(args.output, ws.converted.model.SerializeToString())
    graph = ws.converted.model.graph
    print(f"wrote {path}: inputs {', '.join(i.name for i in graph.input)}; outputs "
          f"{', '.join(o.name for o in graph.output)}"
          + (f"; BatchNorm/Scale folded into {', '.join(ws.fold.folded)}" if ws.fold.folded else ""))
    return 0
