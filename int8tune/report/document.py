"""What a report says, independent of how it is drawn: a Document of Sections holding facts, paragraphs, notices,
tables and figures. Each command's result is turned into one Document (report/build_*.py); renderers draw it as
report.log text (report/text.py) or a single-file HTML page (report/html.py). Nothing here formats numbers for a
medium: table cells keep their numbers, and each renderer formats them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Union


class Level(str, Enum):
    """How a notice is shown: INFO plain, GOOD a passed check, WARNING something the user should act on."""

    INFO = "info"
    GOOD = "good"
    WARNING = "warning"


@dataclass(frozen=True)
class Fact:
    """One labelled figure or setting: `label: value`."""

    label: str
    value: str


@dataclass(frozen=True)
class Paragraph:
    """Free text; each entry of `lines` is one line in report.log."""

    lines: tuple[str, ...]

    @staticmethod
    def of(*lines: str) -> "Paragraph":
        return Paragraph(tuple(lines))


@dataclass(frozen=True)
class Notice:
    """A sentence that must stand out (a warning, a passed verification)."""

    level: Level
    text: str


Cell = Union[str, int, float, None]


@dataclass(frozen=True)
class Table:
    """Rows of cells under named columns. Numbers stay numbers (floats are drawn with `digits` significant
    digits); None is an empty cell. `sort_by` is the column the HTML page sorts by first (None: as given)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    title: str = ""
    digits: int = 6
    sort_by: str | None = None
    descending: bool = True
    csv: Path | None = None  # the CSV file that holds the same rows, when one is written

    def __post_init__(self) -> None:
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"table {self.title!r}: a row has {len(r)} cells for {len(self.columns)} columns")


@dataclass(frozen=True)
class Figure:
    """A PNG written beside the report; the HTML page embeds it."""

    path: Path
    caption: str = ""


Item = Union[Fact, Paragraph, Notice, Table, Figure]


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Item, ...] = ()


@dataclass(frozen=True)
class Document:
    """A whole report: a title (`int8tune auto: deploy.prototxt + weights.caffemodel`), sections in reading order,
    and the files the run wrote."""

    title: str
    sections: tuple[Section, ...] = ()
    files: tuple[Path, ...] = ()
    summary: tuple[Item, ...] = field(default=())  # shown first, above the sections (the verdict, what was delivered)
