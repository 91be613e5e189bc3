"""ImageParams: parsing, defaults, and the error for every kind of bad key or value."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from int8tune.errors import ConfigError
from int8tune.image_params import VALID_KEYS, ColorFormat, ImageParams, Interpolation, load_image_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_json(tmp_path: Path, data, name: str = "params.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_defaults_from_minimal_dict():
    p = ImageParams.from_dict({"size": [300, 200]})
    assert p.size == (300, 200)
    assert p.padding is False and p.padding_value == 127.5
    assert p.resize is None and p.resize_short is None
    assert p.interpolation is Interpolation.LINEAR
    assert p.mirror is None and p.flip_code is None
    assert p.color_format is ColorFormat.BGR
    assert (p.r_mean, p.g_mean, p.b_mean, p.scale) == (0.0, 0.0, 0.0, 1.0)
    assert p.transpose is False
    assert p.output_shape == (1, 3, 300, 200)


def test_every_key_parsed(tmp_path):
    data = {"size": [227, 227], "resize": [256, 256], "interpolation": "cubic", "mirror": -1,
            "color_format": "rgb", "r_mean": 1, "g_mean": 2.5, "b_mean": 3, "r_scale": 0.5, "g_scale": 0.25,
            "b_scale": 2, "transpose": True, "padding_value": 0, "comment": ["a", "b"]}
    p = load_image_params(write_json(tmp_path, data))
    assert p.resize == (256, 256) and p.interpolation is Interpolation.CUBIC and p.flip_code == -1
    assert p.channel_means() == (1.0, 2.5, 3.0)  # rgb: tensor channel order is r, g, b
    assert p.channel_scales() == (0.5, 0.25, 2.0)
    assert p.output_shape == (1, 3, 227, 227)
    resolved = p.to_dict()
    assert set(resolved) == set(VALID_KEYS)
    assert resolved["color_format"] == "rgb" and resolved["resize"] == [256, 256]
    assert ImageParams.from_dict(resolved) == p  # the echoed parameters reproduce the same object


def test_channel_order_bgr_and_gray():
    bgr = ImageParams.from_dict({"size": [2, 2], "r_mean": 1, "g_mean": 2, "b_mean": 3, "b_scale": 4})
    assert bgr.channel_means() == (3.0, 2.0, 1.0)
    assert bgr.channel_scales() == (4.0, 1.0, 1.0)  # unset per-channel scales are `scale`'s default, 1
    gray = ImageParams.from_dict({"size": [28, 28], "color_format": "gray", "gray_mean": 5, "scale": 0.5})
    assert gray.channel_means() == (5.0,) and gray.channel_scales() == (0.5,)
    assert gray.output_shape == (1, 1, 28, 28)


def test_transpose_swaps_output_axes():
    p = ImageParams.from_dict({"size": [12, 20], "transpose": True})
    assert p.output_shape == (1, 3, 20, 12)


def test_case_insensitive_enums():
    p = ImageParams.from_dict({"size": [2, 2], "color_format": "RGB", "interpolation": "Area"})
    assert p.color_format is ColorFormat.RGB and p.interpolation is Interpolation.AREA


def test_frozen():
    p = ImageParams.from_dict({"size": [2, 2]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scale = 2.0  # type: ignore[misc]


def test_mirror_codes(caplog):
    assert ImageParams.from_dict({"size": [2, 2], "mirror": 0}).flip_code == 0
    assert ImageParams.from_dict({"size": [2, 2], "mirror": None}).flip_code is None
    with caplog.at_level(logging.WARNING, logger="int8tune"):
        p = ImageParams.from_dict({"size": [2, 2], "mirror": 2}, source="m.json")
    assert p.mirror == 2 and p.flip_code is None  # as the seed tool: not a flip code, so no flip
    assert "m.json" in caplog.text and "mirror 2" in caplog.text


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write_json(tmp_path, {"size": [2, 2], "colour_format": "rgb"})
    with pytest.raises(ConfigError) as e:
        load_image_params(path)
    msg = str(e.value)
    assert str(path) in msg and "'colour_format'" in msg
    assert "valid keys: " in msg and "color_format" in msg and "padding_value" in msg


@pytest.mark.parametrize("key, value, expected", [
    ("size", "300", "[height, width], two integers > 0"),
    ("size", [300], "[height, width]"),
    ("size", [300.0, 300], "[height, width]"),
    ("size", [0, 300], "[height, width]"),
    ("size", [True, 300], "[height, width]"),
    ("padding", 1, "true or false"),
    ("transpose", "yes", "true or false"),
    ("scale", 0, "a finite number > 0"),
    ("scale", -1, "a finite number > 0"),
    ("scale", "0.5", "a finite number > 0"),
    ("r_mean", None, "a finite number"),
    ("r_mean", True, "a finite number"),
    ("padding_value", [1], "a finite number"),
    ("mirror", True, "an OpenCV flip code"),
    ("mirror", 1.0, "an OpenCV flip code"),
    ("color_format", "yuv", "one of 'rgb', 'bgr', 'gray'"),
    ("interpolation", "bilinear", "one of 'linear', 'area', 'nearest', 'cubic', 'lanczos'"),
    ("resize", [256], "[height, width]"),
    ("resize_short", 0, "an integer > 0 or null"),
    ("comment", 3, "a string or an array of strings"),
])
def test_wrong_type_names_key_file_expected_and_found(tmp_path, key, value, expected):
    data = {"size": [2, 2], key: value}
    path = write_json(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_image_params(path)
    msg = str(e.value)
    assert str(path) in msg and f"key {key!r}" in msg and expected in msg
    assert "found " + ("boolean" if isinstance(value, bool) else "") in msg


def test_non_finite_number_rejected(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"size": [2, 2], "scale": NaN}')  # Python's json accepts NaN; we do not
    with pytest.raises(ConfigError, match="'scale': expected a finite number > 0, found number NaN"):
        load_image_params(path)


def test_missing_size():
    with pytest.raises(ConfigError, match="x.json: missing required key 'size'"):
        ImageParams.from_dict({"scale": 1}, source="x.json")


@pytest.mark.parametrize("data, match", [
    ({"size": [2, 2], "padding": True, "resize": [4, 4]}, "padding and resize are mutually exclusive"),
    ({"size": [2, 2], "resize": [4, 4], "resize_short": 4}, "resize and resize_short are mutually exclusive"),
    ({"size": [227, 227], "resize": [256, 200]}, "expected \\[h, w\\] >= size \\[227, 227\\]"),
    ({"size": [224, 300], "resize_short": 256}, "'resize_short': expected >= 300"),
    ({"size": [2, 2], "scale": 2, "g_scale": 3}, "either 'scale' .* not both"),
    ({"size": [2, 2], "color_format": "gray", "r_mean": 3}, "give its mean as 'gray_mean'.*found r_mean"),
    ({"size": [2, 2], "color_format": "gray", "b_scale": 3}, "found b_scale"),
    ({"size": [2, 2], "color_format": "rgb", "gray_mean": 3}, "'gray_mean' is only for color_format 'gray'"),
])
def test_inconsistent_keys(data, match):
    with pytest.raises(ConfigError, match=match) as e:
        ImageParams.from_dict(data, source="p.json")
    assert str(e.value).startswith("p.json: ")


def test_gray_accepts_zero_colour_means():
    # Seed-tool files list all three means even for gray models; zeros change nothing, so they are accepted.
    p = ImageParams.from_dict({"size": [28, 28], "color_format": "gray", "r_mean": 0, "g_mean": 0, "b_mean": 0})
    assert p.channel_means() == (0.0,)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_image_params(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "size": [2, 2],\n  "scale": 1,\n}\n')
    with pytest.raises(ConfigError, match=f"{bad}:4:1: invalid JSON"):
        load_image_params(bad)
    dup = tmp_path / "dup.json"
    dup.write_text('{"size": [2, 2], "scale": 1, "scale": 2}')
    with pytest.raises(ConfigError, match="key 'scale' appears more than once"):
        load_image_params(dup)
    array = write_json(tmp_path, [300, 300], "array.json")
    with pytest.raises(ConfigError, match="expected a JSON object .* found array"):
        load_image_params(array)


def test_repo_default_is_the_res10_example():
    default = load_image_params(REPO_ROOT / "image_params.json")
    example = load_image_params(REPO_ROOT / "examples" / "image_params" / "res10_ssd_face.json")
    assert default == example
    assert default.size == (300, 300) and default.color_format is ColorFormat.BGR
    assert default.channel_means() == (104.0, 177.0, 123.0) and default.channel_scales() == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "examples" / "image_params").glob("*.json")),
                         ids=lambda p: p.stem)
def test_examples_parse(path):
    load_image_params(path)
