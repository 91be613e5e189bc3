"""What onnxruntime actually runs: a census of the optimised graph of a (QDQ) model.

The model is loaded in an onnxruntime CPU session at a given graph optimisation level (default ORT_ENABLE_ALL, as
users deploy), the optimised graph is written with `SessionOptions.optimized_model_filepath`, read back and every
node classified:

- int8 kernels by kind (`INT8_KINDS`): conv, matmul, concat, add, pool, resize, other int8. MaxPool (plain,
  NCHWc or NhwcMaxPool), Resize/Upsample and plain Concat count as int8 only when their data input is uint8/int8.
  The element type of every value is read from the optimised graph (graph inputs, value_info, initializers) or,
  where onnxruntime wrote none, derived from the producer: QuantizeLinear gives its zero point's type, QLinear*
  kernels their output zero point's type, DequantizeLinear float, data movement and MaxPool/Resize keep their
  input's type.
- float islands: each float compute op (data movement excluded: `DATA_MOVEMENT`) in a graph that has int8 parts,
  with why it runs in float: sandwiched between a DequantizeLinear and a QuantizeLinear, at a float end of the
  graph (after the last DQ, before the first Q), or a convolution/matmul that reads dequantized data but got no
  int8 kernel. A float-only model has no islands.
- the QuantizeLinear/DequantizeLinear nodes that remain.
"""

from __future__ import annotations

import collections
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto

INT8_KINDS = ("conv", "matmul", "concat", "add", "pool", "resize", "other int8")

CONV_INT8 = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv", "QLinearConvTranspose"})
MATMUL_INT8 = frozenset({"QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul"})
ADD_INT8 = frozenset({"QLinearAdd", "QLinearMul"})
POOL_INT8 = frozenset({"QLinearAveragePool", "QLinearGlobalAveragePool"})
POOL_ON_INT8 = frozenset({"MaxPool", "NhwcMaxPool", "GlobalMaxPool"})  # int8 when their input is (u)int8
RESIZE_ON_INT8 = frozenset({"Resize", "Upsample"})
OTHER_INT8 = frozenset({"QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean",
                        "QAttention", "QEmbedLayerNormalization", "QLinearAveragePoolNhwc"})
QUANTIZE = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
DEQUANTIZE = frozenset({"DequantizeLinear"})
DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Flatten", "Identity", "ReorderInput", "ReorderOutput", "Squeeze",
                           "Unsqueeze", "Shape", "Constant"})
FLOAT_CONV = frozenset({"Conv", "FusedConv", "NchwcConv", "ConvTranspose"})
FLOAT_MATMUL = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm"})

BETWEEN = "between DequantizeLinear and QuantizeLinear"
GRAPH_OUTPUT = "float output of the graph: after the last DequantizeLinear"
GRAPH_INPUT = "float input of the graph: before the first QuantizeLinear"
FLOAT_CONV_REASON = "float conv: no int8 kernel"
FLOAT_MATMUL_REASON = "float matmul: no int8 kernel"
DETACHED = "float branch with no int8 neighbour"
_SHORT = {BETWEEN: "between DQ and Q", GRAPH_OUTPUT: "(graph output)", GRAPH_INPUT: "(graph input)",
          FLOAT_CONV_REASON: "(float conv: no int8 kernel)", FLOAT_MATMUL_REASON: "(float matmul: no int8 kernel)",
          DETACHED: "(float branch, no int8 neighbour)"}

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
_INT8 = frozenset({TensorProto.UINT8, TensorProto.INT8})
# the input whose element type is the output's: the output zero point of the QLinear kernels
_OUTPUT_ZERO_POINT = {"QLinearConv": 7, "QLinearMatMul": 7, "QLinearAdd": 7, "QLinearMul": 7, "QGemm": 8,
                      "QLinearConcat": 1, "QLinearAveragePool": 4, "QLinearGlobalAveragePool": 4,
                      "QLinearSigmoid": 4, "QLinearLeakyRelu": 4, "QLinearSoftmax": 4, "QLinearReduceMean": 4,
                      "QLinearWhere": 8, "QLinearConvTranspose": 7, "NhwcQLinearConv": 7}
_COPIES = frozenset({"Slice", "Split", "Pad", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"})
_KEEPS_TYPE = (DATA_MOVEMENT - {"Shape"}) | POOL_ON_INT8 | RESIZE_ON_INT8 | _COPIES | {"Concat", "Relu", "Clip", "Max",
                                                                                   "Min"}


@dataclass(frozen=True)
class FloatIsland:
    node: str
    op: str
    reason: str
    # for a float convolution/matmul: what the optimised graph shows kept it from an int8 kernel (_why_float_kernel)
    detail: str = ""


@dataclass(frozen=True)
class Census:
    ops: dict[str, int]
    int8: dict[str, int]
    float_islands: list[FloatIsland] = field(default_factory=list)
    quantize: int = 0
    dequantize: int = 0

    @property
    def int8_kernels(self) -> int:
        return sum(self.int8.values())


def optimised_graph(model: onnx.ModelProto, *, level="all", x64_exact: bool = False,
                    threads: int = 1) -> onnx.ModelProto:
    """The graph an onnxruntime CPU session runs for `model` (written by the session itself)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level] if isinstance(level, str) else level
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if x64_exact:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimised.onnx"
        opts.optimized_model_filepath = str(path)
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def census(model: onnx.ModelProto, *, level="all", x64_exact: bool = False, threads: int = 1) -> Census:
    """Census of what onnxruntime runs for `model` at optimisation `level` ("all", "extended", "basic", "disable"
    or an ort.GraphOptimizationLevel); `x64_exact` sets session.x64quantprecision=1."""
    return census_of_graph(optimised_graph(model, level=level, x64_exact=x64_exact, threads=threads))


def census_of_graph(optimised: onnx.ModelProto) -> Census:
    """Census of an already optimised graph (no onnxruntime session)."""
    g = optimised.graph
    nodes = _topological(list(g.node))
    types = _element_types(g, nodes)
    int8 = dict.fromkeys(INT8_KINDS, 0)
    kind_of: dict[int, str | None] = {}
    for i, n in enumerate(nodes):
        kind_of[i] = _int8_kind(n, types)
        if kind_of[i]:
            int8[kind_of[i]] += 1
    ops = collections.Counter(n.op_type for n in nodes)
    quantize = sum(ops[o] for o in QUANTIZE)
    dequantize = sum(ops[o] for o in DEQUANTIZE)
    islands = []
    if quantize or dequantize or any(int8.values()):
        islands = _float_islands(g, nodes, types, kind_of)
    return Census(ops=dict(ops), int8=int8, float_islands=islands, quantize=quantize, dequantize=dequantize)


MAX_NAMED_FLOAT_KERNELS = 10


def render_census(c: Census, width: int = 110) -> list[str]:
    """Short report lines: int8 kernels by kind, the float islands grouped by op and reason, then each convolution
    or matmul that runs in float by name with why (the first MAX_NAMED_FLOAT_KERNELS), Q/DQ left."""
    kinds = ", ".join(f"{n} {k}" for k, n in c.int8.items() if n)
    lines = [f"int8 kernels: {kinds or 'none'}"]
    groups: dict[tuple[str, str], int] = {}
    for island in c.float_islands:
        groups[(island.op, island.reason)] = groups.get((island.op, island.reason), 0) + 1
    parts = []
    for (op, reason), n in groups.items():
        short = _SHORT.get(reason, f"({reason})")
        parts.append(f"{n} {op} {short}" if n > 1 else f"{op} {short}")
    lines.append("float: " + (", ".join(parts) if parts else "none between or around the int8 parts"))
    kernels = [i for i in c.float_islands if i.op in FLOAT_CONV | FLOAT_MATMUL]
    lines += [f"  in float: {i.node} ({i.detail or i.reason})" for i in kernels[:MAX_NAMED_FLOAT_KERNELS]]
    if len(kernels) > MAX_NAMED_FLOAT_KERNELS:
        lines.append(f"  ... and {len(kernels) - MAX_NAMED_FLOAT_KERNELS} more")
    moves = ", ".join(f"{c.ops[o]} {o}" for o in sorted(DATA_MOVEMENT) if c.ops.get(o))
    lines.append(f"QuantizeLinear {c.quantize}, DequantizeLinear {c.dequantize}; data movement: {moves or 'none'}; "
                 f"{sum(c.ops.values())} nodes")
    wrapped = []
    for line in lines:
        wrapped += textwrap.wrap(line, width=width, subsequent_indent="    ", break_on_hyphens=False) or [line]
    return wrapped


def _topological(nodes: list) -> list:
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{produced[x] for x in n.input if x in produced and produced[x] != i} for i, n in enumerate(nodes)]
    users = collections.defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    missing = [len(d) for d in deps]
    ready = collections.deque(i for i, m in enumerate(missing) if m == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                ready.append(u)
    seen = set(order)
    order += [i for i in range(len(nodes)) if i not in seen]  # a cycle (never in a valid graph): keep file order
    return [nodes[i] for i in order]


def _element_types(g, nodes) -> dict[str, int]:
    types: dict[str, int] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type.elem_type
        if t:
            types[v.name] = t
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in nodes:
        if not n.output or not n.output[0]:
            continue
        out = n.output[0]
        derived = _derived_type(n, types)
        for o in n.output:
            if o and o not in types and derived:
                types[o] = derived
        if out not in types:
            types[out] = TensorProto.FLOAT
    return types


def _attr(n, name, default=None):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _derived_type(n, types) -> int | None:
    op = n.op_type
    inp = list(n.input)
    if op in QUANTIZE:
        if op == "DynamicQuantizeLinear":
            return TensorProto.UINT8
        if len(inp) > 2 and inp[2] in types:
            return types[inp[2]]
        return _attr(n, "output_dtype", 0) or TensorProto.UINT8
    if op in DEQUANTIZE:
        return types.get(inp[1], TensorProto.FLOAT) if len(inp) > 1 else TensorProto.FLOAT
    if op in _OUTPUT_ZERO_POINT:
        k = _OUTPUT_ZERO_POINT[op]
        if len(inp) > k and inp[k]:
            return types.get(inp[k], TensorProto.UINT8)
        if op == "QGemm":
            return TensorProto.FLOAT  # no y_scale: QGemm writes float
        return types.get(inp[0]) if inp else None
    if op in {"ConvInteger", "MatMulInteger"}:
        return TensorProto.INT32
    if op in {"MatMulIntegerToFloat", "DynamicQuantizeMatMul"}:
        return TensorProto.FLOAT
    if op == "Cast":
        return _attr(n, "to")
    if op in {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}:
        return TensorProto.INT64
    if op in _KEEPS_TYPE and inp and inp[0] in types:
        return types[inp[0]]
    if op.startswith("QLinear") and inp:
        return types.get(inp[0])
    return None  # compute ops: float unless the graph says otherwise


def _int8_kind(n, types) -> str | None:
    op = n.op_type
    data = types.get(n.input[0]) if n.input and n.input[0] else None
    on_int8 = data in _INT8
    if op in CONV_INT8:
        return "conv"
    if op in MATMUL_INT8:
        return "matmul"
    if op == "QLinearConcat" or (op == "Concat" and on_int8):
        return "concat"
    if op in ADD_INT8:
        return "add"
    if op in POOL_INT8 or (op in POOL_ON_INT8 and on_int8):
        return "pool"
    if op in RESIZE_ON_INT8 and on_int8:
        return "resize"
    if op in OTHER_INT8 or op.startswith("QLinear"):
        return "other int8"
    if op in QUANTIZE | DEQUANTIZE | DATA_MOVEMENT | _COPIES:
        return None
    out = types.get(n.output[0]) if n.output else None
    if on_int8 and out in _INT8:
        return "other int8"
    return None


def _float_islands(g, nodes, types, kind_of) -> list[FloatIsland]:
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers = collections.defaultdict(list)
    for i, n in enumerate(nodes):
        for x in n.input:
            if x:
                consumers[x].append(i)
    initializers = {t.name for t in g.initializer}
    graph_inputs = {v.name for v in g.input} - initializers
    graph_outputs = {v.name for v in g.output}

    def is_float(value: str) -> bool:
        return types.get(value, TensorProto.FLOAT) in _FLOATS

    def float_node(i: int) -> bool:
        n = nodes[i]
        return (kind_of[i] is None and n.op_type not in QUANTIZE | DEQUANTIZE and bool(n.output)
                and is_float(n.output[0]))

    sources: list[set[str]] = [set() for _ in nodes]  # "dq": int8 data upstream; "graph": a graph input
    for i, n in enumerate(nodes):
        if not float_node(i):
            continue
        for x in n.input:
            if not x or x in initializers or not is_float(x):
                continue
            if x in graph_inputs:
                sources[i].add("graph")
            p = producer.get(x)
            if p is None:
                continue
            if nodes[p].op_type in DEQUANTIZE or kind_of[p]:
                sources[i].add("dq")
            elif float_node(p):
                sources[i] |= sources[p]
    sinks: list[set[str]] = [set() for _ in nodes]  # "q": quantized downstream; "graph": a graph output
    for i in reversed(range(len(nodes))):
        if not float_node(i):
            continue
        for o in nodes[i].output:
            if o in graph_outputs:
                sinks[i].add("graph")
            for c in consumers.get(o, []):
                if nodes[c].op_type in QUANTIZE or kind_of[c]:
                    sinks[i].add("q")
                elif float_node(c):
                    sinks[i] |= sinks[c]
    islands = []
    for i, n in enumerate(nodes):
        if not float_node(i) or n.op_type in DATA_MOVEMENT:
            continue
        src, dst = sources[i], sinks[i]
        if n.op_type in FLOAT_CONV and "dq" in src:
            reason = FLOAT_CONV_REASON
        elif n.op_type in FLOAT_MATMUL and "dq" in src:
            reason = FLOAT_MATMUL_REASON
        elif "dq" in src and "q" in dst:
            reason = BETWEEN
        elif "dq" in src:
            reason = GRAPH_OUTPUT
        elif "q" in dst:
            reason = GRAPH_INPUT
        else:
            reason = DETACHED
        detail = ""
        if n.op_type in FLOAT_CONV | FLOAT_MATMUL:
            detail = _why_float_kernel(n, nodes, producer, consumers, initializers, graph_inputs, graph_outputs)
        islands.append(FloatIsland(node=n.name or n.output[0], op=n.op_type, reason=reason, detail=detail))
    return islands


def _why_float_kernel(n, nodes, producer, consumers, initializers, graph_inputs, graph_outputs) -> str:
    """Why a convolution/matmul kept its float kernel, from what surrounds it in the optimised graph.

    onnxruntime's QDQ rewrites fuse DequantizeLinear -> op -> QuantizeLinear into an int8 kernel when the op's
    inputs come from DequantizeLinear nodes (constant float weights it quantizes itself; onnxruntime 1.32 also
    quantizes a float bias, and takes int8 or uint8 on either side) and its output goes only into QuantizeLinear
    nodes. So: a missing QuantizeLinear on an input or on the output, else the rewrite did not run (optimisation
    level) or does not cover this op or setting."""

    def origin(value: str) -> tuple[str, int | None]:
        # through layout and shape changes (the NCHWc ReorderInput in front of a float conv, a Transpose, ...)
        seen = set()
        while value in producer and producer[value] not in seen:
            p = producer[value]
            seen.add(p)
            if nodes[p].op_type not in DATA_MOVEMENT or not nodes[p].input:
                return value, p
            value = nodes[p].input[0]
        return value, producer.get(value)

    def uses(value: str) -> tuple[list[int], bool]:
        # the consumers past data movement, and whether the value (or a reshaped copy) is a graph output
        found, is_output, todo, seen = [], False, [value], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            is_output = is_output or v in graph_outputs
            for c in consumers.get(v, []):
                if nodes[c].op_type in DATA_MOVEMENT:
                    todo.extend(o for o in nodes[c].output if o)
                else:
                    found.append(c)
        return found, is_output

    is_conv = n.op_type in FLOAT_CONV
    reasons = []
    for index, what in ((0, "input"), (1, "weights" if is_conv else "second input")):
        if len(n.input) <= index or not n.input[index]:
            continue
        value, p = origin(n.input[index])
        if p is not None and nodes[p].op_type in DEQUANTIZE:
            continue
        if value in initializers:
            continue  # constant float weights: onnxruntime quantizes them itself
        if value in graph_inputs:
            source = f"the graph input {value!r}"
        elif p is not None:
            source = f"the float output of {nodes[p].op_type} {nodes[p].name or value!r}"
        else:
            source = repr(value)
        reasons.append(f"no QuantizeLinear on its {what}: reads {source}")
    users, is_output = uses(n.output[0]) if n.output else ([], False)
    if is_output:
        reasons.append("no QuantizeLinear on its output: a graph output")
    else:
        others = [nodes[c] for c in users if nodes[c].op_type not in QUANTIZE]
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            reasons.append(f"no QuantizeLinear on its output: feeds {others[0].op_type} "
                           f"{others[0].name or others[0].output[0]!r}{more}")
    if reasons:
        return "; ".join(reasons)
    return (f"not fused by onnxruntime: a {n.op_type} between DequantizeLinear and QuantizeLinear in the optimised "
            f"graph (optimisation level below 'extended', or a case its int8 kernels do not cover)")
