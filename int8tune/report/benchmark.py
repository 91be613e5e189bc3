"""The report of `benchmark`: fp32 vs the int8 file in onnxruntime on this CPU, and what runs in int8."""

from __future__ import annotations

from pathlib import Path

from ..benchmark import BenchmarkResult
from .document import Document, Fact, Item, Level, Notice, Paragraph, Section, Table

X64_NOTE = ("int8 x64: the same file with session.x64quantprecision=1 (exact U8U8 kernels on x86 without VNNI; on "
            "VNNI CPUs it only slows the model)")


def benchmark_document(r: BenchmarkResult, files: tuple[Path, ...] = ()) -> Document:
    setup: list[Item] = [Fact("host", r.host), Fact("timing", f"{r.threads} thread(s); median of {r.repeat} runs, "
                                                              "one session at a time")]
    if r.target is not None:
        setup.append(Fact("table target", r.target))
    table = Table(("batch", "fp32 ms", "int8 ms", "int8 x64 ms", "fp32/int8", "fp32/x64"),
                  tuple((s.batch, s.fp32_ms, s.int8_ms, s.int8_x64_ms, s.speedup, s.speedup_x64) for s in r.rows),
                  title="time per run", digits=4)
    sections = [Section("", tuple(setup)),
                Section("what onnxruntime runs (default session, optimised graph)", (Paragraph(r.census),)),
                Section("speed", (table, Paragraph.of(X64_NOTE)))]
    summary: list[Item] = [Fact("int8 speed-up over fp32", ", ".join(f"{s.speedup:.2f}x at batch {s.batch}"
                                                                     for s in r.rows))]
    if r.deployed_check:
        lines = list(r.deployed_check)
        verdict = next((k for k, line in enumerate(lines) if line.startswith("the deployed model")), None)
        items: list[Item] = [Paragraph(tuple(lines))]
        if verdict is not None:
            good = "DIFFERS" not in lines[verdict]
            notice = Notice(Level.GOOD if good else Level.WARNING, lines[verdict])
            items = [Paragraph(tuple(lines[:verdict])), notice] + (
                [Paragraph(tuple(lines[verdict + 1:]))] if lines[verdict + 1:] else [])
            summary.append(notice)
        sections.append(Section("deployed model check", tuple(items)))
    return Document(f"int8tune benchmark: {r.proto}", tuple(sections), files=files, summary=tuple(summary))
