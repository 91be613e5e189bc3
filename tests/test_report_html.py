"""report/html.py: one self-contained, escaped, well-nested, deterministic page; tables sorted and formatted."""

from __future__ import annotations

import base64
import math
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from int8tune.report.document import Document, Fact, Figure, Level, Notice, Paragraph, Section, Table
from int8tune.report.html import render_html

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def png_bytes() -> bytes:
    """A valid 1x1 RGB PNG, built by hand so the test needs no image library."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")  # one scanline: filter byte 0, then one red RGB pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class NestingChecker(HTMLParser):
    """Every opened non-void tag is closed, in order; records the start tags seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"end tag for void <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check(page: str) -> NestingChecker:
    c = NestingChecker()
    c.feed(page)
    c.close()
    assert c.errors == []
    assert c.stack == [], f"left open: {c.stack}"
    return c


def tbody_rows(page: str, table_index: int = 0) -> list[list[str]]:
    body = re.findall(r"<tbody>(.*?)</tbody>", page, re.S)[table_index]
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


@pytest.fixture()
def full_doc(tmp_path: Path) -> Document:
    png = tmp_path / "fig.png"
    png.write_bytes(png_bytes())
    table = Table(
        columns=("layer", "cos", "count"),
        rows=tuple((f"conv{i}", 1.0 - i / 1000, i) for i in range(20)) + (("fc", None, 3),),
        title="Per-layer error",
        digits=4,
        sort_by="cos",
        descending=False,
        csv=tmp_path / "layers.csv",
    )
    return Document(
        title="int8tune auto: deploy.prototxt",
        summary=(Notice(Level.GOOD, "verified"), Fact("accuracy", "0.75")),
        sections=(
            Section("Settings", (Fact("a", "1"), Fact("b", "2"), Paragraph.of("one", "  two"), table)),
            Section("Plots", (Figure(png, "the plot"), Figure(tmp_path / "gone.png", "lost plot"))),
            Section("Verdict", (Notice(Level.WARNING, "saturated"), Notice(Level.INFO, "fyi"))),
        ),
        files=(tmp_path / "report.log", tmp_path / "layers.csv"),
    )


def test_page_skeleton_and_nesting(full_doc: Document) -> None:
    page = render_html(full_doc)
    assert page.startswith("<!DOCTYPE html>")
    checker = check(page)
    tags = [t for t, _ in checker.starts]
    assert ("html", {"lang": "en"}) in checker.starts
    assert ("meta", {"charset": "utf-8"}) in checker.starts
    assert any(t == "meta" and a.get("name") == "viewport" for t, a in checker.starts)
    assert tags.count("h1") == 1 and tags.count("script") == 1 and tags.count("style") == 1
    assert "<title>int8tune auto: deploy.prototxt</title>" in page
    # summary box first, sections in order, Files last
    order = [page.index(s) for s in ('class="summary"', "<h2>Settings", "<h2>Plots", "<h2>Verdict", "<h2>Files")]
    assert order == sorted(order)
    assert f"<code>{full_doc.files[0]}</code>" in page
    # consecutive facts share one <dl>
    assert page.count("<dl") == 2  # one in the summary, one in Settings


def test_self_contained(full_doc: Document) -> None:
    page = render_html(full_doc)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|script)[^>]*\bsrc=|@import|url\(", page)


def test_deterministic(full_doc: Document) -> None:
    assert render_html(full_doc) == render_html(full_doc)


def test_text_is_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>&'
    doc = Document(
        title=evil,
        summary=(Notice(Level.WARNING, evil),),
        sections=(
            Section(evil, (Fact(evil, evil), Paragraph.of(evil), Paragraph.of("  " + evil),
                           Table(columns=(evil,), rows=((evil,),), title=evil, sort_by=evil),
                           Figure(tmp_path / "none.png", evil))),
        ),
        files=(Path(evil),),
    )
    page = render_html(doc)
    checker = check(page)
    assert [t for t, _ in checker.starts].count("script") == 1  # only the page's own sorting script
    assert page.count("<script") == 1
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page


def test_figure_embedded_as_data_uri(full_doc: Document, tmp_path: Path) -> None:
    page = render_html(full_doc)
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 1
    assert base64.b64decode(uris[0]) == png_bytes()
    assert "<figcaption>the plot</figcaption>" in page


def test_missing_figure_is_noted(full_doc: Document, tmp_path: Path) -> None:
    page = render_html(full_doc)
    assert f"(figure missing: {tmp_path / 'gone.png'})" in page
    assert "<figcaption>lost plot</figcaption>" in page


def test_initial_sort_by_column() -> None:
    rows = (("b", 0.5), ("a", 0.9), ("c", 0.1))
    desc = render_html(Document("t", (Section("s", (Table(("name", "score"), rows, sort_by="score"),)),)))
    assert [r[0] for r in tbody_rows(desc)] == ["a", "b", "c"]
    assert '<th class="num" aria-sort="descending"' in desc
    by_name = Table(("name", "score"), rows, sort_by="name", descending=False)
    asc = render_html(Document("t", (Section("s", (by_name,)),)))
    assert [r[0] for r in tbody_rows(asc)] == ["a", "b", "c"]
    unsorted = render_html(Document("t", (Section("s", (Table(("name", "score"), rows),)),)))
    assert [r[0] for r in tbody_rows(unsorted)] == ["b", "a", "c"]
    assert ' aria-sort="' not in unsorted


def test_numeric_sort_is_not_lexical() -> None:
    rows = (("ten", 10), ("nine", 9), ("two-and-a-half", 2.5), ("hundred", 100))
    page = render_html(Document("t", (Section("s", (Table(("n", "v"), rows, sort_by="v", descending=False),)),)))
    assert [r[0] for r in tbody_rows(page)] == ["two-and-a-half", "nine", "ten", "hundred"]
    assert page.index(">9<") < page.index(">10<")


def test_blank_cells_are_empty_and_sort_last() -> None:
    rows = (("nan", math.nan), ("none", None), ("one", 1.0), ("two", 2.0))
    for descending in (True, False):
        table = Table(("n", "v"), rows, sort_by="v", descending=descending)
        page = render_html(Document("t", (Section("s", (table,)),)))
        got = tbody_rows(page)
        assert [r[0] for r in got[2:]] == ["nan", "none"]  # blanks last in both directions, in their given order
        assert [r[1] for r in got[2:]] == ["", ""]
    assert "nan" not in page.lower().replace(">nan<", "")  # no "nan" text besides the name cell
    assert "None" not in page


def test_cell_formatting() -> None:
    t = Table(("f", "i", "s"), ((1 / 3, 42, "x < y"), (math.inf, -7, "")), digits=3)
    page = render_html(Document("t", (Section("s", (t,)),)))
    assert f'<td class="num" data-value="{1 / 3!r}">0.333</td>' in page
    assert '<td class="num" data-value="42">42</td>' in page
    assert '<td class="num" data-value="Infinity">inf</td>' in page
    assert "<td>x &lt; y</td>" in page


def test_notice_levels_have_distinct_classes() -> None:
    doc = Document("t", summary=(Notice(Level.WARNING, "w"), Notice(Level.GOOD, "g"), Notice(Level.INFO, "i")))
    page = render_html(doc)
    notices = re.findall(r'<div class="notice (notice-\w+)" role="note">(.*?)</div>', page)
    assert [c for c, _ in notices] == ["notice-warning", "notice-good", "notice-info"]
    assert "Warning" in notices[0][1] and "Warning" not in notices[1][1] + notices[2][1]


def test_paragraph_lines_and_alignment() -> None:
    doc = Document("t", (Section("s", (Paragraph.of("a", "b"), Paragraph.of("head", "  x    1", "  yy   2"))),))
    page = render_html(doc)
    assert "<p>a<br>\nb</p>" in page
    assert "<pre>head\n  x    1\n  yy   2</pre>" in page


def test_filter_only_on_long_tables_and_csv_note(full_doc: Document) -> None:
    page = render_html(full_doc)
    assert page.count('<input class="filter"') == 1
    assert 'data-table="t1"' in page and 'id="t1"' in page
    assert "same rows in <code>layers.csv</code>" in page
    short = render_html(Document("t", (Section("s", (Table(("a",), tuple((i,) for i in range(15))),)),)))
    assert "<input" not in short
    # the filled cells of cos sort ascending; the blank one of "fc" comes last
    got = tbody_rows(page)
    assert got[0][0] == "conv19" and got[-1] == ["fc", "", "3"]
