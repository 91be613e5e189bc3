"""Evaluating the int8 model without recomputing what a candidate threshold cannot change.

Changing the threshold of blob v only changes the nodes that depend on the graph input `threshold:v` (its fake
quantizer, the bias rescaling of the layers reading it, and everything downstream). For one tuned blob:

1. the *frontier* (tensors computed outside that dependent set but read inside it) is computed once per blob
   with the current table and kept in memory per batch. Tensors already known under the current table (`known`:
   what the tuning of the previous blob left behind, its frontier and the model outputs) are not recomputed; the
   rest comes from a *bridge* session holding only the nodes between the known tensors and the missing ones
   (for consecutive blobs of a chain, one or two layers), or from the net input when nothing is known;
2. a *suffix* graph made of the dependent nodes only, whose inputs are the frontier tensors and the thresholds,
   gets one onnxruntime session;
3. every candidate threshold is then one run of the suffix graph: a new feed, no new session.
Requested outputs that do not depend on v come from step 1 unchanged.

Both steps run batch by batch on an executor (tasks.frontier, tasks.suffix_outputs): the frontier stays where it
was computed (kept by the executor: this process, or the object store of a Ray node) and each candidate sends only
its threshold feeds, getting back the requested outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..executors import Executor, LocalExecutor
from ..quant.simulate import Int8Graph
from ..quant.table import CalibrationTable
from ..runtime import Engine, GraphSession, needed_for
from .tasks import FrontierJob, SuffixJob, frontier, suffix_outputs


def dependents(model: onnx.ModelProto, sources) -> list[onnx.NodeProto]:
    """Nodes that (transitively) read any of `sources` (a name or names), in graph order."""
    tainted = {sources} if isinstance(sources, str) else set(sources)
    out = []
    for node in model.graph.node:  # graph order is topological
        if any(i in tainted for i in node.input):
            out.append(node)
            tainted.update(node.output)
    return out


@dataclass
class Suffix:
    value: str
    session: GraphSession
    frontier: list[str]
    threshold_inputs: list[str]
    produced: set[str]  # tensors the suffix computes


def build_suffix(graph: Int8Graph, value: str, outputs: list[str], threads: int,
                 table: CalibrationTable) -> Suffix | None:
    """The suffix session for tuning `value`'s threshold, or None if `value` has no threshold input. Every other
    blob's threshold is frozen into the suffix as a constant (from `table`)."""
    sources = graph.feed_inputs.get(value)
    model = graph.frozen(table, keep=(value,))
    if not sources:
        return None
    nodes = needed_for(dependents(model, sources), set(outputs))
    produced = {o for n in nodes for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    needed: list[str] = []
    for n in nodes:
        for i in n.input:
            if i and i not in produced and i not in needed:
                needed.append(i)
    fed = {n for names in graph.feed_inputs.values() for n in names}
    frontier = [i for i in needed if i not in inits and i not in fed]
    thresholds = [i for i in needed if i in fed and i not in inits]
    wanted = [o for o in outputs if o in produced]
    g = helper.make_graph(
        nodes, f"suffix_{value}",
        inputs=[helper.make_tensor_value_info(f, graph.elem_type(f), None) for f in frontier]
        + [graph_inputs[t] for t in thresholds],
        outputs=[helper.make_tensor_value_info(o, graph.elem_type(o), None) for o in wanted],
        initializer=[inits[i] for i in needed if i in inits],
    )
    m = helper.make_model(g, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return Suffix(value, GraphSession(m, threads), frontier, thresholds, produced)


def build_prefix(model: onnx.ModelProto, tensors: list[str], threads: int,
                 available: frozenset[str] = frozenset(), elem_type=lambda _: TensorProto.FLOAT
                 ) -> GraphSession:
    """A session computing only `tensors` (the nodes they need), from the graph's inputs and the tensors in
    `available` (fed as inputs: the bridge from known tensors). `elem_type`: a tensor's ONNX element type."""
    nodes = needed_for(list(model.graph.node), set(tensors), available)
    used = {i for n in nodes for i in n.input}
    graph_inputs = {i.name for i in model.graph.input}
    fed = [a for a in sorted(available) if a in used and a not in graph_inputs]
    g = helper.make_graph(
        nodes, "prefix",
        inputs=[i for i in model.graph.input if i.name in used]
        + [helper.make_tensor_value_info(a, elem_type(a), None) for a in fed],
        outputs=[helper.make_tensor_value_info(t, elem_type(t), None) for t in tensors],
        initializer=[t for t in model.graph.initializer if t.name in used],
    )
    m = helper.make_model(g, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return GraphSession(m, threads)


@dataclass
class Carried:
    """Tensors of the int8 model under one table, per batch, that the next blob starts from: the model outputs
    held here (`local`), and the last tuned blob's base left where it was computed (`remote`: executor handles of
    dicts holding `remote_names`; None when there is none)."""

    local: list[dict[str, np.ndarray]]
    remote: list | None = None
    remote_names: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        """The tensors known for every batch."""
        local = frozenset.intersection(*(frozenset(d) for d in self.local)) if self.local else frozenset()
        return local | self.remote_names

    def parts(self, i: int) -> tuple:
        """Batch `i`'s tensors, as the frontier task merges them (the local ones win, as they are the newer)."""
        return (self.local[i],) if self.remote is None else (self.remote[i], self.local[i])

    def tensors(self, names, executor: Executor) -> list[dict[str, np.ndarray]]:
        """Per batch, the `names` (all known): fetched from where they were kept only if some are not held here."""
        if all(n in d for d in self.local for n in names):
            return [{n: d[n] for n in names} for d in self.local]
        remote = executor.get(self.remote)
        return [{n: d[n] if n in d else r[n] for n in names} for d, r in zip(self.local, remote)]


class PartialEvaluator:
    """Int8 outputs for many candidate thresholds of one blob, reusing everything upstream of it."""

    def __init__(self, graph: Int8Graph, engine: Engine, batches: list, value: str,
                 outputs: list[str], table: CalibrationTable, threads: int,
                 known: Carried | list[dict[str, np.ndarray]] | None = None,
                 executor: Executor | None = None) -> None:
        """`known`: per batch, tensors already computed under `table` (nothing is recomputed for them). `batches`:
        arrays, or the executor's handles of them."""
        self.graph = graph
        self.outputs = outputs
        self.executor = executor or LocalExecutor()
        if isinstance(known, list):
            known = Carried(known)
        self.suffix = build_suffix(graph, value, outputs, threads, table)
        net_inputs = set(graph.converted.net.inputs)
        fetch = list(dict.fromkeys([o for o in outputs if self.suffix is None or o not in self.suffix.produced]
                                   + (self.suffix.frontier if self.suffix else [])))
        fetch = [f for f in fetch if f not in net_inputs]
        if known is not None and len(known.local) != len(batches):
            raise ValueError(f"known tensors for {len(known.local)} batches, {len(batches)} batches given")
        available = known.names if known else frozenset()
        missing = [f for f in fetch if f not in available]
        # Once per blob, with the current table: the frontier and the outputs the blob cannot change, from a
        # session holding only the nodes they need (nothing downstream is run), started at the known tensors.
        prefix = build_prefix(graph.frozen(table), missing, threads, available, graph.elem_type) if missing else None
        prefix_inputs = tuple(i.name for i in prefix.model.graph.input) if prefix else ()
        self.bridged = bool(prefix and available & set(prefix_inputs))
        self.computed = missing
        job = FrontierJob(dict(engine.net.inputs), tuple(fetch), available, tuple(missing),
                          self.executor.share(prefix) if prefix else None, prefix_inputs)
        items = [(batch, *(known.parts(i) if known else ())) for i, batch in enumerate(batches)]
        # handles: the base stays where it was computed, and each candidate's suffix run reads it there
        self.base = self.executor.map(frontier, items, shared=job, keep=True)
        self.base_names = frozenset(fetch) | net_inputs
        self.known_outputs = known.tensors([o for o in outputs if o in available], self.executor) if known else None
        if self.suffix is not None:
            self._suffix = self.executor.share(self.suffix.session)

    def evaluate(self, table: CalibrationTable, indices: list[int] | None = None) -> list[dict[str, np.ndarray]]:
        """The requested outputs per batch (or for the batches at `indices`) under `table` (only `value`'s
        threshold may differ from the base)."""
        bases = self.base if indices is None else [self.base[i] for i in indices]
        if self.suffix is None:
            return [{o: b[o] for o in self.outputs} for b in self.executor.get(bases)]
        feeds_all = self.graph.feeds(table)
        t_feeds = {t: feeds_all[t] for t in self.suffix.threshold_inputs}
        wanted = tuple(o for o in self.outputs if o in self.suffix.produced)
        # One run per batch: stacking all batches into one run was no faster (compute-bound) and made
        # onnxruntime's arena hold every image's activations at once.
        job = SuffixJob(self._suffix, tuple(self.suffix.frontier), t_feeds, wanted, tuple(self.outputs))
        return self.executor.map(suffix_outputs, [(base,) for base in bases], shared=job)
