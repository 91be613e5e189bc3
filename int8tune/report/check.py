"""The report of `check`: the fp32 conversion against OpenCV's Caffe importer, blob by blob."""

from __future__ import annotations

from pathlib import Path

from ..check import BlobDiff, CheckReport
from .document import Document, Fact, Item, Level, Notice, Section, Table

_COLUMNS = ("blob (value)", "layer type", "shape", "max abs", "relative", "status", "note")


def check_document(report: CheckReport, files: tuple[Path, ...] = ()) -> Document:
    """PASS/FAIL and the worst blob first, then the graph outputs, then every blob (worst first in the page)."""
    by_value = {d.value: d for d in report.diffs}
    worst = report.worst()
    skipped = len(report.diffs) - len(report.compared)
    nonfinite = sum(1 for d in report.failures if d.nonfinite)
    failed = f"{len(report.failures)} above tolerance" + (f" ({nonfinite} with NaN/inf)" if nonfinite else "")
    summary: list[Item] = [
        Notice(Level.GOOD if report.passed else Level.WARNING,
               f"{'PASS' if report.passed else 'FAIL'}: {len(report.compared)} blobs compared, {failed}, "
               f"{skipped} not comparable"),
    ]
    if worst is not None:
        summary.append(Fact("worst", f"{worst.value} ({worst.layer_type}) relative {worst.rel:.3g}, max abs "
                                     f"{worst.max_abs:.3g}" + (f"; {worst.nonfinite}" if worst.nonfinite else "")))
    setup = Section("", (
        Fact("images", f"{len(report.images)}"),
        Fact("tolerance", f"{report.tolerance:g} (max|ours - opencv| / max|opencv|)"),
        Fact("time", f"int8tune {report.seconds_ours:.3f}s vs OpenCV {report.seconds_opencv:.3f}s"),
    ))
    outputs = Table(_COLUMNS, tuple(_row(by_value[v], report.tolerance) for v in report.outputs if v in by_value),
                    digits=3)
    every = Table(_COLUMNS, tuple(_row(d, report.tolerance) for d in report.diffs), digits=3)
    return Document(f"int8tune check: {report.proto} + {report.model}",
                    (setup, Section("graph outputs", (outputs,)), Section("every blob, in net order", (every,))),
                    files=files, summary=tuple(summary))


def _row(d: BlobDiff, tolerance: float) -> tuple:
    label = d.value if d.value == d.blob else f"{d.blob} ({d.value})"
    if d.note.startswith("not compared"):
        return (label, d.layer_type, "", None, None, "skipped", d.note[len("not compared"):].lstrip(" :"))
    status = "ok" if d.passed(tolerance) else "NaN/INF" if d.nonfinite else "ABOVE TOLERANCE"
    note = "; ".join(n for n in (d.nonfinite, d.note) if n)
    return (label, d.layer_type, "x".join(str(s) for s in d.shape), d.max_abs, d.rel, status, note)
