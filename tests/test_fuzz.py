"""Bounded, seeded fuzzing of every file a user hands in: a small prototxt and its caffemodel, an image parameters
file, a trial log line.

Each mutated input must end in one of two ways: it loads (and converts), or it is refused with an Int8TuneError.
Any other exception type is a crash, a case running past its time budget is a hang, and a text that protobuf's
strict parser (Caffe's TextFormat::Parse) refuses but that loads anyway is a silent change of the net. The counts
of both outcomes are asserted, so a fuzzer that only ever produces garbage (or only valid files) fails too.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
from collections import Counter

import numpy as np
import pytest
from google.protobuf import text_format
from netbuilder import input_header, layer, write_net

from int8tune.caffe.schema import caffe_pb2
from int8tune.data import check_params_fit
from int8tune.errors import ConfigError, Int8TuneError, ModelError
from int8tune.image_params import MAX_SIDE, load_image_params
from int8tune.pipeline.workspace import load_workspace
from int8tune.tune.trials import Trial, TrialLog

SEED = 20240611
CASE_SECONDS = 5  # one case running longer than this is a hang

RNG = np.random.default_rng(SEED)
PROTOTXT = (input_header((1, 3, 8, 8))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 }")
            + layer("bn1", "BatchNorm", "conv1", "conv1")
            + layer("scale1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("fc", "InnerProduct", "pool1", "fc", "inner_product_param { num_output: 3 }")
            + layer("prob", "Softmax", "fc", "prob"))
WEIGHTS = {"conv1": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)],
           "bn1": [RNG.standard_normal(4).astype(np.float32), RNG.random(4).astype(np.float32) + 0.5,
                   np.array([1.0], np.float32)],
           "scale1": [RNG.random(4).astype(np.float32) + 0.5, RNG.standard_normal(4).astype(np.float32)],
           "fc": [RNG.standard_normal((3, 64)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)]}
TYPES = ["Convolution", "ReLU", "Sigmoid", "Pooling", "InnerProduct", "Softmax", "Input", "Data", "BatchNorm",
         "Scale", "Eltwise", "Concat", "Nonexistent", "SoftmaxWithLoss", ""]
NUMBERS = ["0", "-1", "1", "3", "65536", "2147483647", "4294967296", "1e30", "nan", "-0"]
PARAMS = {"size": [8, 8], "color_format": "bgr", "b_mean": 104, "g_mean": 117, "r_mean": 123, "scale": 0.017,
          "interpolation": "linear", "mirror": None, "transpose": False}
VALUES = [None, "abc", -1, 0, 1, 8, 2.5, 1e308, 100000, [], [8], [8, 8], [100000, 100000], [0, 8], [8, 9], {}, True,
          "RGB", "gray", [8, 8, 8]]


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(run, what: str, crashes: list[str]) -> str:
    """"ok" or "refused"; anything else is recorded in `crashes` with the case's description."""
    try:
        with time_limit(CASE_SECONDS):
            run()
    except Int8TuneError:
        return "refused"
    except Hang as e:
        crashes.append(f"{what}: hang ({e})")
        return "crash"
    except Exception as e:  # noqa: BLE001 - the point of the fuzz: any other type is a finding
        crashes.append(f"{what}: {type(e).__name__}: {e}")
        return "crash"
    return "ok"


# --- prototxt ---------------------------------------------------------------------------------------------

def mutate_prototxt(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.splitlines()
    kind = rng.choice(["delete", "duplicate", "swap", "number", "type", "singular"])
    i = rng.randrange(len(lines))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "swap":
        j = min(i + 1, len(lines) - 1)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "number":
        spots = [(k, m) for k, line in enumerate(lines) for m in re.finditer(r"(?<![\w.])\d+(?![\w.])", line)]
        k, m = rng.choice(spots)
        lines[k] = lines[k][:m.start()] + rng.choice(NUMBERS) + lines[k][m.end():]
        i = k
    elif kind == "type":
        spots = [k for k, line in enumerate(lines) if line.strip().startswith("type:")]
        i = rng.choice(spots)
        lines[i] = f'  type: "{rng.choice(TYPES)}"'
    else:  # a singular field given twice with another value: Caffe refuses it, so must we
        spots = [k for k, line in enumerate(lines) if re.match(r"\s*(name|type|num_output):", line)]
        i = rng.choice(spots)
        key = lines[i].split(":")[0]
        other = f'"{rng.choice(TYPES[:6])}"' if key.strip() in ("name", "type") else str(rng.randint(1, 9))
        lines.insert(i + 1, f"{key}: {other}")
    return "\n".join(lines) + "\n", f"{kind} at line {i + 1}"


def strictly_parses(text: str) -> bool:
    try:
        text_format.Parse(text, caffe_pb2.NetParameter())
    except text_format.ParseError:
        return False
    return True


def test_fuzz_prototxt_and_caffemodel(tmp_path):
    proto, model = write_net(tmp_path, PROTOTXT, WEIGHTS)
    load_workspace(proto, model)  # the unmutated pair loads
    rng = random.Random(SEED)
    counts: Counter = Counter()
    crashes: list[str] = []
    silent: list[str] = []
    mutated = tmp_path / "mutated.prototxt"
    for case in range(300):
        text, what = mutate_prototxt(PROTOTXT, rng)
        mutated.write_text(text)
        what = f"prototxt case {case} ({what})"
        result = outcome(lambda: load_workspace(mutated, model), what, crashes)
        counts["prototxt " + result] += 1
        if result == "ok" and not strictly_parses(text):
            silent.append(f"{what}: protobuf's strict parser refuses the text, yet it loaded:\n{text}")
        if what.split("(")[1].startswith("singular") and result != "refused":
            silent.append(f"{what}: a singular field given twice was not refused")

    data = model.read_bytes()
    broken = tmp_path / "mutated.caffemodel"
    for case in range(200):
        blob = bytearray(data)
        if rng.random() < 0.4:
            blob = blob[:rng.randrange(len(blob))]
            what = f"caffemodel case {case} (truncated to {len(blob)} of {len(data)} bytes)"
        else:
            offsets = [rng.randrange(len(blob)) for _ in range(rng.randint(1, 6))]
            for k in offsets:
                blob[k] = rng.randrange(256)
            what = f"caffemodel case {case} (bytes changed at {offsets})"
        broken.write_bytes(bytes(blob))

        def load_and_check():
            ws = load_workspace(proto, broken)
            for lay in ws.net.layers:  # what loads holds no NaN/inf weights
                assert all(np.isfinite(b).all() for b in lay.blobs), lay.name

        counts["caffemodel " + outcome(load_and_check, what, crashes)] += 1

    print(dict(counts))
    assert not crashes, "\n".join(crashes[:10])
    assert not silent, "\n".join(silent[:5])
    for kind in ("prototxt", "caffemodel"):
        assert counts[f"{kind} ok"] > 0 and counts[f"{kind} refused"] > 0, counts


# --- image parameters -------------------------------------------------------------------------------------

def mutate_params(rng: random.Random) -> tuple[str, str]:
    d = dict(PARAMS)
    kind = rng.choice(["value", "value", "delete", "unknown", "duplicate", "truncate"])
    # half the time one of the keys that decide the tensor's shape (and the memory one image takes)
    key = rng.choice(["size", "color_format", "transpose"] if rng.random() < 0.5 else sorted(d))
    if kind == "value":
        d[key] = rng.choice(VALUES)
        return json.dumps(d), f"{key} = {json.dumps(d[key])}"
    if kind == "delete":
        del d[key]
        return json.dumps(d), f"{key} deleted"
    if kind == "unknown":
        d[key + "x"] = 1
        return json.dumps(d), f"unknown key {key}x"
    text = json.dumps(d, indent=1)
    if kind == "duplicate":
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{key}"'))
        return text.replace(line, line.rstrip(",") + ",\n" + line.rstrip(",") + ",", 1), f"{key} twice"
    cut = rng.randrange(len(text))
    return text[:cut], f"truncated at {cut}"


def test_fuzz_image_params(tmp_path):
    rng = random.Random(SEED + 1)
    counts: Counter = Counter()
    crashes: list[str] = []
    path = tmp_path / "params.json"
    for case in range(300):
        text, what = mutate_params(rng)
        path.write_text(text)

        def load():
            params = load_image_params(path)
            check_params_fit(params, (1, 3, 8, 8))
            assert max(params.size) <= MAX_SIDE and params.output_shape == (1, 3, 8, 8), params

        counts[outcome(load, f"image params case {case} ({what})", crashes)] += 1
    print(dict(counts))
    assert not crashes, "\n".join(crashes[:10])
    assert counts["ok"] > 0 and counts["refused"] > 0, counts


# --- trial log --------------------------------------------------------------------------------------------

def mutate_trial_line(line: str, rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["value", "value", "delete", "unknown", "truncate", "bytes", "shape"])
    d = json.loads(line)
    key = rng.choice(sorted(d))
    if kind == "value":
        d[key] = rng.choice(VALUES + [float("nan"), float("inf"), "1.0", -5, 2**70])
        return json.dumps(d), f"{key} = {d[key]!r}"
    if kind == "delete":
        del d[key]
        return json.dumps(d), f"{key} deleted"
    if kind == "unknown":
        d["surprise"] = 1
        return json.dumps(d), "unknown field"
    if kind == "truncate":
        cut = rng.randrange(len(line))
        return line[:cut], f"truncated at {cut}"
    if kind == "bytes":
        chars = list(line)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 0x2FF))
        return "".join(chars), "characters changed"
    return json.dumps(rng.choice([[1, 2], "trial", 3, None, {"extra": 1}])), "not an object"


@pytest.mark.parametrize("position", ["middle", "last"])
def test_fuzz_trial_log_line(tmp_path, position):
    fingerprint = {"model": "m"}
    path = tmp_path / "trials.jsonl"
    log = TrialLog(path, fingerprint)
    for i, (m, note) in enumerate([(1.0, "baseline"), (1.1, ""), (0.9, ""), (1.21, "")]):
        log.append(Trial(i, "conv1", "conv1", m, 2.0 * m, 0.5 / (i + 1), 0.01, note, {"subset": 0.4}))
    original = path.read_text().splitlines()
    target = 2 if position == "middle" else len(original) - 1
    rng = random.Random(SEED + (2 if position == "middle" else 3))
    counts: Counter = Counter()
    crashes: list[str] = []
    for case in range(150):
        lines = list(original)
        lines[target], what = mutate_trial_line(lines[target], rng)
        path.write_text("\n".join(lines) + "\n")

        def resume():
            again = TrialLog(path, fingerprint)
            for trial in again._replay.values():  # noqa: SLF001 - every replayed trial is usable
                trial.key()
                assert again.lookup(trial.layer, trial.blob, trial.multiplier, trial.note, trial.restart) is trial

        counts[outcome(resume, f"trial log case {case}, line {target + 1} ({what})", crashes)] += 1
    print(position, dict(counts))
    assert not crashes, "\n".join(crashes[:10])
    assert counts["ok"] > 0 and counts["refused"] > 0, counts


def test_refusals_are_the_documented_types(tmp_path):
    """The fuzz accepts any Int8TuneError; the three inputs raise their own kinds of it."""
    proto, model = write_net(tmp_path, PROTOTXT.replace('type: "ReLU"', 'type: "ReLU"\ntype: "Sigmoid"'), WEIGHTS)
    with pytest.raises(ModelError):
        load_workspace(proto, model)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**PARAMS, "size": [100000, 100000]}))
    with pytest.raises(ConfigError):
        load_image_params(path)


# --- calibration table ------------------------------------------------------------------------------------

def test_fuzz_calibration_table(tmp_path):
    """A calibration table (.pbtxt) mutated line by line: read_table_pb loads it or refuses it, and what it loads
    has finite, positive thresholds (a table is user input too: edited by hand, or written by another tool)."""
    from test_simulate import make_table

    from int8tune.quant.formats import read_table_pb, write_table_pb
    from int8tune.quant.spec import QuantSpec

    original = tmp_path / "table.pbtxt"
    write_table_pb(make_table(QuantSpec()), original)
    lines = original.read_text().splitlines()
    rng = random.Random(SEED + 3)
    counts: Counter = Counter()
    crashes: list[str] = []
    path = tmp_path / "mutated.pbtxt"
    for case in range(300):
        mutated = list(lines)
        kind, i = rng.choice(["delete", "duplicate", "number", "swap"]), rng.randrange(len(lines))
        if kind == "delete":
            del mutated[i]
        elif kind == "duplicate":
            mutated.insert(i, mutated[i])
        elif kind == "swap":
            j = min(i + 1, len(mutated) - 1)
            mutated[i], mutated[j] = mutated[j], mutated[i]
        else:
            spots = [(k, m) for k, line in enumerate(mutated) for m in re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", line)]
            k, m = rng.choice(spots)
            mutated[k] = mutated[k][:m.start()] + rng.choice(["0", "-1", "nan", "inf", "1e400", "3"]) + \
                mutated[k][m.end():]
        path.write_text("\n".join(mutated) + "\n")

        def load():
            table = read_table_pb(path)
            for e in table.blobs.values():
                assert np.isfinite(e.threshold) and e.threshold > 0, (e.blob, e.threshold)
            for e in table.layers.values():
                if e.weight_thresholds is not None:
                    w = np.asarray(e.weight_thresholds)
                    assert np.isfinite(w).all() and (w > 0).all(), (e.layer, w)

        counts[outcome(load, f"table case {case} ({kind} at line {i + 1})", crashes)] += 1
    print(dict(counts))
    assert not crashes, "\n".join(crashes[:10])
    assert counts["ok"] > 0 and counts["refused"] > 0, counts
