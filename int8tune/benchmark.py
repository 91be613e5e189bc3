"""Latency and throughput of the fp32 model and of its exported int8 QDQ model in onnxruntime.

Both run with onnxruntime's default (full) graph optimisation, so that the QDQ model uses int8 kernels; each
session is timed on its own (interleaving sessions on a small machine distorts both), median of `repeat` runs
after `warmup` runs, at each batch size. Anchors: OpenVINO's benchmark_app, Neural Compressor's performance
objective.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .runtime import session_options


@dataclass
class Timing:
    model: str
    batch: int
    median_ms: float

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.median_ms


def time_model(name: str, model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...], batch: int,
               repeat: int = 30, warmup: int = 5, threads: int = 2, seed: int = 0, x64_exact: bool = False) -> Timing:
    """`x64_exact`: with session option session.x64quantprecision=1, onnxruntime's exact U8U8 kernels on x86
    (what an AVX2 host needs for a table whose weights can saturate its int16 pair sums)."""
    options = session_options(threads)
    if x64_exact:
        options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).random((batch, *input_shape[1:]), dtype=np.float32)
    outputs = [o.name for o in session.get_outputs()]
    for _ in range(warmup):
        session.run(outputs, {input_name: x})
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(outputs, {input_name: x})
        samples.append(time.perf_counter() - t0)
    return Timing(name, batch, 1000.0 * statistics.median(samples))


@dataclass(frozen=True)
class SpeedRow:
    """fp32 and the int8 file at one batch size; `int8_x64_ms` with onnxruntime's exact U8U8 kernels."""

    batch: int
    fp32_ms: float
    int8_ms: float
    int8_x64_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def speedup_x64(self) -> float:
        return self.fp32_ms / self.int8_x64_ms


@dataclass(frozen=True)
class BenchmarkResult:
    """What `benchmark` measured: the host, what onnxruntime runs (census lines), the timings, and the deployed
    check's lines when one ran."""

    proto: str
    host: str
    threads: int
    repeat: int
    target: str | None  # the table's target, when the int8 model was exported from a table
    census: tuple[str, ...]
    rows: tuple[SpeedRow, ...]
    deployed_check: tuple[str, ...] = ()
