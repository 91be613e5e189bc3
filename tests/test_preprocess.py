"""prepare_image (test_utils.py) and its helpers on tiny synthetic images with known pixels, plus the real
example parameter files on the shared assets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from int8tune.errors import DataError
from int8tune.image_params import ImageParams, load_image_params
from int8tune.preprocess import centre_crop, letterbox_geometry, parse_raw_tensor, read_image
from test_utils import prepare_image

REPO_ROOT = Path(__file__).resolve().parents[1]


def params(**kw) -> ImageParams:
    return ImageParams.from_dict(kw, source="test")


def write_png(tmp_path: Path, image: np.ndarray, name: str = "img.png") -> Path:
    path = tmp_path / name
    assert cv2.imwrite(str(path), image)  # PNG is lossless: the pixels read back are these
    return path


def ramp(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3) BGR image: B = 10*y + x, G = B + 100, R = B + 200 (every pixel and channel distinct)."""
    b = (10 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint8)
    return np.stack([b, b + 100, b + 200], axis=2)


def test_mean_then_scale_bgr(tmp_path):
    path = write_png(tmp_path, np.full((2, 3, 3), (10, 20, 30), np.uint8))  # B, G, R
    out = prepare_image(path, params(size=[2, 3], b_mean=1, g_mean=2, r_mean=3, scale=0.5))
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 3) and out.flags.c_contiguous
    # (x - mean) * scale; scale-then-mean would give 4, 8, 12
    np.testing.assert_array_equal(out[0, :, 0, 0], [4.5, 9.0, 13.5])
    assert np.all(out == out[:, :, :1, :1])


def test_rgb_swaps_channels_and_means_follow_colours(tmp_path):
    path = write_png(tmp_path, np.full((2, 2, 3), (10, 20, 30), np.uint8))
    out = prepare_image(path, params(size=[2, 2], color_format="rgb", r_mean=3, g_mean=2, b_mean=1,
                                     r_scale=1, g_scale=2, b_scale=4))
    np.testing.assert_array_equal(out[0, :, 1, 1], [(30 - 3) * 1, (20 - 2) * 2, (10 - 1) * 4])


def test_layout_is_nchw(tmp_path):
    image = ramp(3, 4)
    out = prepare_image(write_png(tmp_path, image), params(size=[3, 4]))
    np.testing.assert_array_equal(out[0], image.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("code, expected", [
    (1, lambda a: a[:, ::-1]),      # horizontal: left-right
    (0, lambda a: a[::-1, :]),      # vertical: up-down
    (-1, lambda a: a[::-1, ::-1]),  # both
    (2, lambda a: a),               # not a flip code: unchanged, as the seed tool
    (None, lambda a: a),
])
def test_mirror_codes(tmp_path, code, expected):
    image = ramp(3, 4)
    out = prepare_image(write_png(tmp_path, image), params(size=[3, 4], mirror=code))
    np.testing.assert_array_equal(out[0], expected(image).transpose(2, 0, 1).astype(np.float32))


def test_mirror_happens_before_mean(tmp_path):
    # A per-colour mean is unaffected by a flip, but a horizontal flip after the colour swap must still flip.
    image = ramp(2, 3)
    out = prepare_image(write_png(tmp_path, image), params(size=[2, 3], mirror=1, color_format="rgb", r_mean=200))
    np.testing.assert_array_equal(out[0, 0], image[:, ::-1, 2].astype(np.float32) - 200)


def test_letterbox_geometry_darknet():
    assert letterbox_geometry((480, 640), (320, 320)) == (240, 320, 40, 0)   # landscape: bars top/bottom
    assert letterbox_geometry((640, 480), (320, 320)) == (320, 240, 0, 40)   # portrait: bars left/right
    assert letterbox_geometry((3, 4), (4, 4)) == (3, 4, 0, 0)                # odd leftover goes to the bottom
    assert letterbox_geometry((100, 100), (288, 352)) == (288, 288, 0, 32)
    assert letterbox_geometry((1, 1000), (10, 10)) == (1, 10, 4, 0)          # never a zero-sized image


def test_letterbox_pads_with_padding_value(tmp_path):
    image = ramp(2, 4)
    path = write_png(tmp_path, image)
    out = prepare_image(path, params(size=[4, 4], padding=True, interpolation="nearest"))
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(out[0, :, [0, 3], :], np.full((2, 3, 4), 127.5, np.float32))  # exact 127.5
    np.testing.assert_array_equal(out[0, :, 1:3, :], image.transpose(2, 0, 1))
    # the padding is a pixel value: mean and scale apply to it too
    out = prepare_image(path, params(size=[4, 4], padding=True, padding_value=27.5, b_mean=7.5, g_mean=7.5,
                                     r_mean=7.5, scale=2))
    assert out[0, 0, 0, 0] == 40.0 and out[0, 2, 3, 3] == 40.0


def test_letterbox_odd_leftover_and_gray(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = prepare_image(write_png(tmp_path, gray), params(size=[4, 4], padding=True, padding_value=0,
                                                          color_format="gray", gray_mean=1))
    assert out.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(out[0, 0, :3], gray.astype(np.float32) - 1)  # top = 0
    np.testing.assert_array_equal(out[0, 0, 3], [-1, -1, -1, -1])               # the odd row at the bottom


def test_letterbox_resize_matches_cv2(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    out = prepare_image(write_png(tmp_path, image), params(size=[20, 20], padding=True, interpolation="area"))
    expected = cv2.resize(image, (20, 10), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_array_equal(out[0, :, 5:15, :], expected)


def test_resize_then_centre_crop(tmp_path):
    image = ramp(6, 8)
    out = prepare_image(write_png(tmp_path, image), params(size=[2, 4], resize=[6, 8]))  # resize is a no-op
    np.testing.assert_array_equal(out[0], image[2:4, 2:6].transpose(2, 0, 1))
    # an odd leftover: offset floor((5 - 2) / 2) = 1, as Caffe
    np.testing.assert_array_equal(centre_crop(ramp(5, 5), (2, 2)), ramp(5, 5)[1:3, 1:3])
    with pytest.raises(DataError, match="needs an image at least that large"):
        centre_crop(ramp(2, 2), (3, 3))


def test_resize_uses_interpolation(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = write_png(tmp_path, image)
    for name, flag in [("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA), ("nearest", cv2.INTER_NEAREST),
                       ("cubic", cv2.INTER_CUBIC), ("lanczos", cv2.INTER_LANCZOS4)]:
        out = prepare_image(path, params(size=[16, 20], interpolation=name))
        expected = cv2.resize(image, (20, 16), interpolation=flag).transpose(2, 0, 1)
        np.testing.assert_array_equal(out[0], expected, err_msg=name)


def test_resize_short_side_then_crop(tmp_path):
    rng = np.random.default_rng(2)
    for h, w in [(40, 80), (80, 40)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = prepare_image(write_png(tmp_path, image), params(size=[16, 16], resize_short=20))
        big = cv2.resize(image, (40, 20) if h < w else (20, 40), interpolation=cv2.INTER_LINEAR)
        top, left = (big.shape[0] - 16) // 2, (big.shape[1] - 16) // 2
        np.testing.assert_array_equal(out[0], big[top:top + 16, left:left + 16].transpose(2, 0, 1))


def test_transpose_swaps_h_and_w(tmp_path):
    image = ramp(3, 5)
    path = write_png(tmp_path, image)
    plain = prepare_image(path, params(size=[3, 5]))
    out = prepare_image(path, params(size=[3, 5], transpose=True))
    assert out.shape == (1, 3, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, plain.transpose(0, 1, 3, 2))


def test_gray_reads_one_channel(tmp_path):
    gray = np.array([[0, 64], [128, 255]], np.uint8)
    out = prepare_image(write_png(tmp_path, gray), params(size=[2, 2], color_format="gray", scale=0.00390625))
    assert out.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(out[0, 0], gray * np.float32(0.00390625))
    # a colour file is converted by OpenCV's own BGR->gray when the model is gray
    colour = write_png(tmp_path, np.full((2, 2, 3), (10, 20, 30), np.uint8), "colour.png")
    out = prepare_image(colour, params(size=[2, 2], color_format="gray"))
    assert out.shape == (1, 1, 2, 2) and out[0, 0, 0, 0] == cv2.imread(str(colour), cv2.IMREAD_GRAYSCALE)[0, 0]


def test_raw_txt_tensor(tmp_path):
    values = np.arange(12, dtype=np.float32) * 0.5 - 1
    path = tmp_path / "input.txt"
    path.write_text("\n".join(f"{v}" for v in values) + "\n")
    out = prepare_image(path, params(size=[2, 2], scale=100, r_mean=5))  # no preprocessing applies to raw input
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(out.ravel(), values)
    upper = tmp_path / "GRAY.TXT"
    upper.write_text("1\n2\n3\n4\n")
    np.testing.assert_array_equal(prepare_image(upper, params(size=[2, 2], color_format="gray")),
                                  np.array([[[[1, 2], [3, 4]]]], np.float32))


def test_raw_txt_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("1\n2\n3\n")
    with pytest.raises(DataError) as e:
        prepare_image(short, params(size=[2, 2]))
    assert str(short) in str(e.value) and "expected 12 values" in str(e.value) and "found 3" in str(e.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\nabc\n")
    with pytest.raises(DataError, match=f"{bad}:3: expected one number per line, found 'abc'"):
        prepare_image(bad, params(size=[2, 2]))
    with pytest.raises(DataError, match=":2: expected a finite number"):
        parse_raw_tensor("1\nnan\n", (1, 1, 1, 2), "x.txt")


def test_unreadable_images(tmp_path):
    with pytest.raises(DataError, match=f"image {tmp_path / 'absent.png'}: no such file"):
        prepare_image(tmp_path / "absent.png", params(size=[2, 2]))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"image {junk}: OpenCV cannot decode it"):
        read_image(junk)


# --- the example parameter files on real images -----------------------------------------------------------

# One real image per model, and the network input (C, H, W) from each prototxt (see the assets README).
REAL = {
    "squeezenet_v1.0": ("images/natural/coffee.png", (3, 227, 227)),
    "lenet_mnist": ("images/mnist_dev/t10k_00000.png", (1, 28, 28)),
    "yolov3_nano_voc": ("images/detection/dog.jpg", (3, 320, 320)),
    "yoloface_500k_v2": ("images/detection/two_faces.jpeg", (3, 288, 352)),
    "res10_ssd_face": ("images/natural/astronaut.png", (3, 300, 300)),
    "landmark106": ("images/natural/grace_hopper.jpg", (3, 112, 112)),
}
EXAMPLES = sorted((REPO_ROOT / "examples" / "image_params").glob("*.json"))


def test_every_asset_model_has_an_example():
    assert {p.stem for p in EXAMPLES} == set(REAL)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_params_on_real_image(assets, example):
    image, network_chw = REAL[example.stem]
    p = load_image_params(example)
    out = prepare_image(assets / image, p)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.shape == p.output_shape == (1, p.channels, *p.size)
    assert out.shape[1:] == network_chw


@pytest.mark.parametrize("model, mean, scale, swap_rb", [
    ("res10_ssd_face", (104, 177, 123), 1.0, False),
    ("landmark106", (127.5, 127.5, 127.5), 1 / 127.5, True),
])
def test_example_matches_opencv_blob_from_image(assets, model, mean, scale, swap_rb):
    # cv2.dnn.blobFromImage is the preprocessing the assets README's reference numbers were made with for
    # plain-resize models: (resize(x) - mean) * scale, optional R/B swap.
    image, _ = REAL[model]
    p = load_image_params(REPO_ROOT / "examples" / "image_params" / f"{model}.json")
    ours = prepare_image(assets / image, p)
    bgr = cv2.imread(str(assets / image), cv2.IMREAD_COLOR)
    h, w = p.size
    ref = cv2.dnn.blobFromImage(bgr, scale, (w, h), mean, swapRB=swap_rb, crop=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
