"""main.sh end to end on real detectors, as a user runs it: tuning images and held-out images, the YOLO metric
(or the SSD's square), every output written, the report in both renderings, the deployed file verified on this
CPU. Slow (a minute or more each): marked `slow`, left out of the default `pytest` run and run by .ci/run."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import main as entry
from int8tune.quant.formats import read_table_pb

pytestmark = pytest.mark.slow

DETECTORS = {
    # name: (prototxt, caffemodel, image folder, extra options)
    "yolov3_nano_voc": ("MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel",
                        "detection", ["--metric", "yolo", "--yolo_cfg", "{d}/MobileNetV2-YOLOv3-Nano-voc.cfg"]),
    "res10_ssd_face": ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel", "natural", []),
}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.mark.parametrize("name", list(DETECTORS))
def test_main_sh_on_a_real_detector(name, assets, tmp_path):
    proto, model, folder, extra = DETECTORS[name]
    d = assets / "models" / name
    images = _images(assets / "images" / folder)
    tuning, held = tmp_path / "tuning.txt", tmp_path / "held_out.txt"
    tuning.write_text("".join(f"{p}\n" for p in images[:6]))
    held.write_text("".join(f"{p}\n" for p in images[6:10]))
    out = tmp_path / "run"
    args = ["auto", "--proto", str(d / proto), "--model", str(d / model), "--data_list", str(tuning),
            "--validation_list", str(held), "--image_params", str(REPO_ROOT / "examples" / "image_params" /
                                                                   f"{name}.json"),
            "--restarts", "1", "--output_path", str(out), *[a.format(d=d) for a in extra]]
    assert entry.main(args) == 0
    for path in ("tuned/model_int8_qdq.onnx", "tuned/int8.prototxt", "tuned/ncnn.table", "start/model_int8_qdq.onnx",
                 "calibration/statistics.csv", "layers.csv", "validation.csv", "trials.jsonl",
                 "plots/layer_differences.png"):
        assert (out / path).is_file(), path
    report = (out / "report.log").read_text()
    assert "the deployed model computes what was measured" in report
    assert re.search(r"held-out check: 4 image\(s\) of --validation_list", report)
    # the delivered table is what report.log says it is
    kept = read_table_pb(out / "tuned" / "calibration_table.pb")
    assert len(kept.quantized_layers()) > 10
    html = (out / "report.html").read_text()
    png = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert png and base64.b64decode(png[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out check" in html and "<table" in html and "http://" not in html and "https://" not in html
    # the same run again resumes from its trial log and delivers the same table
    assert entry.main(args) == 0
    assert read_table_pb(out / "tuned" / "calibration_table.pb").thresholds() == kept.thresholds()
    assert "(0 replayed" not in (out / "report.log").read_text()
