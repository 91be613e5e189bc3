"""Tiny Caffe nets built in test code: a prototxt string plus weights -> files on disk (prototxt, caffemodel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from int8tune.caffe.schema import caffe_pb2


def write_net(tmp_path: Path, prototxt: str, weights: dict[str, list[np.ndarray]] | None = None,
              name: str = "net") -> tuple[Path, Path]:
    """Write `prototxt` and a caffemodel holding `weights` ({layer name: [blob arrays]}); return both paths."""
    proto_path = tmp_path / f"{name}.prototxt"
    model_path = tmp_path / f"{name}.caffemodel"
    proto_path.write_text(prototxt)
    net = caffe_pb2.NetParameter()
    text_format.Merge(prototxt, net)
    model = caffe_pb2.NetParameter()
    model.name = net.name
    for lp in net.layer:
        layer = model.layer.add()
        layer.name = lp.name
        layer.type = lp.type
        layer.bottom.extend(lp.bottom)
        layer.top.extend(lp.top)
        for array in (weights or {}).get(lp.name, []):
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    model_path.write_bytes(model.SerializeToString())
    return proto_path, model_path


def input_header(shape: tuple[int, ...], name: str = "data") -> str:
    dims = "\n".join(f"  dim: {d}" for d in shape)
    return f'input: "{name}"\ninput_shape {{\n{dims}\n}}\n'


def layer(name: str, type_: str, bottoms: list[str] | str, tops: list[str] | str, body: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in tops]
    if body:
        lines.append("  " + body)
    lines.append("}")
    return "\n".join(lines) + "\n"
