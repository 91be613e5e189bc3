"""What a run hands over: the table in every format, the QDQ ONNX model onnxruntime runs, what onnxruntime makes
of that file on this CPU (census), and whether the file computes exactly what the simulation measured."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..log import logger
from ..outputs import atomic_write_bytes
from ..quant.census import Census, census
from ..quant.formats import write_all
from ..quant.qdq import export_qdq
from ..quant.table import CalibrationTable
from ..quant.verify import ExportCheck, check_export
from .images import Images
from .workspace import Workspace

QDQ_FILE = "model_int8_qdq.onnx"


@dataclass
class Delivery:
    folder: Path
    table: CalibrationTable
    files: dict[str, Path] = field(default_factory=dict)  # format name -> file (the QDQ model as "qdq")
    qdq_skipped: str | None = None  # why there is no QDQ model
    census: Census | None = None
    float_outputs: dict[str, str] = field(default_factory=dict)  # layer -> why its output stays float
    check: ExportCheck | None = None
    check_images: str = ""  # which images the check ran on ("tuning", "calibration")

    @property
    def qdq(self) -> Path | None:
        return self.files.get("qdq")


def deliver(ws: Workspace, table: CalibrationTable, folder: Path, check_on: Images | None = None,
            images_kind: str = "calibration", threads: int = 2, qdq: bool = True, whole: bool = False) -> Delivery:
    """Write `table` in every format under `folder`, and (unless `qdq` is False) its QDQ model, with the census
    and, on `check_on`, the check that the file computes what the simulation does on this CPU. `whole`: `folder`
    holds only these files, and they change together: written into a sibling folder first, which then takes
    `folder`'s place (a run that fails before that leaves the previous files as they were, all of them)."""
    if whole:
        final, folder = Path(folder), Path(folder).parent / f".{Path(folder).name}.partial"
        shutil.rmtree(folder, ignore_errors=True)
        out = deliver(ws, table, folder, check_on, images_kind, threads, qdq)
        _swap_in(folder, final)
        out.folder = final
        out.files = {k: final / p.name for k, p in out.files.items()}
        return out
    out = Delivery(Path(folder), table, dict(write_all(table, ws.proto, folder, sum_scales=ws.fold.sum_scales)))
    if not qdq:
        return out
    try:
        model, report = export_qdq(ws.converted, table)
    except ConfigError as e:
        logger.warning("no QDQ export: %s", e)
        out.qdq_skipped = str(e)
        return out
    out.files["qdq"] = atomic_write_bytes(Path(folder) / QDQ_FILE, model.SerializeToString())
    out.census = census(model, threads=threads)
    out.float_outputs = dict(report.fp32_in_runtime)
    if check_on is not None:
        out.check = check_export(ws.converted, table, model, check_on.batches, threads=threads)
        out.check_images = images_kind
    return out


def _swap_in(new: Path, final: Path) -> None:
    """`new` takes the place of `final`: two renames (the old folder moved aside, then removed), so no reader ever
    sees a mix of two deliveries."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
