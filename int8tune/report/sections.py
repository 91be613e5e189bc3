"""Report pieces several commands share: the delivered files (QDQ census and verification), equalization, the
weight levers."""

from __future__ import annotations

from pathlib import Path

from ..pipeline.delivery import Delivery
from ..pipeline.equalize_choice import EqualizeChoice
from ..pipeline.workspace import Workspace, equalizable
from ..quant.adaround import RoundedLayer
from ..quant.bias_correction import CorrectedLayer
from ..quant.census import render_census
from ..quant.verify import render_export_check
from .document import Fact, Item, Level, Notice, Paragraph, Section


def delivery_section(d: Delivery, title: str = "deployed model") -> Section:
    """The QDQ file as onnxruntime runs it on this CPU, and whether it computes what was measured."""
    target = d.table.spec.target.value
    if d.qdq is None:
        return Section(title, (Notice(Level.WARNING, f"QDQ export skipped: {d.qdq_skipped}"),)
                       if d.qdq_skipped else ())
    items: list[Item] = [Paragraph.of(f"QDQ model {d.qdq} (target {target}), as onnxruntime runs it:",
                                      *("  " + line for line in render_census(d.census)))] if d.census else []
    if d.float_outputs:
        items.append(Paragraph(tuple(f"  output in float: {layer} ({why})" for layer, why in d.float_outputs.items())))
    if not d.table.spec.target.onnxruntime:
        items.append(Notice(Level.INFO, f"the table is made for {target} (signed int8, its own rounding); this file "
                                         f"is onnxruntime's reading of it, not what {target} computes"))
    if d.check is not None:
        lines = render_export_check(d.check, d.qdq.name, d.check_images)
        at = next(k for k, line in enumerate(lines) if line.startswith("the deployed model "))  # the verdict
        items.append(Paragraph(tuple(lines[:at])))
        items.append(Notice(Level.GOOD if d.check.agrees else Level.WARNING, lines[at]))
        if lines[at + 1:]:
            items.append(Paragraph(tuple(lines[at + 1:])))
    return Section(title, tuple(items))


def verdict(section: Section) -> list[Item]:
    """The deployed-model check's verdict of a delivery section (for a report's summary), if it has one."""
    return [i for i in section.items if isinstance(i, Notice) and i.level is not Level.INFO][:1]


def equalization_items(ws: Workspace, written: Path | None, choice: EqualizeChoice | None = None) -> list[Item]:
    """Equalized: which weights the tables belong to; not: a hint when the net has pairs to equalize. `choice`:
    --equalize left to its default, what the run measured to decide (first)."""
    chosen = [Notice(Level.INFO, choice.describe())] if choice is not None else []
    if ws.equalization is None:
        n = equalizable(ws)
        return chosen or ([Notice(Level.INFO, f"{n} Conv -> ReLU/PReLU -> Conv pair(s) could be equalized first "
                                              f"(--equalize: fp32 unchanged; deploy the equalized.caffemodel it "
                                              f"writes; docs/equalization.md)")] if n else [])
    eq = ws.equalization
    head = f"equalized {len(eq.pairs)} Conv -> ReLU/PReLU -> Conv pair(s) ({len(eq.changed)} layer(s) rescaled; fp32 " \
           f"outputs unchanged)"
    if ws.corrections is not None:  # the weight levers corrected the equalized weights: their file is the one
        lines = [f"{head}: the corrected weights below are these, corrected; {written} holds them equalized only"]
    else:
        lines = [f"{head}: the thresholds are for {written}; deploy it with {ws.proto} and the table (test.sh/tune.sh "
                 f"equalize --model {ws.model} as the table records, or take --model {written})"]
    lines += [f"  {p.describe()}" for p in eq.pairs[:10]]
    if len(eq.pairs) > 10:
        lines.append(f"  ... and {len(eq.pairs) - 10} more")
    return chosen + [Paragraph(tuple(lines))]


def lever_items(ws: Workspace, written: Path | None) -> list[Item]:
    """With --adaround/--bias_correction: what they did and which weights the tables belong to; with
    --corrected_model: which weights the int8 model quantizes."""
    c = ws.corrections
    if c is None:
        return []
    if c.source is not None:
        return [Fact("int8 weights", f"{c.source} (corrected by the weight levers), measured against the fp32 "
                                     f"{ws.model}")]
    lines = []
    if c.adaround:
        done = [r for r in c.adaround if isinstance(r, RoundedLayer)]
        before, after = sum(r.error_nearest for r in done), sum(r.error for r in done)
        channels = sum(int(r.rounded.sum()) for r in done)
        default = "on by default; --no_adaround: off; " if "adaround" in c.by_default else ""
        solver = f" ({default}solver: {c.solver})" if c.solver else (f" ({default[:-2]})" if default else "")
        lines.append(f"AdaRound{solver}: {channels} of {sum(r.rounded.size for r in done)} output channel(s) of "
                     f"{len(done)} layer(s) rounded as learned, {sum(r.flipped for r in done)} weight(s) the other "
                     f"way than to nearest; the layers' output error on their calibration inputs x"
                     f"{after / before if before > 0 else 1.0:.3f} of round-to-nearest's (summed)")
        lines += [f"  {r.describe()}" for r in done[:8]]
        lines += [f"  ... and {len(done) - 8} more"] if len(done) > 8 else []
        lines += [f"  {r.layer}: {r.reason}" for r in c.adaround if not isinstance(r, RoundedLayer)]
    if c.bias:
        done = [r for r in c.bias if isinstance(r, CorrectedLayer)]
        removed = max(float(abs(r.shift).max()) for r in done)
        left = max((float(abs(r.residual).max()) for r in done if r.residual is not None), default=0.0)
        default = " (on by default; --no_bias_correction: off)" if "bias_correction" in c.by_default else ""
        lines.append(f"bias correction{default}: {len(done)} layer(s), mean int8 error per channel up to "
                     f"{removed:.3g} removed, {left:.3g} left (what the int32 bias step allows)")
        lines += [f"  {r.layer}: {r.reason}" for r in c.bias if not isinstance(r, CorrectedLayer)]
    lines += [f"  note: {n}" for n in c.notes]
    lines.append(f"the tables belong to the corrected weights {written}: deploy them with {ws.proto} and the table "
                 f"(test.sh/tune.sh find it beside the tables, or give --corrected_model {written} with --model "
                 f"{ws.model}; differences are measured against {ws.model})")
    return [Paragraph(tuple(lines))]
