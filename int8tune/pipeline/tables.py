"""The table a run starts from: a template from the net and the settings, or a table read from the files the user
gives (--calibration_proto, --calibration_model), checked against the net and its weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import LEVERS, QuantConfig, TuneConfig
from ..errors import ConfigError
from ..log import logger
from ..outputs import sha256_file
from ..quant.calibrate import output_values, plan_quantization, with_target_weights
from ..quant.formats import apply_imported, read_int8_prototxt, read_table_pb, rescale_imported
from ..quant.placement import nonnegative_values
from ..quant.spec import WEIGHTED_TYPES
from ..quant.table import BlobEntry, CalibrationTable, LayerEntry
from .workspace import CORRECTED, Workspace, weights_digest


def template_table(ws: Workspace, quant: QuantConfig) -> CalibrationTable:
    """The table's structure from the net and the settings, thresholds placeholder 1.0 (filled by a reader)."""
    spec = quant.spec()
    plan = plan_quantization(ws.fold.net, spec)
    table = CalibrationTable(model=ws.net.name, spec=spec)
    # Without statistics, a blob is unsigned when the net's structure makes it >= 0 (the net input's sign comes
    # from the file that fills the template: the int8 prototxt's is_negative_input).
    structural = nonnegative_values(ws.converted) if spec.unsigned_blobs else set()
    for v in [v for p in plan for v in p.inputs] + output_values(ws.converted, plan):
        table.blobs.setdefault(v, BlobEntry(v, ws.fold.net.blob_of[v], 1.0, calibrator="unset",
                                            unsigned=v in structural))
    for p in plan:
        has_w = p.type in WEIGHTED_TYPES
        table.layers[p.layer] = LayerEntry(p.layer, p.type, p.inputs[0], extra_inputs=p.inputs[1:],
                                           weight_thresholds=np.ones(1) if has_w else None, int8=p.int8, note=p.note)
    return table


def corrected_beside(*table_files: Path | None) -> Path | None:
    """The corrected.caffemodel a table calibrated with the weight levers (bias correction is on by default)
    belongs to, where calibrate and main.sh write it: beside the table (calibrate, main.sh's calibration/) or one
    folder up (main.sh's start/ and tuned/). None for a table that does not record the levers, or when no such
    file is there (the weight check then names the option to give)."""
    for path in (Path(f) for f in table_files if f is not None):
        record = _record_of(path)
        if record is None:
            return None  # unreadable: reading it for the run says what is wrong
        if not any(record.get(k) for k in LEVERS):
            return None
        for folder in (path.parent, path.parent.parent):
            if (folder / CORRECTED).is_file():
                logger.info("%s was calibrated with the weight levers: the int8 model quantizes %s beside it "
                            "(--corrected_model to give another)", path, folder / CORRECTED)
                return folder / CORRECTED
    return None


def recorded_equalize(model: Path, *table_files: Path | None) -> bool:
    """Whether to equalize `model` for the table in these files (--calibration_proto, --calibration_model), as the
    table records: what test.sh, tune.sh and benchmark do when --equalize is not given. True only when the table
    was calibrated on this very caffemodel, equalized (a --model that is the equalized.caffemodel or the
    corrected.caffemodel written beside the table holds the equalized weights already). False for a table that
    does not say (another tool's), or when no file is given."""
    for path in (Path(f) for f in table_files if f is not None):
        record = _record_of(path)
        if record and "equalize" in record:
            follow = bool(record["equalize"]) and record.get("model_sha256") == sha256_file(model)
            if follow:
                logger.info("%s was calibrated on %s equalized: equalizing it the same way", path, model)
            return follow
    return False


def with_table_equalize(cfg: TuneConfig) -> TuneConfig:
    """`cfg` with --equalize left to its default decided by the table it reads, when it reads one (a run that
    calibrates decides it by measurement instead, pipeline/equalize_choice.py)."""
    if cfg.quant.equalize is not None or (cfg.calibration_proto is None and cfg.calibration_model is None):
        return cfg
    follow = recorded_equalize(cfg.model.model, cfg.calibration_proto, cfg.calibration_model)
    return replace(cfg, quant=replace(cfg.quant, equalize=follow))


def _record_of(path: Path) -> dict | None:
    """The weights record of a table file (.pb/.pbtxt provenance, int8.prototxt header); None when unreadable."""
    try:
        return (read_int8_prototxt(path).weights_record if path.suffix == ".prototxt"
                else read_table_pb(path).weights_record())
    except ConfigError:
        return None


def load_table(cfg: TuneConfig, ws: Workspace) -> CalibrationTable | None:
    """The table given by --calibration_proto and/or --calibration_model (they must agree), or None."""
    from_pb = from_prototxt = None
    if cfg.calibration_proto is not None:
        from_pb = read_table_pb(cfg.calibration_proto)
        _check_table_fits(from_pb, ws, str(cfg.calibration_proto))
    if cfg.calibration_model is not None:
        imported = rescale_imported(read_int8_prototxt(cfg.calibration_model), ws.fold.sum_scales)
        base = from_pb if from_pb is not None else _weighted_template(ws, cfg.quant)
        if from_pb is None:  # the file says which layer inputs are u8 (is_negative_input: false)
            for layer, unsigned in imported.input_unsigned.items():
                if layer in base.layers:
                    base.blobs[base.layers[layer].input_value].unsigned = unsigned
        from_prototxt, unmatched = apply_imported(base, imported, ws.fold.net)
        if unmatched:
            raise ConfigError(f"{cfg.calibration_model}: keys that match no int8 layer or blob of {ws.proto}: "
                              f"{', '.join(unmatched[:10])}")
        missing = [v for v, e in from_prototxt.blobs.items() if e.calibrator == "unset"
                   and any(v == l.input_value for l in from_prototxt.quantized_layers())]
        if missing and from_pb is None:
            raise ConfigError(f"{cfg.calibration_model}: no quantization_param for the input of "
                              f"{', '.join(missing[:10])}; calibrate first or give --calibration_proto")
    if from_pb is not None and from_prototxt is not None:
        _require_agreement(from_pb, from_prototxt, cfg)
    table = from_pb if from_pb is not None else from_prototxt
    if table is not None:
        table, widened = with_target_weights(ws.converted, table)
        if widened:
            logger.warning("%d layer(s) of the table have 8-bit weights that can overflow the int16 pair sums of "
                           "onnxruntime's AVX2 kernels; their weight thresholds are widened for --target %s: %s",
                           len(widened), table.spec.target.value, ", ".join(widened[:8]))
    if from_pb is not None:
        _check_equalization(from_pb.weights_record(), ws, str(cfg.calibration_proto))
    elif cfg.calibration_model is not None:
        _check_equalization(imported.weights_record, ws, str(cfg.calibration_model))
    return table


def check_table_weights(table: CalibrationTable, ws: Workspace, where: str) -> None:
    """A table read for export or timing (benchmark) must belong to `ws`'s weights: the layers and values of its
    net, and the equalized or corrected weights it was calibrated on (else its thresholds quantize other weights
    than they were measured for, silently)."""
    _check_table_fits(table, ws, where)
    _check_equalization(table.weights_record(), ws, where)


def _check_equalization(record: dict, ws: Workspace, where: str) -> None:
    """A table calibrated with --equalize holds thresholds of the equalized weights: refuse it on the original
    caffemodel without --equalize (and the reverse), where its thresholds would silently be wrong. `record`:
    {"model_sha256", "equalize"} as the table's provenance or the int8 prototxt's header gives them."""
    if not record or "equalize" not in record or not record.get("model_sha256"):
        return  # a table from another tool or an older version: nothing recorded to check
    recorded = record.get("weights_sha256")
    levers = [f"--{k}" for k in LEVERS if record.get(k)]
    if levers and ws.corrections is None:
        if recorded == weights_digest(ws):
            raise ConfigError(f"{where} was calibrated with {' and '.join(levers)}, and {ws.model} holds its "
                              f"corrected weights: give the original caffemodel as --model and this one as "
                              f"--corrected_model, so that the int8 model is measured against the fp32 one")
        raise ConfigError(f"{where} was calibrated with {' and '.join(levers)}: its thresholds belong to the "
                          f"corrected weights written beside it; add --corrected_model <that folder>/"
                          f"corrected.caffemodel (with --model {ws.model}, the fp32 original)")
    if levers and record["model_sha256"] != sha256_file(ws.model):
        raise ConfigError(f"{where} was calibrated on other weights than {ws.model}: {' and '.join(levers)} "
                          f"corrected a caffemodel with sha256 {record['model_sha256'][:12]}..., this one is "
                          f"{sha256_file(ws.model)[:12]}...; the int8 model would be measured against the wrong fp32 "
                          f"model: give the caffemodel it was calibrated from as --model")
    if recorded and recorded == weights_digest(ws):
        return  # exactly the weights the thresholds were measured with
    if recorded and recorded != weights_digest(ws):
        same_file = record["model_sha256"] == sha256_file(ws.model)
        if not same_file or bool(record["equalize"]) == (ws.equalization is not None):
            raise ConfigError(f"{where} was calibrated on other weights than {ws.model}"
                              f"{' with --equalize' if ws.equalization is not None else ''} (its thresholds were "
                              f"measured on weights with sha256 {recorded[:12]}..., these are "
                              f"{weights_digest(ws)[:12]}...): calibrate again on these weights")
    same_model = record["model_sha256"] == sha256_file(ws.model)
    if same_model and bool(record["equalize"]) != (ws.equalization is not None):
        if record["equalize"]:
            raise ConfigError(f"{where} was calibrated with --equalize on {ws.model}: its thresholds belong to the "
                              f"equalized weights; give --equalize too, or --model the equalized.caffemodel "
                              f"written beside it")
        raise ConfigError(f"{where} was calibrated on {ws.model} without --equalize: drop --equalize, or "
                          f"calibrate again with it")


def _weighted_template(ws: Workspace, quant: QuantConfig) -> CalibrationTable:
    """Template whose weight thresholds come from the weights themselves (--weight_method), for files that may
    not carry them; a file's own weight scales then override these."""
    from ..quant.calibrate import layer_weight_thresholds
    from ..quant.calibrators import CalibratorOptions

    table = template_table(ws, quant)
    for e in table.layers.values():
        if e.weight_thresholds is not None:
            e.weight_thresholds = layer_weight_thresholds(ws.converted, e.layer, quant.weight_method, table.spec,
                                                          CalibratorOptions())
            e.weight_method = quant.weight_method
    return table


def _check_table_fits(table: CalibrationTable, ws: Workspace, where: str) -> None:
    names = {l.name for l in ws.fold.net.layers}
    unknown = [l for l in table.layers if l not in names]
    if unknown:
        raise ConfigError(f"{where}: the table names layers that are not in {ws.proto} (after BatchNorm/Scale "
                          f"folding): {', '.join(unknown[:10])}")
    values = set(ws.fold.net.values())
    bad = [v for v in table.blobs if v not in values]
    if bad:
        raise ConfigError(f"{where}: the table has thresholds for values not in {ws.proto}: {', '.join(bad[:10])}")


def _require_agreement(a: CalibrationTable, b: CalibrationTable, cfg: TuneConfig) -> None:
    diffs = []
    for v, e in a.blobs.items():
        if v in b.blobs and not np.isclose(e.threshold, b.blobs[v].threshold, rtol=1e-5):
            diffs.append(f"{e.blob}: {e.threshold:.6g} vs {b.blobs[v].threshold:.6g}")
    if diffs:
        raise ConfigError(f"--calibration_proto {cfg.calibration_proto} and --calibration_model "
                          f"{cfg.calibration_model} disagree on {len(diffs)} threshold(s): {'; '.join(diffs[:8])}")
