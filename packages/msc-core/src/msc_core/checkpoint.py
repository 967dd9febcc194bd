"""`save_pretrained` / `from_pretrained`: `config.json` + `model.safetensors`, no pickle.

Every write is atomic: data goes to a temporary file in the same directory, is fsynced,
then renamed over the target, so an interrupted save never leaves a half-written file
under the real name (the previous version stays loadable).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from msc_core.config import Config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PretrainedModel(Protocol):
    """A module built from its config: `cls(config)`, with `cls.config_class` and `self.config`."""

    config_class: type[Config]
    config: Config


M = TypeVar("M", bound=torch.nn.Module)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_pretrained(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` for `model` into `directory`."""
    config = getattr(model, "config", None)
    if not isinstance(config, Config):
        raise ValueError(
            f"{type(model).__name__} has no msc Config in `.config` (got {type(config).__name__}); "
            "save_pretrained needs a model built from its config"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_model(model, str(tmp))  # handles tied (shared) tensors, unlike save_file
    atomic_write_text(directory / CONFIG_NAME, config.to_json())
    return directory


def from_pretrained(
    cls: type[M],
    directory: str | Path,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> M:
    """Build `cls(config)` from `directory/config.json` and load its safetensors weights."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a save_pretrained directory")
    config_class = getattr(cls, "config_class", None)
    if config_class is None or not issubclass(config_class, Config):
        raise ValueError(f"{cls.__name__} has no `config_class` (an msc Config subclass)")
    config = config_class.load(config_path)
    model = cls(config)
    try:
        missing, unexpected = load_model(model, str(weights_path), strict=False, device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights {weights_path}: {err}") from None
    if strict and (missing or unexpected):
        raise ValueError(
            f"weights {weights_path} do not match {cls.__name__}({config_class.__name__}): "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return model.to(device).eval()
