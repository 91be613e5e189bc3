"""Executing a converted model: onnxruntime for the graph, numpy for the post steps.

Any value of the net can be requested. Requested values become graph outputs of the session, so
onnxruntime's graph optimisations keep them (it never fuses away a node whose output is a graph output).
Sessions are cached per set of exposed values: asking again for the same blobs reuses the same session,
and `Engine(expose_all=True)` makes one session that can return every blob.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .convert.converter import ConvertedModel
from .errors import ConfigError, DataError
from .executors import Shared, WorkerContext
from .log import logger


def session_options(threads: int | None = None, optimize: bool = True, simulation: bool = False,
                    arena: bool = True) -> ort.SessionOptions:
    """`simulation`: the graph simulates int8 with QuantizeLinear/DequantizeLinear pairs that must compute exactly
    what they say. onnxruntime's QDQ rewrites are off for it, and so is its highest level (ORT_ENABLE_ALL): the
    NCHWc convolutions sum in another order, and an fp32 difference in the last bit moves a value across a
    rounding boundary of the next quantizer; over yolov3_nano_voc such flips add up to 2 % of the output range
    between two sessions of the same table. At ORT_ENABLE_EXTENDED every session of a table (whole graph, prefix,
    suffix, fed or frozen thresholds) uses the same kernels and gives the same numbers, so the tuner's decisions
    do not depend on how a candidate was evaluated (tests/test_partial.py pins this).

    `arena`: onnxruntime's memory arena, on in a default session. The tool's own sessions (Engine, GraphSession)
    run without it (TOOL_ARENA)."""
    opts = ort.SessionOptions()
    if simulation:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif simulation:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    else:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # onnxruntime's own warnings (e.g. unused initializers) are noise here
    opts.enable_cpu_mem_arena = arena
    return opts


# The tool's own sessions run without onnxruntime's memory arena. An arena keeps the largest batch its session ever
# ran, for as long as the session lives, and a run keeps several alive (the fp32 references, the int8 model, the
# statistics, a calibration's measurement beside the next one's). Measured on the AMD EPYC AVX2 host, alternating
# runs (A B A B), 2026-12-07: squeezenet_v1.0 calibrate on 100 images peaked at 2568 / 2640 MB with arenas and
# 1273 / 1167 MB without, in 77.2 / 81.2 s against 83.0 / 84.8 s (6 % slower); main.sh on yolov3_nano_voc (8
# photos, --restarts 2) 918 / 894 MB against 500 / 505 MB, 124.2 / 148.5 s against 146.1 / 128.4 s (level).
TOOL_ARENA = False

# Graph rewrites that fold a constant multiplier or addend into a convolution's or a matrix product's weights. The
# simulation keeps integer-valued weights and multiplies the exact integer sum by the requantization multiplier
# afterwards (quant/simulate.py, onnxruntime's integer kernels); folding that multiplier into the weights makes
# them non-integers and moves results across rounding boundaries (measured: SqueezeNet conv1, steps 4.500005
# computed as 4.499994).
SIMULATION_DISABLED_OPTIMIZERS = ["ConvMulFusion", "ConvAddFusion", "ConvBNFusion", "MatMulScaleFusion",
                                  "MatMulAddFusion", "GemmTransposeFusion"]


def new_session(model: onnx.ModelProto, options: ort.SessionOptions, simulation: bool) -> ort.InferenceSession:
    """An onnxruntime CPU session; simulation sessions without the rewrites above."""
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=SIMULATION_DISABLED_OPTIMIZERS if simulation else None)


def needed_for(nodes: list[onnx.NodeProto], outputs: set[str],
               available: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
    """The nodes among `nodes` (graph order) that contribute to `outputs`, not walking past the tensors in
    `available` (they are inputs of the cut): the graph cuts of the tuner's partial evaluation (tune/partial.py)
    and of the bias correction's carried prefix (quant/bias_correction.py)."""
    needed = set(outputs) - available
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i not in available)
    return keep[::-1]


def with_outputs(model: onnx.ModelProto, values: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are its own plus `values` (in that order, no duplicates)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for v in values:
        if v not in present:
            out.graph.output.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, None))
            present.add(v)
    return out


def input_feeds(inputs: Mapping[str, Sequence[int]], batch: np.ndarray | Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """The graph's input feeds for `batch` (one array for a one-input net, else a dict), checked against the net's
    `inputs` (name -> declared shape): float32, contiguous, the declared shape but for the batch size."""
    if isinstance(batch, np.ndarray):
        if len(inputs) != 1:
            raise DataError(f"the net has {len(inputs)} inputs ({', '.join(inputs)}); pass a dict of arrays")
        batch = {next(iter(inputs)): batch}
    feeds = {}
    for name, shape in inputs.items():
        if name not in batch:
            raise DataError(f"no array given for input {name!r}")
        array = np.ascontiguousarray(batch[name], dtype=np.float32)
        if array.ndim != len(shape) or tuple(array.shape[1:]) != tuple(shape[1:]):
            raise DataError(f"input {name!r} has shape {array.shape}; the net expects (N, "
                            f"{', '.join(map(str, shape[1:]))})")
        feeds[name] = array
    return feeds


class Engine:
    """Runs one converted model. `run(inputs, outputs)` returns {value: array} for the requested values.

    An Engine pickles as what a worker needs to run the graph again (executors/): the ONNX model and the net's
    names, without its sessions, the Caffe layer parameters (protobuf messages of caffe.proto, which do not
    pickle; the weights are in the ONNX graph) and the numpy post steps (the driver runs those)."""

    MAX_SESSIONS = 4

    def __init__(self, converted: ConvertedModel, *, threads: int | None = None, expose_all: bool = False,
                 optimize: bool = True, simulation: bool = False) -> None:
        self.converted = converted
        self.net = converted.net
        self.threads = threads or _default_threads()
        self.optimize = optimize
        self.simulation = simulation
        self._sessions: dict[frozenset[str], ort.InferenceSession] = {}
        self._all = frozenset(converted.onnx_values) if expose_all else None
        self.input_names = list(self.net.inputs)

    # -- names ---------------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """A value name from a value, a user-visible blob (its final version) or a layer name (its first top)."""
        values = self.net.blob_of
        if name in values:
            return name
        for layer in self.net.layers:
            if layer.name == name:
                return layer.tops[0]
        close = difflib.get_close_matches(name, list(values) + [layer.name for layer in self.net.layers], n=5)
        raise ConfigError(f"{name!r} is neither a blob nor a layer of {self.net.proto_path or self.net.name}"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))

    # -- execution -----------------------------------------------------------------------------------
    def session_for(self, exposed: Iterable[str]) -> ort.InferenceSession:
        key = frozenset(exposed)
        if self._all is not None and key <= self._all:
            key = self._all
        if key not in self._sessions:
            if len(self._sessions) >= self.MAX_SESSIONS:  # bounded: each session holds a copy of the weights
                self._sessions.pop(next(iter(self._sessions)))
            model = with_outputs(self.converted.model, sorted(key, key=self._order))
            logger.debug("new onnxruntime session exposing %d values", len(key))
            self._sessions[key] = new_session(
                model, session_options(self.threads, self.optimize, self.simulation, TOOL_ARENA), self.simulation)
        return self._sessions[key]

    def _order(self, value: str) -> int:
        if not hasattr(self, "_order_map"):
            self._order_map = {v: i for i, v in enumerate(self.net.values())}
        return self._order_map.get(value, 1 << 30)

    def feeds(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return input_feeds(self.net.inputs, inputs)

    # -- shipping to workers ---------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """sha256 of the graph and of the session settings: equal digests, equal numbers. A worker keeps the
        sessions of a digest from task to task."""
        if getattr(self, "_digest", None) is None:
            h = hashlib.sha256(self.converted.model.SerializeToString())
            h.update(repr((self.threads, self.optimize, self.simulation, self._all is not None)).encode())
            self._digest = h.hexdigest()
        return self._digest

    def __getstate__(self) -> dict:
        net = self.net
        layers = [replace(layer, param=None, blobs=()) for layer in net.layers]
        converted = replace(self.converted, net=replace(net, layers=layers), records={}, post_steps=[])
        return {**self.__dict__, "converted": converted, "net": converted.net, "_sessions": {}}

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
            extra_feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Forward pass. `outputs` None means the net's outputs; names may be values, blobs or layers.
        `extra_feeds` go to graph inputs that are not net inputs (the int8 graph's thresholds)."""
        wanted = [self.resolve(o) for o in (outputs if outputs is not None else self.net.outputs)]
        onnx_wanted = [v for v in wanted if v not in self.converted.numpy_values]
        steps = self._steps_for(wanted)
        step_inputs = [v for s in steps for v in s.inputs if v not in self.converted.numpy_values]
        fetch = list(dict.fromkeys(onnx_wanted + step_inputs))
        session = self.session_for(fetch)
        feeds = self.feeds(inputs)
        if extra_feeds:
            feeds.update(extra_feeds)
        results = dict(zip(fetch, session.run(fetch, feeds)))
        for step in steps:
            produced = step.fn([results[v] for v in step.inputs])
            results.update(zip(step.outputs, produced))
        return {v: results[v] for v in wanted}

    def run_tensors(self, inputs: np.ndarray | Mapping[str, np.ndarray], tensors: Sequence[str],
                    extra_feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Any ONNX tensors by their graph names (internal ones included); no numpy post steps."""
        feeds = self.feeds(inputs)
        if extra_feeds:
            feeds.update(extra_feeds)
        fetch = list(dict.fromkeys(tensors))
        return dict(zip(fetch, self.session_for(fetch).run(fetch, feeds)))

    def _steps_for(self, wanted: Sequence[str]):
        """The post steps needed for the wanted numpy values (with the post steps they depend on)."""
        needed = {v for v in wanted if v in self.converted.numpy_values}
        chosen = []
        for step in reversed(self.converted.post_steps):
            if needed & set(step.outputs):
                chosen.append(step)
                needed.update(v for v in step.inputs if v in self.converted.numpy_values)
        return list(reversed(chosen))


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class GraphSession:
    """One onnxruntime session of a graph (the tuner's prefix and suffix graphs), made on first use. Pickles as the
    graph, so that a worker makes its own session of it."""

    def __init__(self, model: onnx.ModelProto, threads: int, simulation: bool = True) -> None:
        self.model = model
        self.threads = threads
        self.simulation = simulation
        self._session: ort.InferenceSession | None = None
        self._digest: str | None = None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = new_session(self.model, session_options(self.threads, simulation=self.simulation,
                                                                    arena=TOOL_ARENA), self.simulation)
        return self._session

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256(self.model.SerializeToString())
            h.update(repr((self.threads, self.simulation)).encode())
            self._digest = h.hexdigest()
        return self._digest

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(list(names), dict(feeds))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}


def on_worker(ctx: WorkerContext, shared: Shared):
    """The worker's copy of a shared Engine or GraphSession (or of a tuple of them), with the worker's threads: a
    Ray worker has one core, the local executor keeps the caller's --threads. (Thread counts change no number:
    every session of a graph computes the same bits at 1, 2 or 4 threads, measured on SqueezeNet and
    yolov3_nano_voc, fp32 and int8.) The worker's sessions are made after this, on first use."""
    obj = ctx.get(shared)
    if ctx.threads is not None:
        for o in (obj if isinstance(obj, tuple) else (obj,)):
            o.threads = ctx.threads
    return obj
