"""--equalize left to its default: calibrate the net as given and equalized, and keep the one whose int8 model is
closer to fp32 on the calibration images.

Why a measurement and not a rule: with bias correction, cross-layer equalization lowered the held-out difference of
yolov3_nano_voc by 29 %, yoloface_500k_v2 by 33 % and landmark106 by 10 %, was level on res10_ssd_face and raised
SqueezeNet's by 23 %. The calibration's own model difference (square distance of the outputs on the measurement
images, in-sample on purpose: nothing else is there when a run calibrates) picked the held-out winner on four of
those five and a tie on the fifth (docs/weight_levers.md, "Choosing --equalize per model"). It costs one more
calibration, and none on nets without a Conv -> ReLU/PReLU -> Conv pair to equalize."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..caffe.equalize import equalizable_pairs
from ..config import QuantConfig
from ..executors import Executor
from ..log import logger
from .calibration import Calibration, calibrate
from .images import Images
from .workspace import Workspace, equalized


@dataclass(frozen=True)
class EqualizeChoice:
    """What the run measured to decide: each way's model difference on the measurement images."""

    equalize: bool  # the way kept
    plain: float  # square distance of the outputs from fp32, weights as given
    equalized: float  # the same with the weights equalized
    pairs: int  # Conv -> ReLU/PReLU -> Conv pairs equalization rescales
    images: int  # the measurement images both were scored on

    def describe(self) -> str:
        kept = "equalized" if self.equalize else "as given"
        return (f"--equalize chosen by measurement (the default): on the {self.images} calibration image(s) the "
                f"int8 model differs from fp32 by {self.plain:.6g} with the weights as given and {self.equalized:.6g} "
                f"with {self.pairs} pair(s) equalized: kept the weights {kept} (--equalize / --no_equalize decide "
                f"instead)")


def calibrate_choosing(ws: Workspace, images: Images, quant: QuantConfig, *, measure: Images | None,
                       simplified: bool = False, threads: int = 2, settings: dict | None = None,
                       executor: Executor | None = None) -> Calibration:
    """pipeline.calibration.calibrate, with `quant.equalize` None (the default) decided: where the net has pairs to
    equalize and the calibration measures its difference, both ways are calibrated and the lower difference is
    kept (a tie: the weights as given). `ws` holds the weights as given. Returns the calibration kept: its `ws`
    equalized or not, its `equalize_choice` what was measured (None when nothing was chosen by measurement)."""
    kw = dict(measure=measure, simplified=simplified, threads=threads, executor=executor)
    if quant.equalize is not None:
        return calibrate(ws, images, quant, settings=settings, **kw)
    pairs = equalizable_pairs(ws.net)
    if pairs == 0 or simplified or measure is None or ws.corrections is not None:
        why = ("no Conv -> ReLU/PReLU -> Conv pair to equalize" if pairs == 0 else
               "the weights are --corrected_model's" if ws.corrections is not None else "nothing is measured")
        logger.info("--equalize left to its default: weights as given (%s)", why)
        return calibrate(ws, images, replace(quant, equalize=False), settings=_with(settings, False), **kw)
    logger.info("--equalize left to its default: calibrating with the weights as given and with %d pair(s) "
                "equalized, to keep the one closer to fp32", pairs)
    plain = calibrate(ws, images, replace(quant, equalize=False), settings=_with(settings, False), **kw)
    eq = calibrate(equalized(ws), images, replace(quant, equalize=True), settings=_with(settings, True), **kw)
    assert plain.model_difference is not None and eq.model_difference is not None  # measured: `measure` given
    choice = EqualizeChoice(eq.model_difference < plain.model_difference, plain.model_difference,
                            eq.model_difference, pairs, measure.count)
    logger.info("%s", choice.describe())
    kept = eq if choice.equalize else plain
    kept.equalize_choice = choice
    return kept


def _with(settings: dict | None, equalize: bool) -> dict | None:
    """The run's settings as the table's provenance records them: the decided value, which says which weights the
    thresholds belong to (test.sh and tune.sh follow it)."""
    if settings is None or "quant" not in settings:
        return settings
    return {**settings, "quant": {**settings["quant"], "equalize": equalize}}
