"""Typed configuration, built once at the edge (main.py / cli.py) from the command line.

The package never sees argv or untyped dicts; each command gets a frozen dataclass, echoed at the start of the
run and stored with its outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value  # enums
    return value


class ConfigBase:
    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    def describe(self) -> str:
        width = max(len(f.name) for f in fields(self))  # type: ignore[arg-type]
        return "\n".join(f"  {k:<{width}} = {json.dumps(v)}" for k, v in self.to_dict().items())


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    proto: Path
    model: Path

    def __post_init__(self) -> None:
        for key in ("proto", "model"):
            path = getattr(self, key)
            if not path.is_file():
                raise ConfigError(f"--{key} {path}: no such file")


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    data_list: Path
    image_params: Path
    dataset_path: Path | None = None
    data_limit: int | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.data_list.exists():
            raise ConfigError(f"--data_list {self.data_list}: no such file or folder")
        if not self.image_params.is_file():
            raise ConfigError(f"--image_params {self.image_params}: no such file")
        if self.data_limit is not None and self.data_limit <= 0:
            raise ConfigError(f"--data_limit must be positive, found {self.data_limit}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch_size must be positive, found {self.batch_size}")


@dataclass(frozen=True)
class CheckConfig(ConfigBase):
    model: ModelConfig
    data: DataConfig
    tolerance: float = 1e-4
    json_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ConfigError(f"--tolerance must be positive, found {self.tolerance}")
