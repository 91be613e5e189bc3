"""The report of a calibration (the calibrate command, and the first step of main.sh and the API)."""

from __future__ import annotations

from pathlib import Path

from ..pipeline.calibration import Calibration
from ..pipeline.delivery import Delivery
from ..pipeline.workspace import Workspace
from ..tune.tuner import metric_outputs
from .document import Document, Fact, Item, Section, Table
from .sections import delivery_section, equalization_items, lever_items, verdict


def calibration_sections(cal: Calibration, ws: Workspace, equalized: Path | None = None,
                         corrected: Path | None = None) -> list[Section]:
    """What was calibrated and how, the difference it leaves, and the per-blob choice."""
    spec = cal.table.spec
    planned = len(cal.table.layers)
    int8 = planned - len(cal.ignored)
    setup: list[Item] = [
        Fact("calibration images", cal.images.description),
        Fact("int8 layers", f"{int8} of {planned} of types {', '.join(spec.quantize_types)}"
             + (f"; ignored: {', '.join(cal.ignored)}" if cal.ignored else "")),
        Fact("folded BatchNorm/Scale into", ", ".join(ws.fold.folded) or "none"),
        *([Fact("folded BatchNorm/Scale through Eltwise sums", ", ".join(
            f"{s} ({' + '.join(ws.fold.through_sums[s])})" for s in ws.fold.through_sums)
            + "; into the convolutions feeding each sum, which stays an int8 Add (ncnn.table and int8.prototxt "
              "hold the weight thresholds of the unfolded weights)")] if ws.fold.through_sums else []),
        Fact("activation calibrator", f"{cal.method}; weights: {_weight_method(cal)}; granularity "
             f"{spec.granularity.value}; rounding {spec.rounding.value}; bias {spec.bias.value}; target "
             f"{spec.target.value}{'; unsigned for non-negative blobs' if spec.unsigned_blobs else ''}"),
        *equalization_items(ws, equalized, cal.equalize_choice), *lever_items(ws, corrected)]
    sections = [Section("calibration", tuple(setup))]
    if cal.model_difference is not None and cal.measured is not None:
        worst = sorted(cal.layer_differences.items(), key=lambda kv: -kv[1])
        sections.append(Section(f"difference fp32 vs int8 on {cal.measured.count} calibration image(s)", (
            Fact(f"model difference (square, summed over {', '.join(metric_outputs(ws.converted))})",
                 f"{cal.model_difference:.6g}"),
            Table(("layer", "square difference of its own output"), tuple(worst),
                  title="each int8 layer's own output, everything upstream int8, worst first",
                  sort_by="square difference of its own output"))))
    rows = []
    for v in cal.table.active_blobs():
        e = cal.table.blobs[v]
        rows.append((e.blob, e.calibrator, e.threshold, e.absmax or 0.0,
                     e.threshold / e.absmax if e.absmax else None, "u8" if e.unsigned else "s8"))
    sections.append(Section("per-blob choice", (Table(("blob", "calibrator", "threshold", "absmax", "T/absmax", "grid"),
                                                      tuple(rows), digits=5),)))
    return sections


def calibration_document(cal: Calibration, ws: Workspace, delivery: Delivery, seconds: float,
                         equalized: Path | None, extra_files: list[Path], corrected: Path | None = None) -> Document:
    sections = calibration_sections(cal, ws, equalized, corrected)
    deployed = delivery_section(delivery)
    sections.insert(2, deployed)
    return Document(f"int8tune calibrate: {ws.proto} + {ws.model}", tuple(sections),
                    files=tuple(delivery.files.values()) + tuple(extra_files),
                    summary=(*verdict(deployed), Fact("total time", f"{seconds:.1f}s")))


def _weight_method(cal: Calibration) -> str:
    methods = {e.weight_method for e in cal.table.layers.values() if e.weight_thresholds is not None}
    return ", ".join(sorted(m for m in methods if m)) or "none"
