"""The model as every run sees it: the Caffe net as written, folded (BatchNorm/Scale merged into convolutions, as
int8 engines do, and through Eltwise sums into the convolutions feeding them), equalized when asked, and
converted to ONNX. With the weight levers (--adaround, --bias_correction, pipeline/levers.py) or a caffemodel they
wrote (--corrected_model), the int8 model quantizes other weights than the fp32 model it is measured against:
`converted` holds the int8 model's weights and `reference` the fp32 model the user gave."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..caffe.equalize import Equalization, equalizable_pairs, equalize_net, write_equalized_caffemodel
from ..caffe.fold import FoldResult, fold_batchnorm_scale, fold_through_sums
from ..caffe.loader import load_net
from ..caffe.net import CaffeNet
from ..convert.converter import ConvertedModel, convert_net
from ..log import logger

if TYPE_CHECKING:
    from .levers import Corrections


@dataclass
class Workspace:
    proto: Path
    model: Path
    net: CaffeNet  # as written
    fold: FoldResult  # BatchNorm/Scale merged into convolutions
    converted: ConvertedModel  # the folded net in ONNX
    equalization: Equalization | None = None  # with --equalize: what was rescaled (net/fold/converted include it)
    # With weight levers: the fp32 model the int8 model is measured against (the net as given, equalized when
    # asked); None when it is `converted` itself. `net`, `fold` and `converted` then hold the corrected weights.
    reference: ConvertedModel | None = None
    corrections: Corrections | None = None  # what the levers did, or the file they were read from

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.net.inputs.values()))

    @property
    def fp32(self) -> ConvertedModel:
        """The fp32 model every difference is measured against."""
        return self.reference if self.reference is not None else self.converted


def load_workspace(proto: Path, model: Path, equalize: bool | None = False,
                   input_shape: tuple[int, ...] | None = None, corrected_model: Path | None = None) -> Workspace:
    """`input_shape`: run a fully convolutional net at another input size than its prototxt says.
    `equalize`: True equalizes the weights; None (not decided yet, pipeline/equalize_choice.py) loads them as given.
    `corrected_model`: the caffemodel written by --adaround/--bias_correction (corrected.caffemodel): the int8
    model quantizes its weights, and is measured against `model` (equalized with `equalize`)."""
    net = _load(proto, model, input_shape)
    ws = _build(Path(proto), Path(model), net, equalize=bool(equalize))
    if corrected_model is None:
        return ws
    from .levers import Corrections

    corrected = _load(proto, corrected_model, input_shape)
    _check_same_structure(ws.net, corrected, corrected_model)
    return with_weights(ws, corrected, Corrections(source=Path(corrected_model)))


def equalized(ws: Workspace) -> Workspace:
    """`ws` (weights as given, no levers applied) with its weights equalized, as load_workspace(equalize=True)
    would load it, without reading the files again."""
    if ws.equalization is not None or ws.corrections is not None:
        raise ValueError("equalized() takes the workspace of the weights as given")
    return _build(ws.proto, ws.model, ws.net, equalize=True)


def _build(proto: Path, model: Path, net: CaffeNet, *, equalize: bool) -> Workspace:
    equalization = None
    if equalize:
        equalization = equalize_net(net)
        net = equalization.net
        logger.info("equalized %d Conv -> ReLU/PReLU -> Conv pair(s) (%d layer(s) rescaled; fp32 unchanged)",
                    len(equalization.pairs), len(equalization.changed))
    fold = fold_through_sums(fold_batchnorm_scale(net))
    if fold.folded:
        logger.info("folded %d BatchNorm/Scale layer(s) into %d convolution(s), as int8 engines do",
                    sum(len(v) for v in fold.folded.values()), len(fold.folded))
    if fold.through_sums:
        logger.info("folded %d BatchNorm/Scale layer(s) after %d Eltwise sum(s) into the convolutions feeding them "
                    "(the sums stay int8 in onnxruntime)", sum(len(v) for v in fold.through_sums.values()),
                    len(fold.through_sums))
    return Workspace(proto, model, net, fold, convert_net(fold.net), equalization)


def _load(proto: Path, model: Path, input_shape: tuple[int, ...] | None) -> CaffeNet:
    net = load_net(proto, model)
    if input_shape is not None:
        from ..caffe.reshape import with_input_shape

        net = with_input_shape(net, tuple(input_shape))
    return net


def _check_same_structure(net: CaffeNet, other: CaffeNet, path: Path) -> None:
    """The corrected caffemodel must hold the same blobs as the model (only their values differ)."""
    import numpy as np

    theirs = {l.name: [np.shape(b) for b in l.blobs] for l in other.layers}
    for layer in net.layers:
        if theirs.get(layer.name) != [np.shape(b) for b in layer.blobs]:
            from ..errors import ConfigError

            raise ConfigError(f"--corrected_model {path}: layer {layer.name!r} holds blobs of shapes "
                              f"{theirs.get(layer.name)}, the model {[np.shape(b) for b in layer.blobs]}; it was "
                              f"not written for this net")


def with_weights(ws: Workspace, net: CaffeNet, corrections: Corrections) -> Workspace:
    """`ws` with other weights for the int8 model (the same prototxt): folded and converted again; the fp32
    reference stays what it was."""
    fold = fold_through_sums(fold_batchnorm_scale(net))
    return replace(ws, net=net, fold=fold, converted=convert_net(fold.net), reference=ws.fp32,
                   corrections=corrections)


def weights_digest(ws: Workspace) -> str:
    """sha256 of the weights as the tool runs them (after --equalize, before folding): a table calibrated on them
    records it, and is refused on other weights. The equalized.caffemodel written by --equalize has the same
    digest as the original caffemodel run with --equalize."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for layer in ws.net.layers:
        for k, blob in enumerate(layer.blobs):
            h.update(f"{layer.name}/{k}:{np.shape(blob)}".encode())
            h.update(np.ascontiguousarray(blob, dtype=np.float32).tobytes())
    return h.hexdigest()


def save_equalized(ws: Workspace, out: Path) -> Path | None:
    """With --equalize: `out`/equalized.caffemodel, the weights every table of this run belongs to."""
    if ws.equalization is None:
        return None
    return write_equalized_caffemodel(ws.model, ws.equalization, out / "equalized.caffemodel")


def save_corrected(ws: Workspace, out: Path) -> Path | None:
    """With --adaround/--bias_correction: `out`/corrected.caffemodel, the int8 model's weights (equalized too
    with --equalize): every table of this run belongs to them."""
    from ..caffe.unfold import write_caffemodel

    c = ws.corrections
    if c is None or c.source is not None:
        return None
    layers = set(c.changed) | (set(ws.equalization.changed) if ws.equalization is not None else set())
    blobs = {l.name: l.blobs for l in ws.net.layers if l.name in layers}
    return write_caffemodel(ws.model, blobs, out / CORRECTED)


CORRECTED = "corrected.caffemodel"


def equalizable(ws: Workspace) -> int:
    """Conv -> ReLU/PReLU -> Conv pairs --equalize would rescale (0 when already equalized)."""
    return 0 if ws.equalization is not None else equalizable_pairs(ws.net)
