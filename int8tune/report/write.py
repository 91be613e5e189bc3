"""Writing a Document: report.log (text) and report.html (one self-contained page) side by side."""

from __future__ import annotations

from pathlib import Path

from ..outputs import atomic_write_text
from .document import Document
from .html import render_html
from .text import render_text

REPORT_LOG = "report.log"
REPORT_HTML = "report.html"


def write_report(doc: Document, folder: Path) -> tuple[str, list[Path]]:
    """Write report.log and report.html under `folder`; returns the text and the two paths."""
    text = render_text(doc)
    log = atomic_write_text(Path(folder) / REPORT_LOG, text)
    html = atomic_write_text(Path(folder) / REPORT_HTML, render_html(doc))
    return text, [log, html]
