"""Preprocessing parameters (`--image_params FILE.json`), parsed and validated once into a frozen `ImageParams`.

`prepare_image` in test_utils.py reads these; the package only parses them. Every key is checked: an unknown
key (a typo) is an error listing the valid keys, and a wrong type or value names the key, the file, what was
expected and what was found.

Order of operations (what test_utils.prepare_image does with these parameters):

1. read the image with OpenCV: `IMREAD_COLOR` (3 channels, **BGR**, uint8) or `IMREAD_GRAYSCALE` when
   `color_format` is "gray". A path ending in `.txt` is a raw tensor instead: it skips steps 2-8 (see below).
2. geometry, exactly one of:
   - default: resize to `size` (aspect ratio not kept);
   - `padding: true`: letterbox (darknet's): resize keeping the aspect ratio so the image fits in `size`, then
     pad to `size` with `padding_value`, image centred (an odd leftover pixel goes to the bottom/right);
   - `resize: [h, w]`: resize to that size, then centre-crop to `size`;
   - `resize_short: s`: resize so the shorter side is `s` keeping the aspect ratio (torchvision's Resize(s)),
     then centre-crop to `size`.
   Every resize uses `interpolation` and runs on the uint8 image (as `cv2.resize` in most reference code);
   the letterbox canvas is float32, so a padding value of 127.5 stays exact.
   A centre crop starts at floor((H - h) / 2), floor((W - w) / 2), as Caffe's data transformer.
3. `mirror`: `cv2.flip` with that code (1 horizontal, 0 vertical, -1 both); null or any other int: no flip.
4. colour: "rgb" swaps OpenCV's BGR to RGB; "bgr" and "gray" keep what OpenCV read.
5. convert to float32.
6. subtract the per-channel mean: `r_mean`, `g_mean`, `b_mean` (or `gray_mean` for "gray"), each applied to
   its own colour whatever the channel order.
7. multiply by `scale` (or the per-channel `r_scale`, `g_scale`, `b_scale`): out = (pixel - mean) * scale.
8. HWC -> CHW; with `transpose: true` the last two axes are swapped (C, W, H), for models trained in MATLAB
   (column-major); then a batch axis: the result is float32 (1, C, H, W).

Raw tensors (`.txt`, TNN's format): one float per line, C*H*W lines, already preprocessed: they are reshaped
to `output_shape` and nothing above is applied to them.

Keys (all but `size` optional; pixel values are in the 0..255 units of the decoded uint8 image):

| key            | type                  | default  | meaning                                                   |
|----------------|-----------------------|----------|-----------------------------------------------------------|
| size           | [h, w] ints 1..16384  | required | image size fed to the network (before `transpose`)        |
| padding        | bool                  | false    | letterbox instead of a plain resize                       |
| padding_value  | number                | 127.5    | pad pixel value, before mean/scale; 127.5 = darknet's 0.5 |
| resize         | [h, w] ints or null   | null     | resize to this, then centre-crop to `size`                |
| resize_short   | int or null           | null     | shorter side to this, then centre-crop to `size`          |
| interpolation  | "linear" "area" "nearest" "cubic" "lanczos" | "linear" | cv2.INTER_* flag of every resize |
| mirror         | int or null           | null     | cv2.flip code: 1, 0, -1; anything else: no flip           |
| color_format   | "rgb" "bgr" "gray"    | "bgr"    | channel order of the tensor (Caffe models are mostly BGR) |
| r_mean g_mean b_mean | number          | 0        | subtracted from that colour (must be 0 with "gray")       |
| gray_mean      | number                | 0        | subtracted from the gray channel (must be 0 unless gray)  |
| scale          | number > 0            | 1        | multiplier after the mean subtraction, all channels       |
| r_scale g_scale b_scale | number > 0 or null | null | per-colour multiplier, e.g. 1/std (unset: 1); `scale` stays 1 |
| transpose      | bool                  | false    | swap H and W of the final tensor                          |
| comment        | string or [strings]   | null     | free text (JSON has no comments); ignored                 |

No side in `size`, `resize` or `resize_short` may exceed 16384 (`MAX_SIDE`): a larger one is a typo that would
allocate gigabytes per image. `size` must also give the network input's shape; every command checks this before
preparing the first image.

`padding`, `resize` and `resize_short` are mutually exclusive; `resize` must be >= `size` in both axes and
`resize_short` >= both sides of `size`, or the centre crop could not be taken.

Gray uses its own key, `gray_mean`, rather than reusing `r_mean`: a gray file that says r_mean would be read by
one person as "the red mean is ignored" and by another as "the mean", so non-zero colour means (and per-colour
scales) are rejected with gray. Zeros are accepted because files from the seed tool list all three means.
`color_format` and `interpolation` are case-insensitive ("RGB" is "rgb").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .log import logger


class ColorFormat(str, Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Interpolation(str, Enum):
    LINEAR = "linear"
    AREA = "area"
    NEAREST = "nearest"
    CUBIC = "cubic"
    LANCZOS = "lanczos"


# OpenCV flip codes; the seed tool treated every other value as "no flip", and so do we (with a warning).
FLIP_CODES = (1, 0, -1)

# darknet fills the letterbox with 0.5 on images scaled to [0, 1]; on 0..255 pixels that is 127.5.
DARKNET_PADDING_VALUE = 127.5

# Largest image side accepted in `size`, `resize` and `resize_short` (pixels). A bigger one is a typo, not a
# network input: one 100000 x 100000 BGR image alone would need 30 GB before it is even resized.
MAX_SIDE = 16384


@dataclass(frozen=True)
class ImageParams:
    """Validated preprocessing parameters; see the module docstring for the order in which they apply."""

    size: tuple[int, int]
    padding: bool = False
    padding_value: float = DARKNET_PADDING_VALUE
    resize: tuple[int, int] | None = None
    resize_short: int | None = None
    interpolation: Interpolation = Interpolation.LINEAR
    mirror: int | None = None
    color_format: ColorFormat = ColorFormat.BGR
    r_mean: float = 0.0
    g_mean: float = 0.0
    b_mean: float = 0.0
    gray_mean: float = 0.0
    scale: float = 1.0
    r_scale: float | None = None
    g_scale: float | None = None
    b_scale: float | None = None
    transpose: bool = False
    comment: str | tuple[str, ...] | None = None
    # Where the parameters came from, for messages; not a parameter.
    source: str = field(default="image parameters", compare=False, repr=False)

    def __post_init__(self) -> None:
        # Relations between keys; single-key types and ranges are checked by from_dict.
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{self.source}: {msg}")

        geometry = [k for k, on in (("padding", self.padding), ("resize", self.resize is not None),
                                    ("resize_short", self.resize_short is not None)) if on]
        if len(geometry) > 1:
            raise bad(f"keys {' and '.join(geometry)} are mutually exclusive (each decides how the image is "
                      f"brought to size {list(self.size)}); keep one")
        h, w = self.size
        if self.resize is not None and (self.resize[0] < h or self.resize[1] < w):
            raise bad(f"key 'resize': expected [h, w] >= size {[h, w]} so that the centre crop to size fits, "
                      f"found {list(self.resize)}")
        if self.resize_short is not None and self.resize_short < max(h, w):
            raise bad(f"key 'resize_short': expected >= {max(h, w)} (the larger side of size {[h, w]}) so that "
                      f"the centre crop to size fits, found {self.resize_short}")
        per_channel = [k for k in ("r_scale", "g_scale", "b_scale") if getattr(self, k) is not None]
        if per_channel and self.scale != 1.0:
            raise bad(f"give either 'scale' (all channels) or 'r_scale'/'g_scale'/'b_scale', not both "
                      f"(found scale {self.scale} and {', '.join(per_channel)})")
        if self.color_format is ColorFormat.GRAY:
            colour_keys = [k for k in ("r_mean", "g_mean", "b_mean") if getattr(self, k) != 0.0] + per_channel
            if colour_keys:
                raise bad(f"color_format 'gray' has one channel: give its mean as 'gray_mean' and its multiplier "
                          f"as 'scale'; found {', '.join(colour_keys)}")
        elif self.gray_mean != 0.0:
            raise bad(f"key 'gray_mean' is only for color_format 'gray' (found color_format "
                      f"{self.color_format.value!r}); use r_mean, g_mean, b_mean")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "image parameters") -> ImageParams:
        """Validate a parsed JSON object; `source` (usually the file name) prefixes every error message."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a JSON object {{\"size\": [h, w], ...}}, found {_found(d)}")
        unknown = sorted(set(d) - set(VALID_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(VALID_KEYS)}")
        if "size" not in d:
            raise ConfigError(f"{source}: missing required key 'size' (the network input [h, w], e.g. [300, 300])")
        kw: dict[str, Any] = {"source": source}
        for key, value in d.items():
            kw[key] = _PARSERS[key](value, key, source)
        mirror = kw.get("mirror")
        if mirror is not None and mirror not in FLIP_CODES:
            logger.warning("%s: mirror %d is not an OpenCV flip code (1 horizontal, 0 vertical, -1 both): "
                           "images are not flipped", source, mirror)
        return cls(**kw)

    @property
    def channels(self) -> int:
        return 1 if self.color_format is ColorFormat.GRAY else 3

    @property
    def flip_code(self) -> int | None:
        """The cv2.flip code to apply, or None for no flip."""
        return self.mirror if self.mirror in FLIP_CODES else None

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Shape of the tensor prepare_image returns: (1, C, h, w), or (1, C, w, h) with transpose."""
        h, w = self.size
        return (1, self.channels, w, h) if self.transpose else (1, self.channels, h, w)

    def channel_means(self) -> tuple[float, ...]:
        """Means in the tensor's channel order (what OpenCV read, after the optional BGR->RGB swap)."""
        if self.color_format is ColorFormat.GRAY:
            return (self.gray_mean,)
        rgb = (self.r_mean, self.g_mean, self.b_mean)
        return rgb if self.color_format is ColorFormat.RGB else rgb[::-1]

    def channel_scales(self) -> tuple[float, ...]:
        """Multipliers in the tensor's channel order."""
        if self.color_format is ColorFormat.GRAY:
            return (self.scale,)
        rgb = tuple(self.scale if s is None else s for s in (self.r_scale, self.g_scale, self.b_scale))
        return rgb if self.color_format is ColorFormat.RGB else rgb[::-1]

    def to_dict(self) -> dict[str, Any]:
        """The resolved parameters as JSON-ready values (defaults filled in), for echoing and provenance."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) \
                else value
        return out


def load_image_params(path: str | Path) -> ImageParams:
    """Read and validate a JSON preprocessing file. Errors name the file (and line for JSON syntax errors)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM written by Windows editors
    except FileNotFoundError as e:
        raise ConfigError(f"image parameters file {path}: no such file") from e
    except IsADirectoryError as e:
        raise ConfigError(f"image parameters file {path}: is a directory, not a file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"image parameters file {path}: cannot be read as UTF-8 text ({e})") from e
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from e
    except _DuplicateKey as e:
        # json keeps the last of two equal keys silently; a file that says "scale" twice is a mistake.
        raise ConfigError(f"{path}: key {e.args[0]!r} appears more than once") from e
    params = ImageParams.from_dict(data, source=str(path))
    logger.debug("image parameters from %s: %s", path, params.to_dict())
    return params


# --- parsing of single values ---------------------------------------------------------------------------


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _found(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"{kind} {text[:60]}"


def _error(key: str, source: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: key {key!r}: expected {expected}, found {_found(value)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not 1 here


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _hw(value: Any, key: str, source: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and 0 < v <= MAX_SIDE for v in value)):
        raise _error(key, source, f"[height, width], two integers > 0 and at most {MAX_SIDE}", value)
    return (value[0], value[1])


def _optional_hw(value: Any, key: str, source: str) -> tuple[int, int] | None:
    return None if value is None else _hw(value, key, source)


def _optional_side(value: Any, key: str, source: str) -> int | None:
    if value is None:
        return None
    if not (_is_int(value) and 0 < value <= MAX_SIDE):
        raise _error(key, source, f"an integer > 0 or null (at most {MAX_SIDE})", value)
    return value


def _bool(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise _error(key, source, "true or false", value)
    return value


def _number(value: Any, key: str, source: str) -> float:
    if not _is_number(value):
        raise _error(key, source, "a finite number", value)
    return float(value)


def _positive(value: Any, key: str, source: str) -> float:
    if not (_is_number(value) and value > 0):
        raise _error(key, source, "a finite number > 0", value)
    return float(value)


def _optional_positive(value: Any, key: str, source: str) -> float | None:
    return None if value is None else _positive(value, key, source)


def _mirror(value: Any, key: str, source: str) -> int | None:
    if value is not None and not _is_int(value):
        raise _error(key, source, "an OpenCV flip code (1 horizontal, 0 vertical, -1 both) or null", value)
    return value


def _enum(cls: type[Enum]):
    def parse(value: Any, key: str, source: str) -> Enum:
        valid = [m.value for m in cls]
        if not isinstance(value, str) or value.lower() not in valid:
            raise _error(key, source, "one of " + ", ".join(map(repr, valid)), value)
        return cls(value.lower())
    return parse


def _comment(value: Any, key: str, source: str) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _error(key, source, "a string or an array of strings", value)


_PARSERS = {
    "size": _hw,
    "padding": _bool,
    "padding_value": _number,
    "resize": _optional_hw,
    "resize_short": _optional_side,
    "interpolation": _enum(Interpolation),
    "mirror": _mirror,
    "color_format": _enum(ColorFormat),
    "r_mean": _number,
    "g_mean": _number,
    "b_mean": _number,
    "gray_mean": _number,
    "scale": _positive,
    "r_scale": _optional_positive,
    "g_scale": _optional_positive,
    "b_scale": _optional_positive,
    "transpose": _bool,
    "comment": _comment,
}

VALID_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ImageParams) if f.name != "source")
if set(VALID_KEYS) != set(_PARSERS):  # a field added without a parser (or the reverse) is a bug here
    raise ImportError(f"ImageParams fields and parsers differ: {sorted(set(VALID_KEYS) ^ set(_PARSERS))}")
