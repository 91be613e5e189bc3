"""Which images to use (`--data_list`), what prepare_image must return, and batching.

`--data_list` is one of:
- a folder: every image in it (not in sub-folders), sorted by file name; extensions jpg, jpeg, png, bmp, webp,
  tif, tiff and txt (raw tensors), in any case; hidden files (".name", e.g. macOS "._x.jpg") are skipped, and
  so are .txt files in a folder that also holds images (they are a labels.txt, not tensors; logged);
- a text file, one entry per line, in one of three forms (a file uses one form for all its lines):
    path/to/image.jpg                 no label
    path/to/image.jpg 3               label = the last whitespace-separated token, when it is an integer
    path/to/image.jpg,3,              Glow's dataset file: path, label, trailing comma
  Paths may contain spaces and apostrophes, so nothing is quoted: a line is a path unless its last token is
  an integer (or the line ends with a comma). Labels are integers >= 0 (class indices). Blank lines and lines
  starting with `#` are skipped; a UTF-8 byte-order mark is accepted.
Relative paths are resolved against `dataset_path` when given, else against the list file's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError, Int8TuneError
from .image_params import ImageParams
from .log import logger

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".txt"})

# How many missing files one error message lists; the count of the rest follows.
MAX_LISTED = 10

_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class DataItem:
    """One input: its file, its class label if the list has labels, its line in the list (for messages)."""

    path: Path
    label: int | None = None
    line: int | None = None

    def describe(self) -> str:
        return f"{self.path}" + (f" (data list line {self.line})" if self.line is not None else "")


def read_data_list(data_list: str | Path, dataset_path: str | Path | None = None,
                   limit: int | None = None) -> list[DataItem]:
    """The inputs named by `data_list` (a folder or a list file, see the module docstring), first `limit` only.

    Every kept file must exist: the missing ones are collected and reported together, by name and line.
    """
    data_list = Path(data_list)
    if limit is not None and limit <= 0:
        raise ConfigError(f"data limit must be a positive number of images, found {limit}")
    if dataset_path is not None:
        dataset_path = Path(dataset_path)
        if not dataset_path.is_dir():
            raise DataError(f"dataset path {dataset_path}: no such folder")
    if data_list.is_dir():
        if dataset_path is not None:
            logger.warning("dataset path %s is not used: data list %s is a folder, its images are taken as they "
                           "are", dataset_path, data_list)
        items = _folder_items(data_list, limit)
    elif data_list.is_file():
        items = _list_items(data_list, dataset_path if dataset_path is not None else data_list.parent, limit)
    else:
        raise DataError(f"data list {data_list}: no such file or folder")
    _check_exist(items, data_list)
    labelled = sum(item.label is not None for item in items)
    logger.info("%d input(s) from %s%s", len(items), data_list, ", labelled" if labelled else "")
    return items


def _folder_items(folder: Path, limit: int | None) -> list[DataItem]:
    names = sorted(p.name for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
    texts = [n for n in names if n.lower().endswith(".txt")]
    if texts and len(texts) < len(names):
        # A folder of images beside a labels.txt (the usual layout): the .txt is a list, not a raw tensor.
        logger.warning("data list folder %s holds images, so its .txt file(s) are not taken as raw tensors: %s "
                       "(to use a labelled list, pass it as --data_list)", folder, ", ".join(texts[:5]) +
                       (f" and {len(texts) - 5} more" if len(texts) > 5 else ""))
        names = [n for n in names if not n.lower().endswith(".txt")]
    if not names:
        raise DataError(f"data list folder {folder}: no images in it (looked for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case, not in sub-folders)")
    return [DataItem(folder / name) for name in names[:limit]]


def _list_items(list_file: Path, base: Path, limit: int | None) -> list[DataItem]:
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data list {list_file}: cannot be read as UTF-8 text ({e})") from e
    items: list[DataItem] = []
    first_unlabelled: int | None = None
    first_labelled: int | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, label = parse_list_line(line, f"{list_file}:{lineno}")
        if label is None:
            first_unlabelled = first_unlabelled or lineno
        else:
            first_labelled = first_labelled or lineno
        path = Path(name)  # literal: a list file is not a shell, "~" is a character
        items.append(DataItem(path if path.is_absolute() else base / path, label, lineno))
        if limit is not None and len(items) >= limit:
            break  # lines past the limit are not read, so their mistakes cannot stop a short run
    if not items:
        raise DataError(f"data list {list_file}: no entries (only blank or # comment lines)")
    if first_labelled is not None and first_unlabelled is not None:
        # Usually a file name that ends in " <digits>" taken as a label, or a list assembled from two sources.
        raise DataError(f"data list {list_file}: line {first_labelled} has a label but line {first_unlabelled} "
                        f"has none; give every line a label or none")
    return items


def parse_list_line(line: str, where: str) -> tuple[str, int | None]:
    """(path, label) of one stripped, non-empty list line; `where` ("file:line") prefixes errors."""
    if line.endswith(","):  # Glow's "path,label,"
        path, sep, label = line[:-1].rpartition(",")
        if not sep or not path.strip():
            raise DataError(f"{where}: a line ending with ',' must be 'path,label,' (Glow's dataset format), "
                            f"found {line!r}")
        return path.strip(), _label(label.strip(), where)
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and _INT.fullmatch(parts[1]):
        return parts[0], _label(parts[1], where)
    return line, None


def _label(token: str, where: str) -> int:
    if not _INT.fullmatch(token) or int(token) < 0:
        raise DataError(f"{where}: expected a label that is an integer >= 0 (a class index), found {token!r}")
    return int(token)


def _check_exist(items: Sequence[DataItem], data_list: Path) -> None:
    missing = [item for item in items if not item.path.is_file()]
    if not missing:
        return
    listed = "\n".join(f"  line {i.line}: {i.path}" if i.line is not None else f"  {i.path}"
                       for i in missing[:MAX_LISTED])
    more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    raise DataError(f"data list {data_list}: {len(missing)} of {len(items)} file(s) not found "
                    f"(relative paths are resolved against --dataset_path, else the list's folder):\n"
                    f"{listed}{more}")


def validate_input(array: object, expected_shape: Sequence[int], source: str) -> np.ndarray:
    """Check what prepare_image returned for `source`: a float32 ndarray (1, C, H, W), finite, whose (C, H, W)
    equal the network input's. `expected_shape` is (C, H, W) or the network's (N, C, H, W), whose N is ignored
    (prepare_image returns one image; batches are made here).
    """
    where = f"prepare_image({source})"
    if not isinstance(array, np.ndarray):
        raise DataError(f"{where}: expected a numpy.ndarray, found {type(array).__name__}")
    if array.dtype != np.float32:
        raise DataError(f"{where}: expected dtype float32, found {array.dtype} (convert with .astype(np.float32))")
    chw = tuple(int(d) for d in expected_shape)[-3:]
    if len(chw) != 3:
        raise ValueError(f"network input shape {tuple(expected_shape)} is not (C, H, W) or (N, C, H, W)")
    if array.ndim != 4:
        raise DataError(f"{where}: expected 4 dimensions (1, C, H, W) = (1, {', '.join(map(str, chw))}), "
                        f"found {array.ndim}: shape {array.shape}")
    if array.shape != (1, *chw):
        raise DataError(f"{where}: expected shape {(1, *chw)} (the network input, batch 1), found {array.shape} "
                        f"(check size, color_format and transpose in the image parameters)")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise DataError(f"{where}: expected finite values, found {len(bad)} NaN/inf (first at index {first}: "
                        f"{array[first]})")
    return array


def check_params_fit(params: object, input_shape: Sequence[int]) -> None:
    """Before the first image is prepared: image parameters (an ImageParams) must describe the network input.

    prepare_image returns what `size`, `color_format` and `transpose` say (ImageParams.output_shape); checking
    that against the network input here turns a typo into an error naming the key, instead of a tensor refused
    after the image was prepared, or (`size: [100000, 100000]`) gigabytes allocated per image first. Parameters of
    another type (the API's own objects) are left to validate_input.
    """
    if not isinstance(params, ImageParams):
        return
    chw = tuple(int(d) for d in input_shape)[-3:]
    if len(chw) != 3 or tuple(params.output_shape[1:]) == chw:
        return
    channels, height, width = chw
    expected_size = [width, height] if params.transpose else [height, width]
    problems = []
    if params.channels != channels:
        problems.append(f"key 'color_format' is {params.color_format.value!r} ({params.channels} channel(s)) but the "
                        f"network input has {channels} channel(s)")
    if list(params.size) != expected_size:
        problems.append(f"key 'size' is {list(params.size)} but the network input needs {expected_size}"
                        + (" (transpose: true swaps height and width)" if params.transpose else ""))
    raise ConfigError(f"{params.source}: {'; '.join(problems)}; the network input has shape "
                      f"{tuple(int(d) for d in input_shape)}")


def iter_batches(items: Iterable[DataItem], prepare: Callable[[Path, object], np.ndarray], params: object,
                 input_shape: Sequence[int], batch_size: int) -> Iterator[tuple[np.ndarray, list[DataItem]]]:
    """Yield (float32 (n, C, H, W), the n items) with n = batch_size, the last batch possibly smaller.

    Each item is prepared with `prepare(item.path, params)` and validated; an exception from `prepare` that
    does not come from int8tune is re-raised as a DataError naming the image and its list line. Image parameters
    that cannot give the network input are refused before the first image (check_params_fit).
    """
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, found {batch_size}")
    check_params_fit(params, input_shape)
    arrays: list[np.ndarray] = []
    chunk: list[DataItem] = []
    for item in items:
        try:
            array = prepare(item.path, params)
        except Int8TuneError:
            raise  # already names the file
        except Exception as e:  # user code: any failure, reported with the image it happened on
            raise DataError(f"prepare_image failed on {item.describe()}: {type(e).__name__}: {e}") from e
        arrays.append(validate_input(array, input_shape, item.describe()))
        chunk.append(item)
        if len(chunk) == batch_size:
            yield np.concatenate(arrays, axis=0), chunk
            arrays, chunk = [], []
    if chunk:
        yield np.concatenate(arrays, axis=0), chunk
