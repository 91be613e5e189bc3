"""`int8tune test`, `int8tune tune` and `int8tune auto` (test.sh, tune.sh, main.sh): the CLI front end.

test   difference of one layer's output (--int8_layer) or of the model plus every int8 layer's own difference
tune   sweep one layer's threshold (--tune_layer), write every candidate int8 model, name the best
auto   the whole loop (workflow.auto): calibrate if no table is given, tune, deliver, report

Each reads the images of the data list, runs the pipeline and writes the report (report.log, report.html).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RestartPick, TuneConfig
from ..errors import ConfigError
from ..executors import Executor, open_executor
from ..outputs import atomic_write_text
from ..pipeline.tables import corrected_beside, with_table_equalize
from ..pipeline.tuning import measure, measure_layer, open_session, sweep
from ..pipeline.workspace import Workspace, load_workspace
from ..quant.formats import unscale_weights, write_int8_prototxt, write_table_pb
from ..report.csvs import write_csv
from ..report.tuning import layer_test_document, sweep_document, test_document
from ..report.write import write_report
from .common import images_of


def _workspace(cfg: TuneConfig) -> tuple[TuneConfig, Workspace]:
    """The model as the run's table belongs to it: equalized as the table records (unless --equalize or
    --no_equalize says; without a table, calibrating decides, pipeline/equalize_choice.py), with the corrected
    weights beside the table or given."""
    cfg = with_table_equalize(cfg)
    return cfg, load_workspace(cfg.model.proto, cfg.model.model, cfg.quant.equalize, cfg.model.input_shape,
                               cfg.model.corrected_model or corrected_beside(cfg.calibration_proto,
                                                                             cfg.calibration_model))


def _open(cfg: TuneConfig, prepare_image, executor: Executor, **kw):
    cfg, ws = _workspace(cfg)
    items, images = images_of(cfg.data, prepare_image, ws)
    return open_session(cfg, ws, images, executor=executor, **kw)


def _finish(doc, out: Path) -> int:
    text, paths = write_report(doc, out)
    print(text + f"wrote {paths[0]} and {paths[1]}")
    return 0


def run_test(cfg: TuneConfig, prepare_image) -> int:
    print("int8tune test\n" + cfg.describe())
    with open_executor(cfg.run.execution()) as executor:  # the report measures too: the workers stay until it is done
        s = _open(cfg, prepare_image, executor, need_table=True)
        if cfg.int8_layer:
            return _finish(layer_test_document(s, measure_layer(s, cfg.int8_layer)), cfg.output_path)
        m = measure(s)
        csv = write_csv(cfg.output_path / "images.csv", {"image": [n for n, _ in m.images],
                                                          s.metric.name: [d for _, d in m.images]})
        return _finish(test_document(s, m, csv), cfg.output_path)


def run_tune(cfg: TuneConfig, prepare_image) -> int:
    print("int8tune tune\n" + cfg.describe())
    if not cfg.tune_layer:
        raise ConfigError("--tune_layer is required: the int8 layer whose input threshold to sweep")
    with open_executor(cfg.run.execution()) as executor:
        s = _open(cfg, prepare_image, executor, need_table=True, full_search=True)
        sw = sweep(s, cfg.tune_layer, cfg.tune_diff)
        names = []
        for k, t in enumerate(sw.trials):
            name = f"candidate_{k:02d}_x{t.multiplier:.4f}"
            names.append(name)
            candidate = s.table.with_threshold(sw.value, t.threshold) if t.multiplier != 1.0 else s.table
            write_table_pb(candidate, cfg.output_path / name / "calibration_table.pb")
            write_int8_prototxt(unscale_weights(candidate, s.ws.fold.sum_scales), s.ws.proto,
                                cfg.output_path / name / "int8.prototxt")
        atomic_write_text(cfg.output_path / "best_candidate.txt", names[sw.trials.index(sw.best)] + "\n")
        return _finish(sweep_document(s, sw, names, cfg.output_path), cfg.output_path)


def run_auto(cfg: TuneConfig, prepare_image) -> int:
    from ..workflow import auto

    print("int8tune auto\n" + cfg.describe())
    if cfg.delivery.restart_pick is RestartPick.VALIDATION and cfg.delivery.validation_list is None:
        raise ConfigError("--restart_pick validation scores the restarts on held-out images: give "
                          "--validation_list")
    cfg, ws = _workspace(cfg)
    items, images = images_of(cfg.data, prepare_image, ws)
    held_out = None
    if cfg.delivery.validation_list is not None:
        held_out = _held_out_images(cfg, prepare_image, ws, items)
    result = auto(cfg, ws, images, held_out_images=held_out)
    print(result.report + f"wrote {cfg.output_path / 'report.log'} and {cfg.output_path / 'report.html'}")
    if result.interrupted:
        return 130
    return 0 if cfg.accuracy.layerwise or result.goal_met else 3


def _held_out_images(cfg: TuneConfig, prepare_image, ws, tuning_items):
    """The --validation_list images (same preprocessing); images that are also tuning images are named in a
    warning: they do not measure anything held out."""
    from dataclasses import replace

    from ..log import logger

    data = replace(cfg.data, data_list=cfg.delivery.validation_list, data_limit=None)
    items, images = images_of(data, prepare_image, ws, what="of --validation_list")
    tuned_on = {Path(i.path).resolve() for i in tuning_items}
    shared = [str(i.path) for i in items if Path(i.path).resolve() in tuned_on]
    if shared:
        logger.warning("--validation_list: %d of its %d image(s) are tuning images too (%s): they are not held "
                       "out", len(shared), len(items), ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else ""))
    return images
