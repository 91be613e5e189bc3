"""pyproject.toml lists packages by hand (because proto/ is mapped to int8tune.proto): keep the list complete."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "int8tune").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert "int8tune.proto" in listed and config["package-dir"]["int8tune.proto"] == "proto"


def test_user_files_are_installed_modules():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["py-modules"]) >= {"main", "test_utils", "evaluation_utils"}
    assert config["project"]["scripts"]["int8tune"] == "main:main"
