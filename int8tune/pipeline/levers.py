"""The weight levers in a run: AdaRound (quant/adaround.py) before the thresholds are calibrated, bias correction
(quant/bias_correction.py) with the calibrated table, each giving the workspace new int8 weights (written back into
the net as written, caffe/unfold.py, so that corrected.caffemodel runs with the original prototxt) and checked
there: the weights as folded and converted again quantize to exactly the integers AdaRound chose, and the biases
to the corrected int32 biases. The fp32 model every difference is measured against stays the one the user gave
(`Workspace.reference`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from ..caffe.unfold import bias_carrier, unfold_changes, with_blobs
from ..config import QuantConfig
from ..errors import ConfigError, ModelError
from ..log import logger
from ..quant.adaround import AdaRoundOptions, RoundedLayer, adaround, refuse_adaround, solver_named
from ..quant.adaround import SkippedLayer as SkippedRounding
from ..quant.bias_correction import CorrectedLayer, correct_biases
from ..quant.bias_correction import SkippedLayer as SkippedCorrection
from ..quant.calibrate import layer_weight, plan_quantization, weight_thresholds
from ..quant.calibrators import CalibratorOptions
from ..quant.spec import WEIGHTED_TYPES, QuantSpec
from ..quant.table import CalibrationTable
from ..quant.weights import quantize_bias, quantize_matrix, to_output_matrix
from .images import Images
from .workspace import Workspace, with_weights


@dataclass(frozen=True)
class Corrections:
    """What the weight levers did to a workspace's int8 weights, or the file they were read from."""

    adaround: tuple[RoundedLayer | SkippedRounding, ...] = ()
    bias: tuple[CorrectedLayer | SkippedCorrection, ...] = ()
    changed: frozenset[str] = frozenset()  # layers of the net as written whose blobs differ from the model's
    source: Path | None = None  # --corrected_model: read from this file, not computed in this run
    notes: tuple[str, ...] = field(default=())  # what the checks found (scales a few ulps off, ...)
    by_default: tuple[str, ...] = ()  # the levers that ran because they are the default (config.DEFAULT_LEVERS)
    solver: str = ""  # --adaround_solver, where AdaRound ran


class NothingToCorrect(ConfigError):
    """A lever found nothing in the net it could change (no int8 weighted layer, no bias anywhere): an error when
    it was asked for, a note when it was on by default."""


def _int8_weighted_layers(ws: Workspace, spec: QuantSpec, what: str) -> list[str]:
    layers = [p.layer for p in plan_quantization(ws.fold.net, spec) if p.int8 and p.type in WEIGHTED_TYPES
              and ws.converted.records[p.layer].weight]
    if not layers:
        raise NothingToCorrect(f"{what}: no int8 Convolution/InnerProduct layer in {ws.proto} (after the ignore lists)")
    return layers


def _corrections(ws: Workspace) -> Corrections:
    if ws.corrections is not None and ws.corrections.source is not None:
        raise ConfigError(f"the weights were read from --corrected_model {ws.corrections.source}: the levers "
                          f"are not applied twice")
    return ws.corrections or Corrections()


def _caffe_layout(ws: Workspace, layer: str, onnx_weight: np.ndarray, op_type: str) -> np.ndarray:
    """ONNX-layout weights of `layer` in the Caffe layout of its (folded) blob (convert/layers/dense.py stores
    an InnerProduct as Gemm (N, K) or MatMul (K, N); a `transpose: true` blob is (K, N))."""
    blob = ws.fold.net.layer(layer).blobs[0]
    w = onnx_weight.T if op_type == "MatMul" else onnx_weight  # now (N, K) for both matrix products
    caffe_layer = ws.fold.net.layer(layer)
    if caffe_layer.type == "InnerProduct" and caffe_layer.param.inner_product_param.transpose:
        w = w.T
    return np.ascontiguousarray(w).reshape(blob.shape).astype(np.float32)


def adaround_workspace(ws: Workspace, images: Images, quant: QuantConfig, threads: int = 2,
                       options: AdaRoundOptions | None = None) -> Workspace:
    """The workspace with AdaRound's weights, checked to quantize back to AdaRound's integers. `options`: the
    defaults with quant's solver unless given."""
    options = options or AdaRoundOptions(solver=solver_named(quant.adaround_solver))
    spec = quant.spec()
    why = refuse_adaround(spec, quant.weight_method)
    if why is not None:
        raise ConfigError(why)
    before = _corrections(ws)
    layers = _int8_weighted_layers(ws, spec, "--adaround")
    logger.info("AdaRound: learning the rounding of %d layer(s) on %s (solver: %s)", len(layers), images.description,
                options.solver.value)
    results = adaround(ws.converted, layers, images.batches, spec, quant.weight_method, options, threads)
    rounded = {r.layer: r for r in results if isinstance(r, RoundedLayer) and r.rounded.any()}
    original = {name: layer_weight(ws.converted, name) for name in rounded}
    out, off_scale = ws, {}
    for attempt in range(2):
        weights = {name: _caffe_layout(ws, name, r.weight, original[name][1]) for name, r in rounded.items()}
        changed = unfold_changes(ws.net, ws.fold, weights=weights)
        out = with_weights(ws, with_blobs(ws.net, changed), replace(before, changed=before.changed | set(changed)))
        failing = {}
        for name, r in rounded.items():
            levels, scale = _exported_levels(out, name, spec, quant.weight_method)
            bad = (levels != r.levels).any(axis=1) & r.rounded
            if bad.any():
                failing[name] = bad
            off = r.rounded & ~bad & (scale != r.scale)
            if off.any():
                off_scale[name] = (int(off.sum()), int(np.abs(scale.view(np.int32)[off].astype(np.int64)
                                                              - r.scale.view(np.int32)[off]).max()))
        if not failing:
            break
        if attempt:
            raise ModelError(f"AdaRound: the written weights of {', '.join(failing)} do not quantize back to the "
                             f"learned integers")
        for name, bad in failing.items():  # back to the original weights: the export rounds them to nearest
            logger.info("AdaRound: %s: %d channel(s) do not quantize back as learned after the BatchNorm/Scale "
                        "fold; left to round-to-nearest", name, int(bad.sum()))
            rounded[name] = _keep_original(rounded[name], original[name], bad)
    final = tuple(rounded.get(r.layer, r) for r in results)
    notes = [] if not off_scale else [
        f"AdaRound: {sum(n for n, _ in off_scale.values())} rounded channel(s) of {len(off_scale)} layer(s) with "
        f"BatchNorm/Scale get a weight scale up to {max(u for _, u in off_scale.values())} float32 ulp(s) from the "
        f"one rounded to (the fold rounds each weight once more); their integer weights are the learned ones"]
    out.corrections = replace(out.corrections, adaround=final, notes=tuple(notes), solver=options.solver.value)
    if not rounded:
        logger.info("AdaRound: no channel rounds better than to nearest on these images; weights unchanged")
    return out


def _keep_original(r: RoundedLayer, original, bad: np.ndarray) -> RoundedLayer:
    weight, op_type, group = original
    matrix = to_output_matrix(r.weight, op_type, group).copy()
    matrix[bad] = to_output_matrix(np.asarray(weight, dtype=np.float32), op_type, group)[bad]
    from ..quant.weights import from_output_matrix

    return replace(r, weight=from_output_matrix(matrix, r.weight, op_type, group), rounded=r.rounded & ~bad)


def _exported_levels(ws: Workspace, layer: str, spec: QuantSpec, weight_method: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The integer weights and scales the export derives from the workspace's (folded, converted) weights."""
    weight, op_type, group = layer_weight(ws.converted, layer)
    t = weight_thresholds(weight, op_type, group, weight_method, spec, CalibratorOptions())
    levels, scale = quantize_matrix(to_output_matrix(weight, op_type, group), t, spec.rounding, spec.qmax)
    return levels, scale


def bias_corrected_workspace(ws: Workspace, table: CalibrationTable, images: Images, threads: int = 2) -> Workspace:
    """The workspace with each int8 layer's bias corrected for the mean int8 error under `table` (measured on
    `images`), written back into the net and checked to give the corrected int32 biases."""
    before = _corrections(ws)
    _int8_weighted_layers(ws, table.spec, "--bias_correction")
    skip = {e.layer: "its bias has nowhere to go in the net as written (no bias term, no Scale bias, no BatchNorm)"
            for e in table.quantized_layers() if e.weight_thresholds is not None
            and ws.converted.records[e.layer].bias is not None and bias_carrier(ws.net, ws.fold, e.layer) is None}
    logger.info("bias correction on %s", images.description)
    biases, results = correct_biases(ws.converted, ws.fp32, table, images.batches, threads, skip)
    corrected = {r.layer for r in results if isinstance(r, CorrectedLayer)}
    if not corrected:
        raise NothingToCorrect(f"--bias_correction: no int8 layer of {ws.proto} has a bias to correct ("
                          + "; ".join(f"{r.layer}: {r.reason}" for r in results[:3]) + ")")
    changed = unfold_changes(ws.net, ws.fold, biases={name: biases[name] for name in corrected})
    out = with_weights(ws, with_blobs(ws.net, changed), replace(before, changed=before.changed | set(changed)))
    notes = list(before.notes) + _check_biases(out, table, biases, corrected)
    out.corrections = replace(out.corrections, bias=tuple(results), notes=tuple(notes))
    return out


def _check_biases(ws: Workspace, table: CalibrationTable, biases: dict[str, np.ndarray], layers: set[str]
                  ) -> list[str]:
    """The int32 biases the export computes from the written net, against the corrected ones."""
    inits = {t.name: t for t in ws.converted.model.graph.initializer}
    spec, notes = table.spec, []
    for name in sorted(layers):
        e = table.layers[name]
        got = numpy_helper.to_array(inits[ws.converted.records[name].bias]).astype(np.float32).reshape(-1)
        s_in = table.blobs[e.input_value].scale(spec)
        s_w = (np.asarray(e.weight_thresholds, dtype=np.float32) / np.float32(spec.qmax)).astype(np.float32)
        want, _ = quantize_bias(biases[name], s_in, np.broadcast_to(s_w, got.shape), spec.rounding)
        have, _ = quantize_bias(got, s_in, np.broadcast_to(s_w, got.shape), spec.rounding)
        if (want != have).any():
            notes.append(f"{name}: {int((want != have).sum())} int32 bias(es) one step off the correction after "
                         f"the BatchNorm/Scale fold")
    return notes
