"""Image preprocessing: THIS FILE IS YOURS TO EDIT.

int8tune calls `prepare_image(path, params)` once per image of --data_list, every time it needs the network's
input for that image (calibration, each tuning round, evaluation). `params` is the parsed --image_params JSON
(an `int8tune.image_params.ImageParams`; its docstring lists every key and the order below).

What you may change: anything in this file. Add steps, reorder them, read other file types, or write your own
`prepare_image` from scratch (the helpers in int8tune/preprocess.py are there to reuse, not to edit).
Changing the keys of the JSON file means changing int8tune/image_params.py.

The contract, checked on every call (an error names the image when it is broken):
- return a numpy float32 array of shape (1, C, H, W), equal to the network input's (C, H, W), all finite;
- be deterministic: the same image must give the same tensor every call (no random crops or flips), or the
  fp32 reference and the int8 candidates would be compared on different inputs;
- raise int8tune.errors.DataError naming the file when an image cannot be used.

`path` is a pathlib.Path. A path ending in `.txt` is a raw tensor (TNN's format: one float per line,
C*H*W lines) that is already preprocessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from int8tune.image_params import ColorFormat, ImageParams
from int8tune.preprocess import (
    apply_mean_scale,
    bgr_to_rgb,
    centre_crop,
    flip,
    letterbox,
    read_image,
    read_raw_tensor,
    resize,
    resize_short_side,
    to_nchw,
)


def prepare_image(path: Path, params: ImageParams) -> np.ndarray:
    """One image file -> float32 (1, C, H, W), as described in int8tune/image_params.py."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return read_raw_tensor(path, params.output_shape)

    # 1. read: uint8, BGR (H, W, 3), or (H, W) for gray
    image = read_image(path, gray=params.color_format is ColorFormat.GRAY)

    # 2. geometry: plain resize, letterbox, or resize then centre crop
    if params.padding:
        image = letterbox(image, params.size, params.interpolation, params.padding_value)
    elif params.resize is not None:
        image = centre_crop(resize(image, params.resize, params.interpolation), params.size)
    elif params.resize_short is not None:
        image = centre_crop(resize_short_side(image, params.resize_short, params.interpolation), params.size)
    else:
        image = resize(image, params.size, params.interpolation)

    # 3. mirror (cv2.flip code, or none)
    image = flip(image, params.flip_code)

    # 4. colour: OpenCV decoded BGR
    if params.color_format is ColorFormat.RGB:
        image = bgr_to_rgb(image)

    # 5-7. float32, (pixel - mean) * scale, per channel
    image = apply_mean_scale(image.astype(np.float32), params.channel_means(), params.channel_scales())

    # 8. HWC -> CHW (or CWH with transpose), batch axis
    return to_nchw(image, transpose=params.transpose)
