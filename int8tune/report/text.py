"""report.log: a Document drawn as plain text, aligned for a terminal and for grep."""

from __future__ import annotations

import math

from .document import Cell, Document, Fact, Figure, Level, Notice, Paragraph, Section, Table

WIDE = 40  # text columns wider than this are not padded further


def render_text(doc: Document) -> str:
    lines = [doc.title]
    lines += _items(doc.summary)
    for section in doc.sections:
        lines += ["", f"{section.title}:" if section.title else ""] if section.title else [""]
        lines += _items(section.items, indent="  " if section.title else "")
    if doc.files:
        lines += ["", "files:"] + [f"  {p}" for p in doc.files]
    return "\n".join(lines).rstrip("\n") + "\n"


def _items(items, indent: str = "") -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, Fact):
            out.append(f"{indent}{item.label}: {item.value}")
        elif isinstance(item, Paragraph):
            out += [f"{indent}{line}" if line else "" for line in item.lines]
        elif isinstance(item, Notice):
            prefix = {Level.WARNING: "WARNING: ", Level.GOOD: "", Level.INFO: ""}[item.level]
            out.append(f"{indent}{prefix}{item.text}")
        elif isinstance(item, Table):
            out += _table(item, indent)
        elif isinstance(item, Figure):
            out.append(f"{indent}figure: {item.caption + ' ' if item.caption else ''}({item.path})")
        elif isinstance(item, Section):  # a subsection
            out += [f"{indent}{item.title}:"] + _items(item.items, indent + "  ")
    return out


def format_cell(value: Cell, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _table(table: Table, indent: str) -> list[str]:
    cells = [[format_cell(v, table.digits) for v in row] for row in table.rows]
    numeric = [all(isinstance(r[k], (int, float)) or r[k] is None for r in table.rows) and bool(table.rows)
               for k in range(len(table.columns))]
    widths = [min(max([len(c)] + [len(r[k]) for r in cells]), WIDE) for k, c in enumerate(table.columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return (indent + "  " + " ".join(parts)).rstrip()

    out = [f"{indent}{table.title}:"] if table.title else []
    out.append(line(list(table.columns)))
    out += [line(r) for r in cells]
    if table.csv is not None:
        out.append(f"{indent}  (all rows: {table.csv})")
    return out
