"""Writing results: atomically (temp file + rename, so a killed run never leaves half a file) and with
provenance (tool version, hashes of the model files and image list, resolved settings)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import __version__


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, rename over `path`.

    The file gets the permissions a plain `open(path, "w")` gives a new file: 0666 less the umask (or the
    folder's default ACL). If `path` is a symbolic link, the link itself is replaced by the new file; whatever it
    pointed to is left untouched (rename(2) acts on the name, never follows it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write (a full disk) names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusively created temp file beside `path`, opened for writing, with mode 0666 & ~umask.

    tempfile.mkstemp creates 0600 whatever the umask, so every output was private to its owner. Opening with
    mode 0666 lets the kernel apply the umask (or a default ACL) exactly as for a plain open(): no need to read
    the umask, whose only portable reader (os.umask(0) then restore) briefly changes it for every thread."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # another writer's temp file of the same name: draw another
    raise FileExistsError(errno.EEXIST, "no free temp file name beside it after 100 tries", str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_lines(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def provenance(settings: dict[str, Any], files: dict[str, str | Path] | None = None,
               images: Iterable[str] | None = None) -> dict[str, Any]:
    """What produced an output: tool version, file hashes, image-list hash, settings, time, platform."""
    return {
        "tool": "int8tune",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "files": {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in (files or {}).items()},
        "images_sha256": sha256_lines(images) if images is not None else None,
        "settings": settings,
    }


LOCK_FILE = ".int8tune.lock"


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """One run at a time writes to `folder`: an exclusive advisory lock on `folder`/.int8tune.lock, held for the
    run (the kernel drops it when the process dies, so a killed run leaves no stale lock). A second run is
    refused at once, naming the first one's process id."""
    import fcntl

    from .errors import ConfigError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"{folder}: another int8tune run (process {holder}) is writing to this output folder; "
                              f"wait for it to end or choose another --output_path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
