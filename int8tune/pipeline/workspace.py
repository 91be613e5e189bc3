"""The model as every run sees it: the Caffe net as written, folded (BatchNorm/Scale merged into convolutions, as
int8 engines do, and through Eltwise sums into the convolutions feeding them), equalized when asked, and
converted to ONNX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..caffe.equalize import Equalization, equalizable_pairs, equalize_net, write_equalized_caffemodel
from ..caffe.fold import FoldResult, fold_batchnorm_scale, fold_through_sums
from ..caffe.loader import load_net
from ..caffe.net import CaffeNet
from ..convert.converter import ConvertedModel, convert_net
from ..log import logger


@dataclass
class Workspace:
    proto: Path
    model: Path
    net: CaffeNet  # as written
    fold: FoldResult  # BatchNorm/Scale merged into convolutions
    converted: ConvertedModel  # the folded net in ONNX
    equalization: Equalization | None = None  # with --equalize: what was rescaled (net/fold/converted include it)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.net.inputs.values()))


def load_workspace(proto: Path, model: Path, equalize: bool = False,
                   input_shape: tuple[int, ...] | None = None) -> Workspace:
    """`input_shape`: run a fully convolutional net at another input size than its prototxt says."""
    net = load_net(proto, model)
    if input_shape is not None:
        from ..caffe.reshape import with_input_shape

        net = with_input_shape(net, tuple(input_shape))
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
    return Workspace(Path(proto), Path(model), net, fold, convert_net(fold.net), equalization)


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


def equalizable(ws: Workspace) -> int:
    """Conv -> ReLU/PReLU -> Conv pairs --equalize would rescale (0 when already equalized)."""
    return 0 if ws.equalization is not None else equalizable_pairs(ws.net)
