"""Which thresholds a table's int8 model uses, and in what order they are tuned: each int8 layer's inputs in net
order (topological), then its output's own threshold where no int8 layer reads that blob (placement.py). A blob
read by several int8 layers is one threshold, tuned once."""

from __future__ import annotations

from typing import Iterable

from ..quant.placement import Placement
from ..quant.table import CalibrationTable


def readers(table: CalibrationTable, value: str) -> list[str]:
    """The int8 layers reading `value`."""
    return [e.layer for e in table.quantized_layers() if value in (e.input_value, *e.extra_inputs)]


def writers(table: CalibrationTable, placement: Placement | None, value: str) -> list[str]:
    """The int8 layers whose output point uses `value`'s threshold (a blob no int8 layer reads)."""
    return [layer for layer, grid in placement.output_grid.items() if grid == value] if placement else []


def blobs_in_order(table: CalibrationTable, placement: Placement | None,
                   skip_layers: Iterable[str] = ()) -> list[str]:
    """Every threshold the int8 model uses, in net order: each int8 layer's inputs, then its output's own
    threshold where it has one (no int8 layer reads that blob). The layers of `skip_layers` are left out."""
    skip = set(skip_layers)
    read = {v for e in table.layers.values() for v in (e.input_value, *e.extra_inputs)}
    order: list[str] = []
    for e in table.quantized_layers():
        if e.layer in skip:
            continue
        own = placement.output_grid.get(e.layer) if placement is not None else None
        for v in (e.input_value, *e.extra_inputs, *([own] if own and own not in read else [])):
            if v not in order:
                order.append(v)
    return order
