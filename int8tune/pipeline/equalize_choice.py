"""--equalize left to its default: calibrate the net as given and equalized, and keep the one whose int8 model is
closer to fp32 on the calibration images.

Why a measurement and not a rule: with bias correction, cross-layer equalization lowered the held-out difference of
yolov3_nano_voc by 29 %, yoloface_500k_v2 by 33 % and landmark106 by 10 %, was level on res10_ssd_face and raised
SqueezeNet's by 23 %. The calibration's own model difference (square distance of the outputs on the measurement
images, in-sample on purpose: nothing else is there when a run calibrates) picked the held-out winner on four of
those five and a tie on the fifth (docs/weight_levers.md, "Choosing --equalize per model"). It costs one more
calibration, and none on nets without a Conv -> ReLU/PReLU -> Conv pair to equalize.

With AdaRound on (the default), both ways are compared without it and AdaRound then learns the rounding of the
weights kept: once, not twice, and the comparison stays one AdaRound cannot tilt. On SqueezeNet the two ways with
AdaRound differed by 1 % on the calibration images (0.001127 as given, 0.001115 equalized) and that pick lost on
held-out images (top-1 agreement 0.935 against 0.965), where the comparison before AdaRound (0.00177 / 0.00202)
picked the winner; on the four other shared models the two comparisons agree (docs/weight_levers.md)."""

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
    before_adaround: bool = False  # both ways compared without AdaRound, which then rounded the weights kept

    def describe(self) -> str:
        kept = "equalized" if self.equalize else "as given"
        then = "; AdaRound then learned the rounding of those" if self.before_adaround else ""
        return (f"--equalize chosen by measurement (the default): on the {self.images} calibration image(s) the "
                f"int8 model differs from fp32 by {self.plain:.6g} with the weights as given and {self.equalized:.6g} "
                f"with {self.pairs} pair(s) equalized{' (before AdaRound)' if self.before_adaround else ''}: kept "
                f"the weights {kept}{then} (--equalize / --no_equalize decide instead)")


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
                "equalized%s, to keep the one closer to fp32", pairs, " (before AdaRound)" if quant.adaround else "")
    trial = replace(quant, adaround=False, by_default=tuple(k for k in quant.by_default if k != "adaround"))
    plain = calibrate(ws, images, replace(trial, equalize=False), settings=_with(settings, False), **kw)
    eq = calibrate(equalized(ws), images, replace(trial, equalize=True), settings=_with(settings, True), **kw)
    assert plain.model_difference is not None and eq.model_difference is not None  # measured: `measure` given
    choice = EqualizeChoice(eq.model_difference < plain.model_difference, plain.model_difference,
                            eq.model_difference, pairs, measure.count, before_adaround=bool(quant.adaround))
    logger.info("%s", choice.describe())
    if quant.adaround:  # the rounding learned once, on the weights kept, and the table calibrated for it
        # The two trials are done with: drop them before the third calibration. Each holds its measurement's
        # onnxruntime sessions and what they computed (SqueezeNet, 100 images, sessions with memory arenas as before
        # 2026-12-07: the run's peak 3.9 GB with them alive, 3.0 GB without).
        del plain, eq
        kept = calibrate(equalized(ws) if choice.equalize else ws, images, replace(quant, equalize=choice.equalize),
                         settings=_with(settings, choice.equalize), **kw)
    else:
        kept = eq if choice.equalize else plain
    kept.equalize_choice = choice
    return kept


def _with(settings: dict | None, equalize: bool) -> dict | None:
    """The run's settings as the table's provenance records them: the decided value, which says which weights the
    thresholds belong to (test.sh and tune.sh follow it)."""
    if settings is None or "quant" not in settings:
        return settings
    return {**settings, "quant": {**settings["quant"], "equalize": equalize}}
