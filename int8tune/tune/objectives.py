"""Tie-break objectives (Neural Compressor's `objective`): among candidate tables that all meet the accuracy
goal, the one that is best at something else. Each is a cost, lower is better, computed on the table's QDQ export:

- `model_size`: bytes of the weights as the exported model stores them (int8 for int8 layers, fp32 otherwise);
- `performance`: measured latency (ms, batch 1, median) of the exported QDQ model in onnxruntime;
- `memory`: peak resident memory (MB) of a fresh process that loads the QDQ model and runs one batch.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from onnx import numpy_helper

from ..convert.converter import ConvertedModel
from ..quant.qdq import export_qdq
from ..quant.table import CalibrationTable
from ..registry import Registry

Objective = Callable[[CalibrationTable, ConvertedModel], float]
OBJECTIVES: Registry[Objective] = Registry("tie-break objective")


@OBJECTIVES.register("model_size")
def model_size(table: CalibrationTable, converted: ConvertedModel) -> float:
    model, _ = export_qdq(converted, table)
    return float(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


@OBJECTIVES.register("performance")
def performance(table: CalibrationTable, converted: ConvertedModel) -> float:
    from ..benchmark import time_model

    model, _ = export_qdq(converted, table)
    name, shape = next(iter(converted.net.inputs.items()))
    return time_model("int8", model, name, (1, *shape[1:]), 1, repeat=20, warmup=3).median_ms


_MEMORY_PROBE = """
import resource, sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [1] + [int(d) for d in sys.argv[2].split(",")]
s.run(None, {i.name: np.zeros(shape, np.float32)})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


@OBJECTIVES.register("memory")
def memory(table: CalibrationTable, converted: ConvertedModel) -> float:
    model, _ = export_qdq(converted, table)
    shape = next(iter(converted.net.inputs.values()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), ",".join(map(str, shape[1:]))],
                             capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pick(candidates: list[tuple[CalibrationTable, float]], objective: str, converted: ConvertedModel
         ) -> tuple[CalibrationTable, float, dict[int, float]]:
    """The goal-meeting candidate with the lowest cost (ties: the first); its score; every cost by index."""
    cost_of = OBJECTIVES.get(objective)
    costs = {k: cost_of(t, converted) for k, (t, _) in enumerate(candidates)}
    best = min(costs, key=lambda k: (costs[k], k))
    return candidates[best][0], candidates[best][1], costs

