"""The steps `prepare_image` (test_utils.py) is built from: reading, geometry, colour, mean/scale, layout.

Users edit test_utils.py, not this file. Apart from the two readers, every function is pure (array in, array
out) and keeps the layout it was given: colour images are (H, W, 3), gray images (H, W) until `to_nchw`.
The order in which test_utils applies them, and what each parameter means, is in int8tune/image_params.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import DataError
from .image_params import Interpolation

INTERPOLATION_FLAGS: dict[Interpolation, int] = {
    Interpolation.LINEAR: cv2.INTER_LINEAR,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.CUBIC: cv2.INTER_CUBIC,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}


# --- readers ----------------------------------------------------------------------------------------------


def read_image(path: str | Path, gray: bool = False) -> np.ndarray:
    """Decode an image with OpenCV: uint8 (H, W, 3) in BGR order, or (H, W) when `gray`.

    IMREAD_COLOR drops an alpha channel and converts 16-bit images to 8-bit, as OpenCV-based reference code does.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path}: {'is a folder' if path.is_dir() else 'no such file'}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if image is None:  # OpenCV reports undecodable files by returning None, not by raising
        raise DataError(f"image {path}: OpenCV cannot decode it (not an image, truncated, or an unsupported "
                        f"format; size {path.stat().st_size} bytes)")
    return image


def read_raw_tensor(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """Read a raw input tensor in TNN's text format: one float per line, prod(shape) lines, row-major (NCHW).

    Blank lines are skipped (so a trailing newline is fine); the values are taken as already preprocessed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"raw tensor {path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"raw tensor {path}: cannot be read as text ({e})") from e
    return parse_raw_tensor(text, shape, str(path))


def parse_raw_tensor(text: str, shape: Sequence[int], source: str) -> np.ndarray:
    """The parsing half of `read_raw_tensor`; `source` names the file in errors."""
    expected = math.prod(shape)
    values: list[float] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        try:
            value = float(token)
        except ValueError as e:
            raise DataError(f"{source}:{lineno}: expected one number per line, found {token[:40]!r}") from e
        if not math.isfinite(value):
            raise DataError(f"{source}:{lineno}: expected a finite number, found {token!r}")
        values.append(value)
    if len(values) != expected:
        dims = "x".join(map(str, shape))
        raise DataError(f"{source}: expected {expected} values (one per line) for an input of shape {dims} "
                        f"(from size and color_format in the image parameters), found {len(values)}")
    return np.asarray(values, dtype=np.float32).reshape(tuple(shape))


# --- geometry ---------------------------------------------------------------------------------------------


def resize(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation = Interpolation.LINEAR
           ) -> np.ndarray:
    """Resize to size = (h, w), aspect ratio not kept."""
    h, w = size
    # cv2 wants (width, height); it drops a trailing single-channel axis, which we never pass (gray is 2-D).
    return cv2.resize(image, (w, h), interpolation=INTERPOLATION_FLAGS[Interpolation(interpolation)])


def letterbox_geometry(image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where darknet's letterbox puts an image of image_hw in a canvas of size: (new_h, new_w, top, left).

    The side that limits the scale fills the canvas exactly; the other is scaled with integer truncation and
    centred with floor division, so an odd leftover pixel goes to the bottom/right (darknet's letterbox_image).
    """
    ih, iw = image_hw
    h, w = size
    if w * ih <= h * iw:  # w / iw <= h / ih without float rounding: the width limits the scale
        new_w, new_h = w, max(1, ih * w // iw)
    else:
        new_h, new_w = h, max(1, iw * h // ih)
    return new_h, new_w, (h - new_h) // 2, (w - new_w) // 2


def letterbox(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation = Interpolation.LINEAR,
              padding_value: float = 127.5) -> np.ndarray:
    """Resize keeping the aspect ratio and pad to size = (h, w), centred; returns float32.

    The resize runs on the input dtype (uint8 as read); the canvas is float32 so that a padding value such as
    darknet's 127.5 is kept exactly rather than rounded to a uint8.
    """
    new_h, new_w, top, left = letterbox_geometry(image.shape[:2], size)
    resized = resize(image, (new_h, new_w), interpolation)
    canvas = np.full(tuple(size) + image.shape[2:], padding_value, dtype=np.float32)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def resize_short_side(image: np.ndarray, short: int, interpolation: Interpolation = Interpolation.LINEAR
                      ) -> np.ndarray:
    """Resize so the shorter side is `short`, keeping the aspect ratio (torchvision Resize(int): the longer
    side is int(short * long / short_in), truncated)."""
    ih, iw = image.shape[:2]
    if ih <= iw:
        return resize(image, (short, int(short * iw / ih)), interpolation)
    return resize(image, (int(short * ih / iw), short), interpolation)


def centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop size = (h, w) from the centre; the offset is floor((H - h) / 2), as Caffe's data transformer."""
    ih, iw = image.shape[:2]
    h, w = size
    if ih < h or iw < w:
        raise DataError(f"centre crop to {h}x{w} needs an image at least that large, found {ih}x{iw}")
    top, left = (ih - h) // 2, (iw - w) // 2
    return image[top:top + h, left:left + w]


def flip(image: np.ndarray, code: int | None) -> np.ndarray:
    """cv2.flip with code 1 (horizontal), 0 (vertical) or -1 (both); None: unchanged."""
    return image if code is None else cv2.flip(image, code)


# --- values and layout ------------------------------------------------------------------------------------


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """Reverse the channel axis of an (H, W, 3) image (OpenCV decodes to BGR)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"BGR->RGB needs an (H, W, 3) image, found shape {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1])


def apply_mean_scale(image: np.ndarray, means: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """(image - mean) * scale per channel, in float32; means and scales are in the image's channel order."""
    image = np.asarray(image, dtype=np.float32)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if len(means) != channels or len(scales) != channels:
        raise DataError(f"mean/scale: the image has {channels} channel(s) but {len(means)} mean(s) and "
                        f"{len(scales)} scale(s) were given")
    mean = np.asarray(means, dtype=np.float32)
    scale = np.asarray(scales, dtype=np.float32)
    if image.ndim == 2:
        mean, scale = mean[0], scale[0]
    return (image - mean) * scale


def to_nchw(image: np.ndarray, transpose: bool = False) -> np.ndarray:
    """(H, W, C) or (H, W) -> contiguous (1, C, H, W); with `transpose`, (1, C, W, H)."""
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    chw = image.transpose(2, 1, 0) if transpose else image.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[np.newaxis])
