"""`save_pretrained` / `from_pretrained`: `config.json` + `model.safetensors`, no pickle.

Every write is atomic: data goes to a temporary file in the same directory, is fsynced,
then renamed over the target, so an interrupted save never leaves a half-written file
under the real name (the previous version stays loadable).

Where a model is read (`from_pretrained`, every `msc` command's MODEL argument), three
folders are accepted (`resolve_pretrained`):

- an exported model: `config.json` + `model.safetensors` (`save_pretrained`);
- a training run folder `<storage_path>/<name>/`: its exported `model/` (EMA weights);
- a training checkpoint `checkpoint_*/`: verified against its `manifest.json` (size and
  SHA-256 of every file, written last), then its EMA weights `ema.safetensors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from msc_core.config import Config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
EXPORT_DIR = "model"  # a training run's exported model (EMA weights)
CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_WEIGHTS_NAME = "ema.safetensors"  # the weights a training checkpoint is sampled with


class CorruptCheckpointError(ValueError):
    """A checkpoint folder is incomplete or a file does not match its manifest."""


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
    (directory / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is incomplete until it is rewritten
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_model(model, str(tmp))  # handles tied (shared) tensors, unlike save_file
    atomic_write_text(directory / CONFIG_NAME, config.to_json())
    write_manifest(directory, (CONFIG_NAME, WEIGHTS_NAME))  # last: verified by from_pretrained
    return directory


# --------------------------------------------------------------------------- manifests


def file_digest(path: str | Path) -> dict[str, Any]:
    """`{"bytes": size, "sha256": hex}` of a file."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(directory: str | Path, names: Iterable[str], **fields: Any) -> Path:
    """Write `directory/manifest.json` (size + SHA-256 of each named file, plus `fields`).
    Call it after every other file is written: a folder whose manifest is missing is incomplete."""
    directory = Path(directory)
    files = {name: file_digest(directory / name) for name in names}
    path = directory / MANIFEST_NAME
    atomic_write_text(path, json.dumps({**fields, "files": files}, indent=2))
    return path


def verify_manifest(directory: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """The manifest of `directory` after checking every file it lists (and every `required`
    name is listed); `CorruptCheckpointError` naming the first problem otherwise."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"{directory} is not a complete checkpoint: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        entries = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptCheckpointError(f"{manifest_path} is unreadable ({type(err).__name__}: {err})") from None
    for name in required:
        if name not in entries:
            raise CorruptCheckpointError(f"{manifest_path} does not list {name}")
    for name, (size, sha256) in entries.items():
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CorruptCheckpointError(f"{manifest_path} lists a file outside its folder: {name!r}")
        if not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing (listed in {manifest_path.name})")
        found = file_digest(path)
        if found["bytes"] != size:
            raise CorruptCheckpointError(f"{path} has {found['bytes']} bytes, its manifest says {size}")
        if found["sha256"] != sha256:
            raise CorruptCheckpointError(f"{path} does not match its SHA-256 in the manifest")
    return manifest


# --------------------------------------------------------------------------- where a model is


@dataclass(frozen=True)
class PretrainedFiles:
    """The files a model is read from, and what kind of folder held them."""

    config: Path
    weights: Path
    source: Literal["export", "run", "checkpoint"]


def _is_export(directory: Path) -> bool:
    return (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()


def is_checkpoint_dir(directory: str | Path) -> bool:
    """A training checkpoint folder: named `checkpoint_*`, or holding EMA weights. Such a
    folder is read only when its manifest verifies: one without a manifest is never taken
    for an export (a deleted manifest must not switch verification off)."""
    directory = Path(directory)
    return directory.name.startswith(CHECKPOINT_PREFIX) or (directory / CHECKPOINT_WEIGHTS_NAME).is_file()


def resolve_pretrained(path: str | Path) -> PretrainedFiles:
    """The config and weights of a run folder, an exported `model/` folder or a training
    `checkpoint_*` folder (verified against its manifest).

    Raises FileNotFoundError (nothing there), CorruptCheckpointError (a checkpoint whose
    files do not match its manifest) or ValueError (a folder of another kind).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if not path.is_dir():
        raise ValueError(
            f"model {path} is a file; give a run folder, an exported model/ folder or a checkpoint_* folder"
        )
    if is_checkpoint_dir(path):
        verify_manifest(path, required=(CONFIG_NAME, CHECKPOINT_WEIGHTS_NAME))
        return PretrainedFiles(path / CONFIG_NAME, path / CHECKPOINT_WEIGHTS_NAME, "checkpoint")
    for folder, source in ((path, "export"), (path / EXPORT_DIR, "run")):
        if _is_export(folder):
            if (folder / MANIFEST_NAME).is_file():  # written by save_pretrained; older exports have none
                verify_manifest(folder, required=(CONFIG_NAME, WEIGHTS_NAME))
            return PretrainedFiles(folder / CONFIG_NAME, folder / WEIGHTS_NAME, source)  # type: ignore[arg-type]
    raise ValueError(
        f"{path} holds no model: expected a run folder (with {EXPORT_DIR}/), an exported model "
        f"({CONFIG_NAME} + {WEIGHTS_NAME}) or a training checkpoint ({MANIFEST_NAME}, {CHECKPOINT_WEIGHTS_NAME})"
    )


def read_config_kind(path: str | Path) -> str:
    """The `kind` of the model config at `path` (a config.json)."""
    path = Path(path)
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable model config ({type(err).__name__}: {err})") from None
    if not isinstance(kind, str):
        raise ValueError(f"{path} has no model `kind`")
    return kind


def from_pretrained(
    cls: type[M],
    directory: str | Path | PretrainedFiles,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> M:
    """Build `cls(config)` from a model folder (`resolve_pretrained`: an export, a run folder
    or a training checkpoint, or what it returned) and load its safetensors weights; eval mode."""
    files = directory if isinstance(directory, PretrainedFiles) else resolve_pretrained(directory)
    config_path, weights_path = files.config, files.weights
    config_class = getattr(cls, "config_class", None)
    if config_class is None or not issubclass(config_class, Config):
        raise ValueError(f"{cls.__name__} has no `config_class` (an msc Config subclass)")
    kind_field = config_class.model_fields.get("kind")
    if kind_field is not None and isinstance(kind_field.default, str):
        found = read_config_kind(config_path)
        if found != kind_field.default:  # another model's folder: say so, not a list of config errors
            raise ValueError(f"{config_path} holds a {found!r} model, not a {kind_field.default!r} ({cls.__name__})")
    config = config_class.load(config_path)
    model = cls(config)
    check_weights_fit(weights_path, model)
    try:
        missing, unexpected = load_model(model, str(weights_path), strict=False, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"cannot read weights {weights_path}: {err}") from None
    if strict and (missing or unexpected):
        raise ValueError(
            f"weights {weights_path} do not match {cls.__name__}({config_class.__name__}): "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    check_weights_finite(weights_path, model)
    return model.to(device).eval()


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def check_weights_fit(weights_path: Path, model: torch.nn.Module) -> None:
    """Before loading: every stored tensor the model has must have its shape, and floating
    weights must be stored as floats. One line naming the first tensor that does not fit
    (config.json and model.safetensors from different models, or a tampered file)."""
    from safetensors import safe_open

    expected = model.state_dict()
    try:
        with safe_open(str(weights_path), framework="pt") as stored:
            for name in stored.keys():
                if name not in expected:
                    continue  # unexpected keys are reported by name after loading
                piece = stored.get_slice(name)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                want = expected[name]
                if shape != tuple(want.shape):
                    raise ValueError(
                        f"weights {weights_path}: tensor {name!r} has shape {list(shape)}, but the config in "
                        f"{weights_path.parent / CONFIG_NAME} builds {list(want.shape)}"
                    )
                if want.is_floating_point() and dtype not in _FLOAT_DTYPES:
                    raise ValueError(f"weights {weights_path}: tensor {name!r} is stored as {dtype}; "
                                     f"a model's floating weights must be stored as floats")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read weights {weights_path}: {err}") from None


def check_weights_finite(weights_path: Path, model: torch.nn.Module) -> None:
    """After loading: NaN or infinite weights are refused, naming the first tensor."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"weights {weights_path}: tensor {name!r} holds {bad} NaN or infinite values")
