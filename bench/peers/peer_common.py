"""Shared pieces of the peer runners (run_<peer>.py), run with the peers venv's python (bench/peers/setup.sh).

A runner is `python run_<peer>.py JOB.json`; the job is written by bench/peers/compare.py. Each runner defines
`quantize(job)` and calls `run(quantize)`, which:
- loads the job, chdirs to output_dir (some tools write into the working directory), sets the thread count;
- writes a placeholder result.json first ("failed: the runner did not finish"), so that a hard crash or a tool's
  os._exit still leaves a result;
- catches every exception, SystemExit included (a tool calling exit(0)), and reports it as status "failed";
- writes result.json atomically: {"peer", "mode", "status", "error", "quantized_onnx", "seconds", "notes"}.

`quantize(job)` times only the quantization/tuning step with `with job.timed(): ...`, adds free text to
`job.notes`, and returns the path of the quantized ONNX model (None with job.status set for "not available").

Validation metric of the accuracy-aware modes (job.metric(model)), computed with onnxruntime on the
validation set, which is the calibration images (with their labels): every tool, this project included, tunes
on the images it calibrates with, and the evaluation images stay unseen until compare.py scores the result:
- classification: top-1 of the model's first output on the "labels" array;
- detection (no labels): agreement with the fp32 model, 1 - sum((q - f)^2) / sum(f^2) over all outputs of all
  evaluation images (1 = identical outputs; the squared error normalised by the fp32 outputs' energy).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

MAX_LOG_NOTES = 60  # tool log lines copied into the notes, at most, per logger
# Batch of the validation runs: 1, as compare.py measures. onnxruntime's int8 kernels do not always give the same
# result at batch 1 and batch > 1 (seen: QLinearSoftmax, top-1 ties on LeNet), so the tools tune on what is measured.
EVAL_BATCH = 1
WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Job:
    """The job JSON plus the evaluation helpers and the result being built."""

    def __init__(self, path: str | Path):
        spec = json.loads(Path(path).read_text())
        self.spec = spec
        self.peer: str = spec["peer"]
        self.mode: str = spec["mode"]
        self.fp32_onnx = str(Path(spec["fp32_onnx"]).resolve())
        self.input_name: str = spec.get("input_name", "data")
        self.task: str = spec.get("task", "classification")
        self.max_drop: float = float(spec.get("max_drop", 0.01))
        self.output_dir = Path(spec["output_dir"]).resolve()
        self.output_onnx = str(Path(spec["output_onnx"]).resolve())
        self.threads = int(spec.get("threads", 2))
        self.calibration_path = spec["calibration"]
        self.evaluation_path = spec["evaluation"]
        self.validation_path = spec.get("validation", spec["calibration"])
        self.notes: list[str] = []
        self.seconds = 0.0
        self.status = "ok"
        self._fp32_outputs: dict[str, list[np.ndarray]] = {}
        self._fp32_names: list[str] | None = None
        self._data: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    # data ------------------------------------------------------------------------------------------------
    def calibration(self) -> np.ndarray:
        """float32 (N, C, H, W)."""
        return np.load(self.calibration_path)["x"].astype(np.float32)

    def evaluation(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(x float32 (N, C, H, W), labels int64 (N,) or None for detection): the images results are scored on."""
        return self._load(self.evaluation_path)

    def validation(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The same for the validation set of the accuracy-aware modes (the calibration images)."""
        return self._load(self.validation_path)

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        if path not in self._data:
            data = np.load(path)
            labels = data["labels"].astype(np.int64) if "labels" in data.files else None
            self._data[path] = data["x"].astype(np.float32), labels
        return self._data[path]

    # onnxruntime -----------------------------------------------------------------------------------------
    def session(self, model):
        """An onnxruntime CPU session of a path, bytes or onnx.ModelProto (a session is returned as it is)."""
        import onnxruntime as ort

        if isinstance(model, ort.InferenceSession):
            return model

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not isinstance(model, (str, bytes, os.PathLike)):
            model = model.SerializeToString()
        elif isinstance(model, os.PathLike):
            model = str(model)
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def predict(self, model, x: np.ndarray, batch: int = EVAL_BATCH) -> list[np.ndarray]:
        """All outputs of the model on x, concatenated over batches (batch 1 if the model's batch is fixed), in
        the order of the fp32 model's outputs (matched by name: some exporters reorder the graph outputs)."""
        sess = self.session(model)
        inp = sess.get_inputs()[0]
        if isinstance(inp.shape[0], int):
            batch = inp.shape[0]
        names = [o.name for o in sess.get_outputs()]
        if self._fp32_names is None:
            self._fp32_names = [o.name for o in self.session(self.fp32_onnx).get_outputs()]
        if sorted(names) == sorted(self._fp32_names):
            names = list(self._fp32_names)
        outs: list[list[np.ndarray]] = [[] for _ in names]
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            if len(chunk) < batch and isinstance(inp.shape[0], int):
                pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
                res = [r[:len(chunk)] for r in sess.run(names, {inp.name: np.concatenate([chunk, pad])})]
            else:
                res = sess.run(names, {inp.name: chunk})
            for acc, r in zip(outs, res):
                acc.append(np.asarray(r))
        return [np.concatenate(o) for o in outs]

    def metric(self, model) -> float:
        """The validation metric of a model (path, bytes, ModelProto or session) on the whole validation set."""
        return self.score(model, self.validation_items())[0]

    def evaluation_metric(self, model) -> float:
        """The same metric on the evaluation images (for the notes; no tool sees it while quantizing)."""
        return self.score(model, self._items(self.evaluation_path))[0]

    def validation_items(self) -> list[tuple[np.ndarray, object]]:
        """One (x (1, C, H, W), target) per validation image: target = the label (classification) or the list of
        fp32 outputs for that image (detection). For tools that take a validation dataset (NNCF)."""
        return self._items(self.validation_path)

    def _items(self, path: str) -> list[tuple[np.ndarray, object]]:
        x, labels = self._load(path)
        if self.task == "classification":
            if labels is None:
                raise ValueError(f"classification job whose npz {path} has no 'labels'")
            return [(x[i:i + 1], int(labels[i])) for i in range(len(x))]
        fp32 = self.fp32_outputs(path)
        return [(x[i:i + 1], [f[i:i + 1] for f in fp32]) for i in range(len(x))]

    def score(self, model, items) -> tuple[float, list[float]]:
        """(metric, per-image values) of a model on validation items: top-1 and 1/0 per image, or the fp32
        agreement overall and per image."""
        items = list(items)
        outs = self.predict(model, np.concatenate([x for x, _ in items]))
        if self.task == "classification":
            labels = np.array([t for _, t in items], np.int64)
            hits = outs[0].reshape(len(labels), -1).argmax(axis=1) == labels
            return float(hits.mean()), [float(h) for h in hits]
        per = [agreement(t, [o[i:i + 1] for o in outs]) for i, (_, t) in enumerate(items)]
        fp32 = [np.concatenate([t[k] for _, t in items]) for k in range(len(outs))]
        return agreement(fp32, outs), per

    def fp32_outputs(self, path: str) -> list[np.ndarray]:
        if path not in self._fp32_outputs:
            self._fp32_outputs[path] = self.predict(self.fp32_onnx, self._load(path)[0])
        return self._fp32_outputs[path]

    def metric_name(self) -> str:
        return "top-1" if self.task == "classification" else "fp32 agreement (1 - sum sq diff / sum sq fp32)"

    # bookkeeping -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self):
        """Add the wall time of the block to the result's 'seconds' (the quantization/tuning step only)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def note(self, text: str) -> None:
        self.notes.append(str(text))
        print("note:", text, flush=True)

    def capture_log(self, logger: str, *keywords: str, last: tuple[str, ...] = ()) -> None:
        """Copy the tool's log messages (of `logger` and its children) containing one of `keywords` into the notes:
        what the tool itself reported (metrics, layers reverted to fp32, ...). Messages containing one of `last`
        keep only their latest instance (e.g. one line per tuning trial)."""
        job, captured, slots = self, [0], {}

        class ToNotes(logging.Handler):
            def emit(self, record):
                text = "[" + logger + "] " + " ".join(record.getMessage().split())[:600]
                key = next((k for k in last if k in text), None)
                if key is not None:
                    if key in slots:
                        job.notes[slots[key]] = text
                    else:
                        slots[key] = len(job.notes)
                        job.notes.append(text)
                elif any(k in text for k in keywords) and text not in job.notes:
                    captured[0] += 1
                    if captured[0] <= MAX_LOG_NOTES:
                        job.notes.append(text)
                    elif captured[0] == MAX_LOG_NOTES + 1:
                        job.notes.append(f"[{logger}] ... (more in the tool's output, stdout/stderr)")

        log = logging.getLogger(logger)
        log.addHandler(ToNotes(logging.INFO))
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)

    def not_available(self, why: str) -> None:
        self.status = "not available"
        self.note(why)


def fp32_layers(model) -> tuple[int, list[str]]:
    """(number of weighted layers, names of those whose weights do not come through a DequantizeLinear) of an
    onnx.ModelProto: the layers a tool left in float."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1]
    return len(weighted), [n.name for n in weighted if produced_by.get(n.input[1]) != "DequantizeLinear"]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean())


def agreement(fp32: list[np.ndarray], other: list[np.ndarray]) -> float:
    """1 - sum((q - f)^2) / sum(f^2) over every output (the detection metric of the accuracy-aware modes)."""
    err = sum(float(np.sum((np.asarray(o, np.float64) - f) ** 2)) for f, o in zip(fp32, other))
    energy = sum(float(np.sum(np.asarray(f, np.float64) ** 2)) for f in fp32)
    return 1.0 - err / max(energy, 1e-30)


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _result(job: Job, status: str, error: str, onnx_path: str | None) -> dict:
    return {"peer": job.peer, "mode": job.mode, "status": status, "error": error, "quantized_onnx": onnx_path,
            "seconds": round(job.seconds, 3), "notes": job.notes}


def _note_outcome(job: Job, onnx_path: str) -> None:
    """Layers left in float, and the fp32 / quantized metric on the evaluation set, for the notes (not timed)."""
    try:
        import onnx

        total, fp32 = fp32_layers(onnx.load(onnx_path))
        job.note(f"{total - len(fp32)} of {total} weighted layers have quantized weights; left in float: {fp32}")
        job.note(f"{job.metric_name()} on the evaluation set (onnxruntime {version('onnxruntime')}, batch "
                 f"{EVAL_BATCH}): fp32 {job.evaluation_metric(job.fp32_onnx):.4f}, quantized "
                 f"{job.evaluation_metric(onnx_path):.4f}")
    except Exception as exc:  # noqa: BLE001
        job.note(f"could not inspect or evaluate the quantized model: {type(exc).__name__}: {exc}")


def run(quantize: Callable[[Job], str | None]) -> int:
    """The whole runner: `run(quantize)` from `if __name__ == "__main__"`. Exit status 0 once result.json is
    written, whatever the peer did (the result says)."""
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} JOB.json", file=sys.stderr)
        return 2
    job = Job(sys.argv[1])
    job.output_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(job.output_dir)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(job.threads)
    result_path = job.output_dir / "result.json"
    write_json_atomic(result_path, _result(job, "failed", "the runner did not finish (crashed, killed or exited "
                                                          "from inside the tool)", None))
    status, error, onnx_path = "failed", "", None
    try:
        path = quantize(job)
        if job.status == "not available":
            status = "not available"
        elif path is None or not Path(path).is_file():
            error = f"the tool produced no model ({path})"
        else:
            status, onnx_path = "ok", str(path)
            _note_outcome(job, onnx_path)
    except BaseException as exc:  # noqa: BLE001  (SystemExit too: some tools call exit())
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        error = f"{type(exc).__name__}: {exc}".strip()[:2000] + "\n" + tb[-2000:]
    write_json_atomic(result_path, _result(job, status, error, onnx_path))
    print(json.dumps({k: v for k, v in _result(job, status, error[:300], onnx_path).items()}, indent=1), flush=True)
    return 0
