"""Draw a report Document as one self-contained HTML5 page: CSS, JS and figures are inline (PNG as data: URIs), so
report.html can be mailed or opened from an archive with no server and no network. The output depends only on the
Document (and the bytes of its figures): no timestamps, ids numbered in reading order, so two runs diff cleanly.
"""

from __future__ import annotations

import base64
import html
import itertools
import math
import numbers
from collections.abc import Iterator
from pathlib import Path

from int8tune.report.document import Cell, Document, Fact, Figure, Item, Level, Notice, Paragraph, Table

# Tables longer than this get a text filter: shorter ones fit on a screen, where a filter is only clutter.
FILTER_MIN_ROWS = 15

_CSS = """
body{margin:0;color:#1f2328;background:#fff;line-height:1.45;
 font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:1.6em;margin:.3em 0 .7em;overflow-wrap:anywhere}
h2{font-size:1.25em;margin:1.8em 0 .6em;padding-bottom:.2em;border-bottom:1px solid #d0d7de}
h3{font-size:1.05em;margin:1.2em 0 .4em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.9em}
pre{background:#f6f8fa;padding:8px 12px;border-radius:6px;overflow-x:auto}
.summary{background:#f0f6ff;border:1px solid #9ec5fe;border-radius:8px;padding:4px 16px;margin-bottom:1em}
dl.facts{display:grid;grid-template-columns:minmax(8em,max-content) 1fr;gap:3px 18px;margin:.7em 0}
dl.facts dt{font-weight:600;color:#57606a}
dl.facts dd{margin:0;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.notice{border-left:5px solid;border-radius:6px;padding:8px 12px;margin:.7em 0}
.notice-warning{background:#fff4e5;border-color:#d9480f;color:#7a2e00}
.notice-good{background:#e9f7ef;border-color:#2f9e44;color:#1b5e20}
.notice-info{background:#f3f4f6;border-color:#8c959f}
.table-wrap{display:block;width:fit-content;max-width:100%;overflow:auto;max-height:75vh;
 border:1px solid #d0d7de;border-radius:6px;margin:.4em 0}
table{border-collapse:separate;border-spacing:0;font-size:.92em}
th,td{padding:4px 10px;border-bottom:1px solid #e5e8eb;white-space:nowrap}
th{position:sticky;top:0;background:#eaeef2;text-align:left;cursor:pointer;user-select:none}
th::after{content:" \\2195";color:#9aa4ae}
th[aria-sort=ascending]::after{content:" \\25B2";color:inherit}
th[aria-sort=descending]::after{content:" \\25BC";color:inherit}
.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f6f8fa}
tbody tr:hover{background:#fff8c5}
input.filter{font:inherit;padding:3px 8px;margin:.3em 0;width:min(24em,100%);border:1px solid #d0d7de;border-radius:6px}
.csv{color:#57606a;font-size:.9em;margin:.2em 0 .8em}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de;border-radius:4px}
figcaption{color:#57606a;font-size:.92em;margin-top:.3em}
.missing{color:#9a3412}
ul.files{padding-left:1.2em}
@media print{
 /* paper cannot scroll: wide tables wrap their cells instead */
 main{max-width:none;padding:0}
 .table-wrap{overflow:visible;max-height:none;border:0}
 table{font-size:.75em}
 th,td{white-space:normal;padding:2px 4px}
 td:not(.num){overflow-wrap:anywhere}
 th{position:static}
 th::after,input.filter{display:none}
 .notice,figure,tr{break-inside:avoid}
}
"""

# One delegated listener per event serves every table, so the script is written once whatever the table count.
# The sort rule matches _sorted_rows: numbers (data-value) before text, text by code point, blanks always last;
# Array.sort is stable, so equal keys keep their current order in both directions, as Python's sort does.
_JS = """
(function () {
  function key(tr, col) {
    var td = tr.cells[col], v = td.getAttribute('data-value');
    if (v !== null) return [0, Number(v)];
    var t = td.textContent;
    return t === '' ? null : [1, t];
  }
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var desc = th.getAttribute('aria-sort') === 'ascending', sign = desc ? -1 : 1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x === null || y === null) return (x === null) - (y === null);
      if (x[0] !== y[0]) return sign * (x[0] - y[0]);
      return sign * (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
  }
  document.addEventListener('click', function (e) {
    var th = e.target.closest && e.target.closest('table.sortable thead th');
    if (th) sortBy(th);
  });
  document.addEventListener('keydown', function (e) {
    var th = e.target.closest && e.target.closest('table.sortable thead th');
    if (th && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); sortBy(th); }
  });
  document.addEventListener('input', function (e) {
    if (!e.target.matches('input.filter')) return;
    var q = e.target.value.toLowerCase(), table = document.getElementById(e.target.getAttribute('data-table'));
    Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
      tr.hidden = q !== '' && tr.textContent.toLowerCase().indexOf(q) < 0;
    });
  });
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(doc: Document) -> str:
    """The whole page for `doc`: title, summary box, one <section> per Section, then the list of files written."""
    ids = itertools.count(1)  # table ids, numbered in page order so the output is deterministic
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(doc.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(doc.title)}</h1>",
    ]
    if doc.summary:
        out += ['<div class="summary">', *_items(doc.summary, ids), "</div>"]
    for section in doc.sections:
        out += ["<section>", f"<h2>{_e(section.title)}</h2>", *_items(section.items, ids), "</section>"]
    if doc.files:
        # Plain text, not links: the page may be read far from the machine that wrote those files.
        out += ["<section>", "<h2>Files</h2>", '<ul class="files">']
        out += [f"<li><code>{_e(p)}</code></li>" for p in doc.files]
        out += ["</ul>", "</section>"]
    out += ["</main>", f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(out)


def _items(items: tuple[Item, ...], ids: Iterator[int]) -> Iterator[str]:
    facts: list[Fact] = []
    for item in (*items, None):  # the None sentinel flushes a trailing run of facts
        if isinstance(item, Fact):
            facts.append(item)
            continue
        if facts:
            # A run of facts reads as one aligned label/value block, not as separate rows.
            yield '<dl class="facts">'
            for f in facts:
                yield f"<dt>{_e(f.label)}</dt><dd>{_e(f.value)}</dd>"
            yield "</dl>"
            facts = []
        if item is None:
            break
        if isinstance(item, Paragraph):
            yield _paragraph(item)
        elif isinstance(item, Notice):
            yield _notice(item)
        elif isinstance(item, Table):
            yield from _table(item, f"t{next(ids)}")
        elif isinstance(item, Figure):
            yield _figure(item)
        else:
            raise TypeError(f"cannot draw a {type(item).__name__} in HTML")


def _paragraph(p: Paragraph) -> str:
    # Lines indented by two spaces are aligned by hand (little tables, trees): only <pre> keeps that alignment.
    if any(line.startswith("  ") for line in p.lines):
        return "<pre>" + "\n".join(_e(line) for line in p.lines) + "</pre>"
    return "<p>" + "<br>\n".join(_e(line) for line in p.lines) + "</p>"


_NOTICE_LEAD = {Level.WARNING: "<strong>Warning:</strong> ", Level.GOOD: "<strong>&#10003;</strong> ", Level.INFO: ""}


def _notice(n: Notice) -> str:
    level = Level(n.level)
    return f'<div class="notice notice-{level.value}" role="note">{_NOTICE_LEAD[level]}{_e(n.text)}</div>'


def _is_num(x: Cell) -> bool:
    # numbers.Real also admits numpy scalars, which builders may hand over; bool is a flag, not a quantity.
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _blank(x: Cell) -> bool:
    return x is None or x == "" or (_is_num(x) and math.isnan(float(x)))


def _sorted_rows(t: Table) -> list[tuple[Cell, ...]]:
    """The rows in their first order, sorted here so the page is right before (or without) any JS."""
    rows = list(t.rows)
    if t.sort_by is None or t.sort_by not in t.columns:
        return rows
    i = t.columns.index(t.sort_by)
    filled = [r for r in rows if not _blank(r[i])]
    # Numbers before text, as the JS does; reverse=True keeps ties in their given order (the sort stays stable).
    filled.sort(key=lambda r: (0, float(r[i]), "") if _is_num(r[i]) else (1, 0.0, str(r[i])), reverse=t.descending)
    return filled + [r for r in rows if _blank(r[i])]  # blanks last in either direction


def _cell(x: Cell, digits: int) -> str:
    if _blank(x):
        return "<td></td>"
    if not _is_num(x):
        return f"<td>{_e(x)}</td>"
    if isinstance(x, numbers.Integral):
        text = value = str(int(x))
    else:
        v = float(x)  # float() first: repr of a numpy scalar is "np.float64(...)", which JS cannot read
        text = f"{v:.{digits}g}"
        value = repr(v) if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")
    return f'<td class="num" data-value="{value}">{_e(text)}</td>'


def _table(t: Table, table_id: str) -> Iterator[str]:
    if t.title:
        yield f"<h3>{_e(t.title)}</h3>"
    if t.csv is not None:
        yield f'<p class="csv">same rows in <code>{_e(Path(t.csv).name)}</code></p>'
    if len(t.rows) > FILTER_MIN_ROWS:
        yield (f'<input class="filter" type="search" data-table="{table_id}" '
               f'placeholder="Filter {len(t.rows)} rows" aria-label="Filter rows">')
    # A column whose filled cells are all numbers gets a right-aligned header, over its right-aligned cells.
    numeric = [all(_is_num(r[i]) for r in t.rows if not _blank(r[i])) and any(not _blank(r[i]) for r in t.rows)
               for i in range(len(t.columns))]
    yield f'<div class="table-wrap"><table class="sortable" id="{table_id}">'
    yield "<thead><tr>"
    for i, name in enumerate(t.columns):
        cls = ' class="num"' if numeric[i] else ""
        sort = ""
        if name == t.sort_by:
            sort = f' aria-sort="{"descending" if t.descending else "ascending"}"'
        yield f'<th{cls}{sort} tabindex="0" title="Sort by {_e(name)}">{_e(name)}</th>'
    yield "</tr></thead>"
    yield "<tbody>"
    for row in _sorted_rows(t):
        yield "<tr>" + "".join(_cell(x, t.digits) for x in row) + "</tr>"
    yield "</tbody></table></div>"


def _figure(f: Figure) -> str:
    caption = f"<figcaption>{_e(f.caption)}</figcaption>" if f.caption else ""
    try:
        data = Path(f.path).read_bytes()
    except OSError:
        # A lost PNG must not cost the user the rest of the report.
        return f'<figure class="missing">{caption}<p>(figure missing: {_e(f.path)})</p></figure>'
    b64 = base64.b64encode(data).decode("ascii")
    alt = _e(f.caption or Path(f.path).name)
    return f'<figure><img src="data:image/png;base64,{b64}" alt="{alt}">{caption}</figure>'
