"""The package's folders show the flow (read -> convert -> calibrate -> simulate -> tune -> export -> report), and
imports only go down it: a module imports from its own layer or a lower one, never from a higher one, and no
two parts of the package import each other (checked on the source, function-level imports included)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "int8tune"

# Lowest first. A unit is a subpackage (caffe, quant, ...) or a top-level module (config, workflow, ...).
LAYERS = [
    {"__init__", "__version__", "errors", "log", "registry", "outputs", "hostcpu", "progress", "image_params", "data",
     "preprocess", "yolo", "coco", "plots", "proto", "example"},
    {"executors"},  # where the per-batch work runs: this process or a Ray cluster (no model knowledge)
    {"metrics"},  # difference metrics: arithmetic on outputs
    {"caffe"},  # read
    {"convert"},  # Caffe -> ONNX
    {"runtime", "benchmark"},  # onnxruntime sessions
    {"quant"},  # calibrate, simulate, export
    {"config"},  # typed settings (validates against quant's enums)
    {"tune"},  # measure and search thresholds
    {"pipeline", "check"},  # the runs, returning results (check: the fp32 conversion against OpenCV)
    {"report"},  # rendering results
    {"workflow"},  # main.sh's loop over pipeline + report
    {"commands", "api", "cli"},  # the front ends
]
LAYER_OF = {unit: k for k, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        package = ".".join(parts if f.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")
        module = ".".join(parts)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("int8tune"):
                continue
            for t in ([target] if node.module else [f"{target}.{a.name}" for a in node.names]):
                if _unit(t) != _unit(module):
                    edges[_unit(module)].add(_unit(t))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit("int8tune." + ".".join(f.relative_to(ROOT).with_suffix("").parts)) for f in ROOT.rglob("*.py")}
    assert sorted(units - set(LAYER_OF)) == []


def test_imports_only_go_down_the_flow():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if LAYER_OF.get(b, -1) > LAYER_OF.get(a, -1)]
    assert upward == []


def test_no_two_parts_import_each_other():
    graph = import_graph()
    cycles = [f"{a} <-> {b}" for a, targets in graph.items() for b in targets if a in graph.get(b, ()) and a < b]
    assert cycles == []
