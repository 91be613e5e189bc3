"""One model, on real nets: what `calibrate` exports, run the way a user deploys it (a default onnxruntime session:
integer kernels), computes the simulation's numbers bit for bit at every quantized blob, on images it was not
calibrated on. The simulation computes what the target computes (int32 sums, onnxruntime's requantization); the
same table computed in float on dequantized values, as fake quantization usually is, does not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO_ROOT

import main as entry
import test_utils
from int8tune.hostcpu import describe_host
from int8tune.image_params import load_image_params
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.formats import read_table_pb
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import Target
from int8tune.runtime import Engine, with_outputs

MODELS = {
    "squeezenet_v1.0": ("deploy.prototxt", "squeezenet_v1.0.caffemodel", "imagenet_dev"),
    "yolov3_nano_voc": ("MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel", "detection"),
}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


# yolov3_nano_voc behind the slow marker (.ci/run runs it): its calibration is the suite's longest setup
@pytest.fixture(scope="module", params=[pytest.param(m, marks=pytest.mark.slow) if m == "yolov3_nano_voc" else m
                                        for m in MODELS])
def calibrated(request, assets, tmp_path_factory):
    name = request.param
    proto_name, model_name, folder = MODELS[name]
    d = assets / "models" / name
    images = _images(assets / "images" / folder)
    root = tmp_path_factory.mktemp(name)
    listing = root / "calibration.txt"
    listing.write_text("".join(f"{p}\n" for p in images[:4]))
    params = REPO_ROOT / "examples" / "image_params" / f"{name}.json"
    out = root / "cal"
    # kl: one calibrator, no per-blob measurement (the test is about the export, not the thresholds). The CLI
    # installs its own log handler: give the logger back afterwards (module scope runs outside conftest's fixture)
    from int8tune.log import logger

    saved = (list(logger.handlers), logger.propagate, logger.level)
    assert entry.main(["calibrate", "--proto", str(d / proto_name), "--model", str(d / model_name),
                       "--data_list", str(listing), "--image_params", str(params), "--method", "kl",
                       "--measure_images", "2", "--output_path", str(out)]) == 0
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    # the weights the table belongs to: the default bias correction's corrected.caffemodel
    ws = load_workspace(str(d / proto_name), str(d / model_name), corrected_model=out / "corrected.caffemodel")
    held_out = images[4:7] if folder != "detection" else images[-3:]
    return name, ws, out, held_out, load_image_params(params)


def _batch(images, params) -> np.ndarray:
    return np.concatenate([test_utils.prepare_image(p, params) for p in images])


def test_calibrate_writes_an_onnxruntime_table_by_default(calibrated):
    _, _, out, _, _ = calibrated
    table = read_table_pb(out / "calibration_table.pb")
    assert table.spec.target is Target.ONNXRUNTIME
    assert any(e.unsigned for e in table.blobs.values()), "post-ReLU blobs are uint8 for onnxruntime"


def test_deployed_model_equals_the_simulation_bit_for_bit(calibrated):
    name, ws, out, held_out, params = calibrated
    table = read_table_pb(out / "calibration_table.pb")
    graph = build_int8_graph(ws.converted, table)
    qdq = onnx.load(str(out / "model_int8_qdq.onnx"))
    outputs = [o.name for o in qdq.graph.output]
    blobs = [p.tensor for p in graph.placement.points if p.is_output and p.tensor in ws.converted.net.blob_of]
    names = list(dict.fromkeys(outputs + blobs))
    x = _batch(held_out, params)
    sim = Engine(replace(graph.converted, model=graph.frozen(table)), simulation=True).run_tensors(x, names)
    session = ort.InferenceSession(with_outputs(qdq, names).SerializeToString(), providers=["CPUExecutionProvider"])
    deployed = dict(zip(names, session.run(names, {next(iter(ws.net.inputs)): x})))
    differing = [n for n in names if not np.array_equal(sim[n], deployed[n])]
    assert not differing, (f"{describe_host()}: {len(differing)} of {len(names)} quantized blobs differ, first "
                           f"{differing[:3]}")
    if name == "squeezenet_v1.0":
        # the float form of the same table is not the deployed model (roundings flip); measured on SqueezeNet
        floats = build_int8_graph(ws.converted, table, integer=False)
        f = Engine(replace(floats.converted, model=floats.frozen(table)), simulation=True).run_tensors(x, names)
        assert any(not np.array_equal(f[n], deployed[n]) for n in names)
