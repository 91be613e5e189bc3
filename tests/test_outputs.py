"""outputs.atomic_write_*: permissions as a plain open() gives them, atomic replace, symlinks not followed."""

from __future__ import annotations

import os
import stat

import pytest

from int8tune.outputs import atomic_write_bytes, atomic_write_json, atomic_write_text

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symbolic links")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = []

    def set_(mask: int) -> None:
        saved.append(os.umask(mask))

    yield set_
    if saved:
        os.umask(saved[0])


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    out = atomic_write_bytes(tmp_path / "sub" / "table.bin", b"data")
    assert out.read_bytes() == b"data"
    assert _mode(out) == expected
    with open(tmp_path / "plain.txt", "w"):
        pass
    assert _mode(tmp_path / "plain.txt") == expected  # the reference: what open() does under this umask


def test_text_and_json_writers_share_the_mode(tmp_path, umask):
    umask(0o022)
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    assert _mode(atomic_write_json(tmp_path / "a.json", {"a": 1})) == 0o644


def test_replacing_keeps_no_temp_file_behind(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_symlink_is_replaced_and_its_target_left_unchanged(tmp_path, umask):
    umask(0o022)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.txt"
    target.write_text("keep me")
    os.chmod(target, 0o600)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    link = out_dir / "report.txt"
    link.symlink_to(target)

    atomic_write_text(link, "new report")

    assert target.read_text() == "keep me"  # nothing written through the link
    assert _mode(target) == 0o600
    assert not link.is_symlink() and link.read_text() == "new report"
    assert _mode(link) == 0o644
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.txt"]


def test_a_dangling_symlink_is_replaced_without_creating_its_target(tmp_path):
    missing = tmp_path / "elsewhere" / "never.txt"
    link = tmp_path / "report.txt"
    link.symlink_to(missing)
    atomic_write_text(link, "x")
    assert not link.is_symlink() and link.read_text() == "x"
    assert not missing.exists() and not missing.parent.exists()
