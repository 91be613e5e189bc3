"""The reports of the tuning runs (test.sh, tune.sh, main.sh, the accuracy-driven strategies), built from their
results. The wording of each line is what report.log prints; report.html draws the same Document."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.delivery import Delivery
from ..pipeline.tuning import (
    DETECTION_METRICS,
    HeldOut,
    LayerMeasurement,
    LayerwiseRun,
    Measurement,
    Session,
    StrategyRun,
    Sweep,
)
from ..tune.restarts import RESTART_JITTER
from ..tune.tuner import metric_outputs
from .calibration import calibration_sections
from .detections import detection_lines
from .document import Document, Fact, Figure, Item, Level, Notice, Paragraph, Section, Table
from .sections import delivery_section, equalization_items, lever_items, verdict

OBJECTIVE_WORDS = {"model": "the metric on the model outputs", "outputs": "the square distance of the model outputs",
                   "layer": "the square distance of the layer output",
                   "guarded": ("the square distance of the model outputs, each move kept only if the metric "
                               "improves too")}


def header(s: Session) -> list[Item]:
    fp32 = [e.layer for e in s.table.layers.values() if not e.int8]
    return [Fact("images", f"{s.images.description} (in {len(s.images.batches)} batch(es))"),
            Fact("metric", f"{s.metric.name} ({s.metric.direction.value} is better) on "
                           f"{', '.join(metric_outputs(s.ws.converted))}; per-layer differences use square"),
            Fact("int8 layers", f"{len(s.table.quantized_layers())} of {len(s.table.layers)}"
                 + (f" (fp32: {', '.join(fp32)})" if fp32 else ""))]


def _title(s: Session, command: str) -> str:
    return f"int8tune {command}: {s.ws.proto} + {s.ws.model}"


def _detections(items, kind: str = "") -> list[Item]:
    lines = detection_lines(items, kind=kind)
    return [Paragraph(tuple(line for line in lines if line))] if lines else []


def _outputs_table(before: dict[str, float], after: dict[str, float] | None = None) -> list[Item]:
    """Each model output's own square distance (only for models with several outputs)."""
    if len(before) < 2:
        return []
    if after is None:
        return [Table(("output", "square difference"), tuple(before.items()),
                      title="each output's own square difference")]
    rows = tuple((n, before[n], after[n], after[n] / before[n] if before[n] else None) for n in before)
    items: list[Item] = [Table(("output", "before", "after", "after/before"), rows,
                               title="each output's own square difference")]
    worse = [n for n in before if before[n] > 0 and after[n] > 1.1 * before[n]]
    if worse:
        items.append(Notice(Level.WARNING, f"output(s) {', '.join(worse)} got more than 10 % worse while the "
                                           f"objective improved: check them on held-out images"))
    return items


# --- test ------------------------------------------------------------------------------------------------------

def test_document(s: Session, m: Measurement, images_csv: Path, show: int = 20) -> Document:
    items: list[Item] = [Fact(f"model difference ({s.metric.name})", f"{m.model:.6g}")]
    if m.fp32_score is not None:
        items.append(Fact(f"fp32 {s.metric.name}", f"{m.fp32_score:.6g}"))
    items += _outputs_table(m.outputs) + _detections(m.detections)
    order = s.metric.worst_first([d for _, d in m.images])
    head = f"each image's own model difference ({s.metric.name}), worst first"
    if len(m.images) > show:
        head += f" (the {show} worst of {len(m.images)}; all in images.csv)"
    images = Paragraph((head + ":",) + tuple(f"  {m.images[i][0]:<60} {m.images[i][1]:.6g}" for i in order[:show]))
    rows = []
    for name, d in sorted(m.layers.items(), key=lambda kv: -kv[1]):
        e = s.table.layers[name]
        rows.append((name, e.type, s.table.blobs[e.input_value].blob, d))
    layers = Table(("layer", "type", "input blob", "square difference"), tuple(rows),
                   title="every int8 layer's own output difference (square), worst first",
                   sort_by="square difference")
    return Document(_title(s, "test"), (Section("", tuple(header(s))), Section("", tuple(items)),
                                        Section("", (images,)), Section("", (layers,))),
                    files=(images_csv,))


def layer_test_document(s: Session, m: LayerMeasurement) -> Document:
    return Document(_title(s, "test"), (Section("", tuple(header(s)) + (Paragraph.of(
        f"layer {m.layer} (output {m.blob}), all upstream layers int8 as the table says: square difference "
        f"{m.difference:.6g}"),)),))


# --- tune (one blob) ---------------------------------------------------------------------------------------------

def sweep_document(s: Session, sw: Sweep, names: list[str], out: Path) -> Document:
    objective = s.cfg.measure.objective.value
    metric_col = (s.metric.name,) if sw.guarded else ()
    kinds = "" if objective in ("model",) else (
        f" (tune_diff is {'given' if sw.tune_diff_given else 'measured'} in the objective's units: "
        f"{OBJECTIVE_WORDS[objective]}; test.sh's model difference is in {s.metric.name}'s)")
    items: list[Item] = [
        Fact(f"tuned layer {sw.layer}", f"blob {s.table.blobs[sw.value].blob}, threshold "
                                        f"{sw.result.threshold_before:.6g}"),
        Fact("objective", f"{objective} ({OBJECTIVE_WORDS[objective]}); tune_diff {sw.tune_diff:.6g}"
             + (" (given)" if sw.tune_diff_given else " (measured)")),
    ]
    if sw.tune_diff_given and kinds:
        items.append(Notice(Level.INFO, "the candidates' differences are" + kinds))
    if sw.guarded:
        items.append(Paragraph.of(f"guarded: the best candidate must improve {s.metric.name} too (its column)"))
    rows = []
    for name, t in zip(names, sw.trials):
        rows.append((name, t.multiplier, t.threshold, t.difference, t.difference - sw.tune_diff,
                     *((t.extra["metric"],) if sw.guarded else ()), "<- best" if t is sw.best else ""))
    table = Table(("candidate", "multiplier", "threshold", "difference", "vs tune_diff", *metric_col, "best"),
                  tuple(rows))
    best_name = names[sw.trials.index(sw.best)]
    tail = [f"confirmed on every image: x{c.multiplier:.4f} gives {c.difference:.6g}" for c in sw.confirms]
    tail += [f"best: {best_name} (threshold {sw.best.threshold:.6g}, difference {sw.best.difference:.6g}); "
             f"{len(sw.trials)} candidates in {sw.seconds:.2f}s ({sw.seconds / len(sw.trials):.3f}s each)",
             f"each candidate folder holds calibration_table.pb and int8.prototxt under {out}"]
    return Document(_title(s, "tune"), (Section("", tuple(header(s)) + tuple(items)), Section("", (table,)),
                                        Section("", (Paragraph(tuple(tail)),))),
                    files=(out / "best_candidate.txt",))


# --- main.sh -------------------------------------------------------------------------------------------------------

def held_out_section(h: HeldOut, cfg, csv: Path, restart_pick: str, picked: str | None) -> Section:
    name = h.metric.name
    items: list[Item] = [
        Fact(f"model difference ({name})", f"start {h.start:.6g}, delivered {h.tuned:.6g}"
             + (f" ({h.tuned / h.start:.3f}x)" if h.start else ""))]
    if h.restarts:
        scores = ", ".join(f"restart {n + 1} {v:.6g}" for n, v in h.restarts)
        items.append(Paragraph.of(f"each restart: {scores}; the tuning pick is {picked} (--restart_pick "
                                  f"{restart_pick})"))
    if h.worse:
        hint = (": for detectors of small, sparse objects (faces) --objective model can beat the dense default on "
                "held-out photos; compare both on these images (docs/tuning.md)"
                if name in DETECTION_METRICS and cfg.measure.objective.dense else "")
        items.append(Notice(Level.WARNING, f"on these images the delivered table is worse than the start ({name} "
                                           f"{h.start:.6g} -> {h.tuned:.6g}); start/ holds the start table{hint}"))
    items += _detections(h.detections, kind="held-out ")
    items.append(Paragraph.of(f"each image's {name} per table: {csv}"))
    return Section(f"held-out check: {h.images.description} (not tuned on)", tuple(items))


def layer_rows(s: Session, run: LayerwiseRun) -> list[dict]:
    """One row per int8 layer; objective columns from the first restart, a multiplier column per restart."""
    tuning, start, table = run.tuning, run.start, run.table
    first = tuning.restarts[0].results if tuning.restarts else []
    by_blob = {r.blob: r for r in first}
    per_restart = [({b.blob: b.multiplier for b in r.results}, r.number) for r in tuning.restarts]
    rows = []
    for e in table.quantized_layers():
        r = by_blob.get(e.input_value)
        mine = [b for b in tuning.results if b.blob == e.input_value]
        rows.append({
            "layer": e.layer, "type": e.type, "blob": table.blobs[e.input_value].blob,
            "threshold_before": start.blobs[e.input_value].threshold,
            "threshold_after": table.blobs[e.input_value].threshold,
            "multiplier": table.blobs[e.input_value].threshold / start.blobs[e.input_value].threshold,
            "difference_before": run.before_layers.get(e.layer, np.nan),
            "difference_after": run.after_layers.get(e.layer, np.nan),
            "objective_before": r.difference_before if r else np.nan,
            "objective_after": r.difference_after if r else np.nan,
            "candidates": sum(b.candidates for b in mine), "seconds": sum(b.seconds for b in mine),
            "vetoed_by": " ".join(sorted({o for b in mine for o in b.vetoed_by})),
            **({f"multiplier_restart_{k + 1}": m.get(e.input_value, np.nan) for m, k in per_restart}
               if len(per_restart) > 1 else {}),
        })
    return rows


def _veto_items(s: Session, run: LayerwiseRun) -> list[Item]:
    """Where --output_veto refused a move: the blob and the output that would have got much worse."""
    vetoes: dict[str, set[str]] = {}
    for r in run.tuning.restarts:
        for b in r.results:
            vetoes.setdefault(b.blob, set()).update(b.vetoed_by)
    vetoes = {v: outs for v, outs in vetoes.items() if outs}
    if not vetoes:
        return []
    named = "; ".join(f"{run.table.blobs[v].blob} ({', '.join(sorted(outs))})" for v, outs in vetoes.items())
    return [Paragraph.of(f"moves refused at {len(vetoes)} blob(s) because they lowered the summed distance but made "
                         f"one output more than {s.cfg.measure.output_veto:g}x worse (--output_veto; the output in "
                         f"brackets): {named}")]


def _restart_items(s: Session, run: LayerwiseRun) -> list[Item]:
    tuning = run.tuning
    if len(tuning.restarts) <= 1:
        return []
    lines = [f"restarts (each tunes every blob from the start moved by a relative {RESTART_JITTER:g}; objective "
             f"{s.cfg.measure.objective.value} on the tuning images; blobs moved):"]
    for r in tuning.restarts:
        moved = sum(1 for b in r.results if b.threshold_after != b.threshold_before)
        after = r.results[-1].difference_after if r.results else float("nan")
        before = r.results[0].difference_before if r.results else float("nan")
        lines.append(f"  restart {r.number + 1}: {before:.6g} -> {after:.6g}; {moved} moved"
                     + ("" if r.complete else f" (interrupted after {len(r.results)} of {len(run.order)} blobs)"))
    lines.append(f"  tuned/ holds {picked_words(run, s.cfg.delivery.restart_pick)}; restarts/restart_K holds each "
                 f"one's table")
    return [Paragraph(tuple(lines))]


def picked_words(run: LayerwiseRun, pick: str = "best") -> str:
    t = run.tuning
    if t.picked is not None:
        return f"restart {t.picked + 1}" + (" (the best objective)" if len(t.restarts) > 1 and pick == "best" else "")
    return f"the geometric mean of the threshold moves of the {len(t.complete)} complete restart(s)"


def auto_document(s: Session, run: LayerwiseRun, tuned: Delivery, start: Delivery, rows: list[dict],
                  figures: list[Figure], files: list[Path], seconds: float, equalized: Path | None,
                  corrected: Path | None = None) -> Document:
    cfg, metric = s.cfg, s.metric
    search = cfg.blob_search
    setup: list[Item] = header(s) + [
        Fact("objective", f"{cfg.measure.objective.value}; search {search.search} (step ratio {search.step_ratio}, "
                          f"up to {search.steps} steps each way, patience {search.patience})"),
        Fact("starting table", ("calibrated in this run; whole tables scored on the tuning images: "
                                + ", ".join(f"{k} {v:.5g}" for k, v in s.start_scores.items())
                                + f"; started from {s.start_choice}") if s.start_scores else
             ("calibrated in this run" if s.calibration is not None else "given"))]
    setup += equalization_items(s.ws, equalized, _choice(s)) + lever_items(s.ws, corrected)
    result: list[Item] = [Fact(f"model difference ({metric.name})", f"before {run.before_model:.6g}, after "
                                                                     f"{run.after_model:.6g}"
                               + (f" ({run.after_model / run.before_model:.3f}x)" if run.before_model else ""))]
    if run.objective is not None:
        result.append(Fact(f"objective ({OBJECTIVE_WORDS['outputs']})",
                           f"before {run.objective[0]:.6g}, after {run.objective[1]:.6g}"))
        if run.delivered == "tuned" and metric.better(run.before_model, run.after_model):
            result.append(Notice(Level.WARNING, f"{metric.name} on the tuning images got worse ({run.before_model:.6g} "
                                                f"-> {run.after_model:.6g}) while the objective improved; only "
                                                f"held-out images can tell which is right: score start/ and tuned/ "
                                                f"with test.sh on them (or give --validation_list), or tune with "
                                                f"--objective model"))
    result += _outputs_table(run.before_outputs, run.after_outputs)
    result += _veto_items(s, run)
    result += _restart_items(s, run)
    if not run.tuning.restarts and run.selection is not None and run.selection.folds:
        result.append(Paragraph.of("no tuning on every image: the cross-validation folds showed no gain, so its table "
                                   "could not be delivered (see the cross-validation section)"))
    else:
        result.append(Paragraph.of(
            f"tuned {len(run.order)} blob(s) x {len(run.tuning.restarts)} restart(s) in {run.seconds:.1f}s; "
            f"{run.candidates} candidates ({run.replayed} replayed from the trial log), "
            f"{run.seconds / max(run.candidates, 1):.3f}s per candidate"))
    if run.interrupted:
        result.append(Notice(Level.WARNING, "INTERRUPTED: the tables under tuned/ are the best found so far"
                             + (f" (picked from the {len(run.tuning.complete)} complete restart(s))"
                                if run.tuning.complete else
                                f" (restart 1, {len(run.tuning.restarts[0].results) if run.tuning.restarts else 0} "
                                f"of {len(run.order)} blobs)")))
    result += _detections(run.detections, kind="tuning ")
    sections = [Section("", tuple(setup)), Section("tuning", tuple(result))]
    if run.held_out is not None:
        sections.append(held_out_section(run.held_out, cfg, files_named(files, "validation.csv"),
                                         cfg.delivery.restart_pick.value, picked_words(run, cfg.delivery.restart_pick)))
    if run.selection is not None and run.selection.folds:
        sel = run.selection
        dense = all(getattr(f, "dense", None) is not None for f in sel.folds)
        rows_cv = tuple((k + 1, f.tuned_on.count, f.scored_on.count, f.start, f.tuned, metric.gain(f.start, f.tuned),
                         f.noise, *((f.dense.start, f.dense.tuned, f.dense.noise) if dense else ()))
                        for k, f in enumerate(sel.folds))
        sections.append(Section("cross-validation (too few images to hold some back)", (
            Paragraph.of("each fold tunes on half of the images (one restart, from the same start) and scores the "
                         "start and tuned tables on the other half; the table tuned on every image is delivered "
                         "only when it beat the start beyond the noise in both folds, consistently; else the start"),
            Table(("fold", "tuned on", "scored on", f"start {metric.name}", f"tuned {metric.name}", "gain",
                   "noise floor", *(("start square", "tuned square", "square noise") if dense else ())), rows_cv),)))
    elif run.selection is not None:
        sel = run.selection
        picks = tuple((label, score, metric.gain(sel.scores[sel.start], score),
                       sel.gains[label].mean if label in sel.gains else None,
                       sel.gains[label].stderr if label in sel.gains else None,
                       "delivered" if label == sel.delivered else "") for label, score in sel.scores.items())
        sections.append(Section(f"the delivered table, chosen on {sel.images.description}", (
            Table(("table", metric.name, "gain over start", "mean gain per image", "its std. error", ""), picks,
                  title=f"every table it could deliver, on images it did not tune on (noise floor {sel.noise:.3g}: "
                        f"the start moved by a relative 1e-6)", sort_by=metric.name,
                  descending=metric.higher_is_better),)))
    layer_table = Table(("layer", "blob", "T before", "T after", "x", "diff before", "diff after"),
                        tuple((r["layer"], r["blob"], r["threshold_before"], r["threshold_after"], r["multiplier"],
                               r["difference_before"], r["difference_after"]) for r in rows),
                        title="every int8 layer (threshold of its input; its own output's square difference)",
                        digits=4, csv=files_named(files, "layers.csv"))
    sections.append(Section("layers", (layer_table, *figures)))
    if s.calibration is not None:  # the calibration's own difference check, per layer (calibration/ has the rest)
        sections += calibration_sections(s.calibration, s.ws)[1:2]
    deployed = delivery_section(tuned, "deployed model (tuned/)")
    sections.append(deployed)
    summary = _delivered(run, metric) + verdict(deployed) + [Fact("total time", f"{seconds:.1f}s")]
    return Document(_title(s, "auto"), tuple(sections), tuple(tuned.files.values()) + tuple(start.files.values())
                    + tuple(files), tuple(summary))


def _delivered(run: LayerwiseRun, metric) -> list[Item]:
    """What tuned/ holds and why, first thing in the report."""
    sel = run.selection
    if sel is not None and sel.source.value == "cross_validation":
        return _cross_validated_words(run, metric)
    if sel is not None:
        where = {"validation_list": "the held-out images", "held_back": "the images held back from tuning"}[
            sel.source.value]
        scores = sel.scores
        if sel.delivered == sel.default:
            why = (f"on {where} no other table was better beyond the noise floor {sel.noise:.3g} and consistently "
                   f"over the images ({metric.name}: start {scores[sel.start]:.6g}, tuned "
                   f"{scores.get('tuned', scores[sel.start]):.6g})")
        elif sel.decided_by != metric.name:
            why = (f"{metric.name} could not tell the tables apart on {where}; the square distance of the outputs "
                   f"did, consistently over the images ({metric.name}: {scores[sel.delivered]:.6g}, start "
                   f"{scores[sel.start]:.6g})")
        else:
            why = (f"on {where} it beat the tuned table beyond the noise floor {sel.noise:.3g} and consistently over "
                   f"the images ({metric.name}: {scores[sel.delivered]:.6g}, tuned "
                   f"{scores.get('tuned', scores[sel.start]):.6g}, start {scores[sel.start]:.6g})")
        what = picked_words(run) if sel.delivered == "tuned" else f"the {sel.delivered} table"
        start, default = scores[sel.start], scores.get(sel.default, scores[sel.start])
        if sel.delivered == sel.default and metric.gain(start, default) < -sel.noise:
            # kept by the rule (a few images are not evidence), but the user must hear of it
            return [Notice(Level.WARNING, f"delivered (tuned/): {what}; but on {where} it scored worse than the start "
                                          f"beyond the noise floor {sel.noise:.3g} ({metric.name}: start {start:.6g}, "
                                          f"tuned {default:.6g}), not consistently over the images as the start "
                                          f"needs to be delivered instead. start/ holds the start table: score both "
                                          f"on other images (test.sh) or give --validation_list")]
        return [Notice(Level.GOOD, f"delivered (tuned/): {what}; {why}")]
    h = run.held_out
    if h is not None:
        why = (f"held-out {metric.name}: start {h.start:.6g}, tuned {h.tuned:.6g}")
        level = Level.WARNING if h.worse else Level.GOOD
        return [Notice(level, f"tuned/ holds {picked_words(run)}; {why}")]
    return [Notice(Level.INFO, f"tuned/ holds {picked_words(run)}; {metric.name} on the tuning images "
                               f"{run.before_model:.6g} -> {run.after_model:.6g}; no held-out images were given "
                               f"(--validation_list): the tuning images alone cannot show over-fitting")]


def _cross_validated_words(run: LayerwiseRun, metric) -> list[Item]:
    """What tuned/ holds after a cross-validation (a handful of images): the tuned table only when both folds
    showed its gain on the half they did not tune on."""
    sel = run.selection
    folds = "; ".join(f"fold {k}: {_fold_verdict(metric, f)}" for k, f in enumerate(sel.folds, 1))
    scores = (f"{metric.name} on the held-out halves: start {sel.scores['start']:.6g}, tuned on the other half "
              f"{sel.scores['tuned']:.6g}")
    if sel.delivered == "tuned":
        by = "" if sel.decided_by == metric.name else f" ({metric.name} saw no change; the square distance did)"
        return [Notice(Level.GOOD, f"delivered (tuned/): {picked_words(run)}; in both folds of a cross-validation the "
                                   f"table tuned on half of the images beat the start on the other half beyond the "
                                   f"noise and consistently{by} ({scores}; {folds})")]
    if not run.tuning.restarts:
        kept = "so the tuning on every image was not run (--holdout 0 runs it and delivers its table)"
    elif run.tuning.picked is not None and len(run.tuning.restarts) > 1:
        kept = f"the tuned table, {picked_words(run)}, is in restarts/restart_{run.tuning.picked + 1}/"
    else:
        kept = "the tuned table is not kept (with --restarts 2 or more each restart's table is, under restarts/)"
    return [Notice(Level.INFO, f"delivered (tuned/): the start table; tuning did not show a gain on images it did not "
                               f"tune on ({scores}; {folds}). With a handful of images the start is delivered unless "
                               f"both folds of the cross-validation show the tuned table better beyond the noise and "
                               f"consistently; {kept}" + ("" if not run.tuning.restarts else
                                                          ": score it on other images (test.sh)")
                               + "; --validation_list with more images decides on them")]


def _fold_verdict(metric, fold) -> str:
    """One fold's tuned table against the start on its held-out half, in words."""
    gain = metric.gain(fold.start, fold.tuned)
    if abs(gain) <= fold.noise:
        return f"level within its noise floor {fold.noise:.3g}"
    return f"{'better' if gain > 0 else 'worse'} by {abs(gain):.3g}, beyond its noise floor {fold.noise:.3g}"


def files_named(files: list[Path], name: str) -> Path | None:
    return next((f for f in files if Path(f).name == name), None)


# --- accuracy-driven strategies -------------------------------------------------------------------------------------

def strategy_document(s: Session, run: StrategyRun, delivery: Delivery, files: list[Path], seconds: float,
                      equalized: Path | None, corrected: Path | None = None) -> Document:
    from ..tune.strategies import int8_share

    cfg, metric = s.cfg, s.metric
    fmt = (lambda v: f"{100 * v:.2f} %") if metric.higher_is_better else (lambda v: f"{v:.6g}")
    int8, total = int8_share(run.table)
    fp32_layers = [e.layer for e in run.table.layers.values() if not e.int8]
    items: list[Item] = header(s) + [
        Fact("goal", f"{metric.name} {'>=' if metric.higher_is_better else '<='} {cfg.accuracy.target_accuracy}"
             if cfg.accuracy.target_accuracy is not None else f"accuracy drop <= {cfg.accuracy.threshold} points"),
        Fact(metric.name, f"fp32 {fmt(run.fp32)}, int8 before {fmt(run.initial) if run.initial is not None else '?'}, "
                          f"best {fmt(run.best) if run.best is not None else '?'}"),
        Notice(Level.GOOD if run.goal_met else Level.WARNING,
               f"goal {'MET' if run.goal_met else 'NOT MET'}; {int8}/{total} quantizable layers int8"
               + (f"; fp32: {', '.join(fp32_layers)}" if int8 < total else ""))]
    if run.evaluations is not None:
        items.append(Paragraph.of(f"{run.evaluations} evaluations on {s.images.count} images, {run.seconds:.1f}s"))
    if run.interrupted:
        items.append(Notice(Level.WARNING, "INTERRUPTED: the tables under tuned/ are the best found so far"))
    items += equalization_items(s.ws, equalized, _choice(s)) + lever_items(s.ws, corrected)
    sections = [Section("", tuple(items))]
    if run.held_out is not None:
        sections.append(held_out_section(run.held_out, cfg, files_named(files, "validation.csv"),
                                         cfg.delivery.restart_pick.value, "the strategy's best table"))
    sections.append(delivery_section(delivery, "deployed model (tuned/)"))
    return Document(_title(s, f"auto --strategy {cfg.accuracy.strategy}"), tuple(sections),
                    tuple(delivery.files.values()) + tuple(files), (Fact("total time", f"{seconds:.1f}s"),))


def _choice(s: Session):
    """What decided --equalize when the run calibrated with it left to its default."""
    return s.calibration.equalize_choice if s.calibration is not None else None
