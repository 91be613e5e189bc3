"""Data lists (folder, plain, labelled), validate_input and iter_batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from int8tune.data import DataItem, iter_batches, read_data_list, validate_input
from int8tune.errors import ConfigError, DataError


def touch(folder: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        paths.append(path)
    return paths


def write_list(path: Path, *lines: str, bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- folders ----------------------------------------------------------------------------------------------


def test_folder_sorted_known_extensions_non_recursive(tmp_path):
    touch(tmp_path, "b.PNG", "a.jpg", "c.JPEG", "d.bmp", "e.webp", "f.tif", "g.TIFF", "notes.csv",
          "README", "._a.jpg", ".hidden.png", "sub/inner.jpg")
    items = read_data_list(tmp_path)
    assert [i.path.name for i in items] == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp", "e.webp", "f.tif", "g.TIFF"]
    assert all(i.label is None and i.line is None and i.path.parent == tmp_path for i in items)
    assert [i.path.name for i in read_data_list(tmp_path, limit=2)] == ["a.jpg", "b.PNG"]


def test_folder_of_raw_tensors(tmp_path):
    touch(tmp_path, "in1.txt", "in0.TXT")
    assert [i.path.name for i in read_data_list(tmp_path)] == ["in0.TXT", "in1.txt"]


def test_folder_of_images_skips_its_labels_txt(tmp_path, caplog):
    touch(tmp_path, "a.png", "labels.txt")
    assert [i.path.name for i in read_data_list(tmp_path)] == ["a.png"]
    assert "labels.txt" in caplog.text


def test_empty_folder(tmp_path):
    touch(tmp_path, "notes.csv", "sub/a.jpg")
    with pytest.raises(DataError, match=f"data list folder {tmp_path}: no images in it"):
        read_data_list(tmp_path)


# --- list files -------------------------------------------------------------------------------------------


def test_plain_list_relative_to_list_folder(tmp_path):
    touch(tmp_path, "imgs/a.jpg", "imgs/my photo 2.jpg", "abs/c.png")
    absolute = tmp_path / "abs" / "c.png"
    lst = write_list(tmp_path / "list.txt", "# calibration set", "imgs/a.jpg", "", "  imgs/my photo 2.jpg  ",
                     str(absolute))
    items = read_data_list(lst)
    assert items == [DataItem(tmp_path / "imgs/a.jpg", None, 2), DataItem(tmp_path / "imgs/my photo 2.jpg", None, 4),
                     DataItem(absolute, None, 5)]


def test_labelled_list_with_spaces_and_apostrophes(tmp_path):
    touch(tmp_path, "n01_dog's toy.jpg", "n02 cat.JPEG", "n03.png")
    lst = write_list(tmp_path / "labels.txt", "n01_dog's toy.jpg 3", "n02 cat.JPEG\t0", "n03.png   999")
    items = read_data_list(lst)
    assert [(i.path.name, i.label, i.line) for i in items] == [
        ("n01_dog's toy.jpg", 3, 1), ("n02 cat.JPEG", 0, 2), ("n03.png", 999, 3)]


def test_glow_comma_list(tmp_path):
    touch(tmp_path, "a b's.jpg", "c,d.png")
    lst = write_list(tmp_path / "dataset.csv", "a b's.jpg,5,", "c,d.png, 7 ,")
    items = read_data_list(lst)
    assert [(i.path.name, i.label) for i in items] == [("a b's.jpg", 5), ("c,d.png", 7)]


@pytest.mark.parametrize("line, match", [
    ("a.jpg,cat,", "line.*:1: expected a label that is an integer >= 0.*'cat'"),
    ("a.jpg,-2,", "integer >= 0.*'-2'"),
    ("a.jpg -1", "integer >= 0.*'-1'"),
    (",3,", "must be 'path,label,'"),
])
def test_bad_labels_name_the_line(tmp_path, line, match):
    touch(tmp_path, "a.jpg")
    lst = write_list(tmp_path / "l.txt", line)
    with pytest.raises(DataError, match=match) as e:
        read_data_list(lst)
    assert f"{lst}:1:" in str(e.value)


def test_mixed_labelled_and_unlabelled_lines(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    lst = write_list(tmp_path / "l.txt", "a.jpg", "b.jpg 1")
    with pytest.raises(DataError, match="line 2 has a label but line 1 has none"):
        read_data_list(lst)


def test_dataset_path_resolution(tmp_path):
    data = tmp_path / "data"
    touch(data, "x/a.jpg")
    (tmp_path / "lists").mkdir()
    lst = write_list(tmp_path / "lists" / "l.txt", "x/a.jpg 4")
    assert read_data_list(lst, dataset_path=data) == [DataItem(data / "x/a.jpg", 4, 1)]
    with pytest.raises(DataError, match="not found"):
        read_data_list(lst)  # resolved against the list's folder, where it is not
    with pytest.raises(DataError, match="dataset path .*: no such folder"):
        read_data_list(lst, dataset_path=tmp_path / "nope")


def test_limit_keeps_first_and_ignores_the_rest(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    lst = write_list(tmp_path / "l.txt", "a.jpg", "# c", "b.jpg", "missing.jpg", "bad,label,")
    assert [i.path.name for i in read_data_list(lst, limit=2)] == ["a.jpg", "b.jpg"]
    with pytest.raises(ConfigError, match="positive"):
        read_data_list(lst, limit=0)


def test_missing_files_all_reported_by_name_and_line(tmp_path):
    touch(tmp_path, "ok.jpg")
    names = [f"gone {k}'s.jpg" for k in range(12)]
    lst = write_list(tmp_path / "l.txt", "ok.jpg", *names)
    with pytest.raises(DataError) as e:
        read_data_list(lst)
    msg = str(e.value)
    assert "12 of 13 file(s) not found" in msg
    assert f"line 2: {tmp_path / names[0]}" in msg and f"line 11: {tmp_path / names[9]}" in msg
    assert names[10] not in msg and "... and 2 more" in msg


def test_empty_list_and_missing_list(tmp_path):
    lst = write_list(tmp_path / "l.txt", "# nothing", "", "   ")
    with pytest.raises(DataError, match="no entries"):
        read_data_list(lst)
    with pytest.raises(DataError, match="no such file or folder"):
        read_data_list(tmp_path / "absent.txt")


def test_bom_and_crlf(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    lst = tmp_path / "l.txt"
    lst.write_bytes("\ufeffa.jpg 1\r\nb.jpg 2\r\n".encode())
    assert [(i.path.name, i.label) for i in read_data_list(lst)] == [("a.jpg", 1), ("b.jpg", 2)]


# --- validate_input ---------------------------------------------------------------------------------------


def good() -> np.ndarray:
    return np.zeros((1, 3, 4, 5), np.float32)


def test_validate_input_accepts_chw_or_nchw_network_shape():
    a = good()
    assert validate_input(a, (3, 4, 5), "a.jpg") is a
    assert validate_input(a, (64, 3, 4, 5), "a.jpg") is a  # the prototxt's batch size is not prepare's concern


@pytest.mark.parametrize("array, match", [
    ([[0.0]], "expected a numpy.ndarray, found list"),
    (np.zeros((1, 3, 4, 5), np.float64), "expected dtype float32, found float64"),
    (np.zeros((1, 3, 4, 5), np.uint8), "expected dtype float32, found uint8"),
    (np.zeros((3, 4, 5), np.float32), "expected 4 dimensions .* found 3"),
    (np.zeros((1, 3, 5, 4), np.float32), "expected shape \\(1, 3, 4, 5\\) .* found \\(1, 3, 5, 4\\)"),
    (np.zeros((2, 3, 4, 5), np.float32), "found \\(2, 3, 4, 5\\)"),
    (np.zeros((1, 1, 4, 5), np.float32), "found \\(1, 1, 4, 5\\)"),
])
def test_validate_input_rejections(array, match):
    with pytest.raises(DataError, match=match) as e:
        validate_input(array, (1, 3, 4, 5), "dir/img.jpg")
    assert "prepare_image(dir/img.jpg)" in str(e.value)


def test_validate_input_non_finite():
    a = good()
    a[0, 1, 2, 3] = np.nan
    a[0, 2, 0, 0] = np.inf
    with pytest.raises(DataError, match="found 2 NaN/inf \\(first at index \\(0, 1, 2, 3\\)"):
        validate_input(a, (3, 4, 5), "x.png")


# --- iter_batches -----------------------------------------------------------------------------------------


def test_iter_batches_sizes_and_order(tmp_path):
    items = [DataItem(tmp_path / f"{k}.png", k, k + 1) for k in range(5)]

    def prepare(path, params):
        return np.full((1, 3, 4, 5), float(path.stem) * params, np.float32)

    batches = list(iter_batches(items, prepare, 2.0, (1, 3, 4, 5), batch_size=2))
    assert [b.shape[0] for b, _ in batches] == [2, 2, 1]
    assert [c for _, chunk in batches for c in chunk] == items
    assert [float(b[i, 0, 0, 0]) for b, _ in batches for i in range(len(b))] == [0, 2, 4, 6, 8]
    assert all(b.dtype == np.float32 for b, _ in batches)


def test_iter_batches_reports_the_failing_image(tmp_path):
    items = [DataItem(tmp_path / "ok.png", None, 1), DataItem(tmp_path / "bad.png", None, 7)]

    def prepare(path, params):
        if path.name == "bad.png":
            raise ValueError("boom")
        return good()

    with pytest.raises(DataError, match="prepare_image failed on .*bad.png \\(data list line 7\\): ValueError: boom"):
        list(iter_batches(items, prepare, None, (3, 4, 5), 4))

    def wrong(path, params):
        return np.zeros((1, 3, 4, 5))

    with pytest.raises(DataError, match="ok.png \\(data list line 1\\)\\): expected dtype float32"):
        list(iter_batches(items, wrong, None, (3, 4, 5), 1))
    with pytest.raises(ConfigError, match="batch size"):
        list(iter_batches(items, wrong, None, (3, 4, 5), 0))
