"""Training checkpoints: everything a run needs to continue, verifiable, no pickle.

A checkpoint directory (what `ray.train.report` persists as `<run>/checkpoint_*`):

    model.safetensors    raw weights               ema.safetensors   EMA weights
    optimizer.pt         AdamW + LR-scheduler state (torch.save of tensors and numbers,
                         read back with weights_only=True)
    trainer_state.json   step, EMA updates, non-finite counters, data position
    config.json          the model config          job.json          the whole TrainJob
    manifest.json        size + SHA-256 of every file above, written LAST

A checkpoint counts only when its manifest is there and every file matches it, so a
save interrupted at any point, or a file truncated later, is detected and the previous
checkpoint is used instead (`latest_valid_checkpoint`).

The exported model (`<run>/model/`, `save_pretrained` layout: config.json +
model.safetensors of the EMA weights) is what `msc sample` and users load.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from msc_core.checkpoint import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_WEIGHTS_NAME,
    CONFIG_NAME,
    EXPORT_DIR,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    CorruptCheckpointError,
    atomic_write_text,
    save_pretrained,
    verify_manifest,
    write_manifest,
)
from msc_core.config import Config

MODEL_FILE = WEIGHTS_NAME
EMA_FILE = CHECKPOINT_WEIGHTS_NAME
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
JOB_FILE = "job.json"
MANIFEST_FILE = MANIFEST_NAME
CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE, CONFIG_NAME, JOB_FILE)
EXPORT_STATE_FILE = "train_state.json"
FORMAT_VERSION = 1

@dataclass
class TrainerState:
    """The counters of a run that are not tensors."""

    step: int = 0
    ema_updates: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    data_position: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "ema_updates": self.ema_updates,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "data_position": self.data_position,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        return cls(
            step=int(data["step"]),
            ema_updates=int(data["ema_updates"]),
            nonfinite_total=int(data["nonfinite_total"]),
            nonfinite_in_a_row=int(data["nonfinite_in_a_row"]),
            data_position=data.get("data_position"),
        )


def write_checkpoint(
    directory: str | Path,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
    job: Config,
) -> Path:
    """Write a full training checkpoint into `directory`; the manifest goes last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MODEL_FILE))
    save_model(ema_model, str(directory / EMA_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
    (directory / CONFIG_NAME).write_text(model.config.to_json())
    (directory / JOB_FILE).write_text(job.to_json())
    write_manifest(directory, CHECKPOINT_FILES, step=state.step)
    return directory


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The manifest of `directory` after checking every file against it; CorruptCheckpointError if not."""
    return verify_manifest(directory, required=CHECKPOINT_FILES)


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why `directory` is not a usable checkpoint, or None when it verifies."""
    try:
        verify_checkpoint(directory)
    except CorruptCheckpointError as err:
        return str(err)
    return None


def read_trainer_state(directory: str | Path) -> TrainerState:
    return TrainerState.from_dict(json.loads((Path(directory) / STATE_FILE).read_text()))


def read_job_dict(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / JOB_FILE).read_text())


def load_checkpoint(
    directory: str | Path,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainerState:
    """Verify `directory` and load it into the given objects (built from the same job)."""
    directory = Path(directory)
    verify_checkpoint(directory)
    device = next(model.parameters()).device
    for module, name in ((model, MODEL_FILE), (ema_model, EMA_FILE)):
        try:
            load_model(module, str(directory / name), strict=True, device=str(device))
        except (SafetensorError, RuntimeError) as err:
            raise CorruptCheckpointError(f"{directory / name} does not fit {type(module).__name__}: {err}") from None
    try:
        states = torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        return read_trainer_state(directory)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        # weights_only=True refuses anything but tensors and plain containers: a file that
        # would run code when unpickled is named here, never executed
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CorruptCheckpointError(
            f"{directory / OPTIMIZER_FILE} (or {STATE_FILE}) does not load: {type(err).__name__}: {first}"
        ) from None


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Ray's `checkpoint_*` directories of a run, oldest first (their names hold a timestamp)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def latest_valid_checkpoint(run_dir: str | Path, exclude: tuple[str | Path, ...] = ()) -> Path | None:
    """The checkpoint with the highest step whose files all match their manifest."""
    skip = {Path(p).resolve() for p in exclude}
    best: tuple[int, Path] | None = None
    for directory in checkpoint_dirs(run_dir):
        if directory.resolve() in skip:
            continue
        try:
            step = int(verify_checkpoint(directory)["step"])
        except CorruptCheckpointError:
            continue
        if best is None or step >= best[0]:
            best = (step, directory)
    return None if best is None else best[1]


def export_model(ema_model: nn.Module, run_dir: str | Path, step: int) -> Path:
    """Write the EMA weights as `<run>/model/` (save_pretrained layout) for `msc sample`."""
    out = save_pretrained(ema_model, Path(run_dir) / EXPORT_DIR)
    atomic_write_text(out / EXPORT_STATE_FILE, json.dumps({"step": step, "weights": "ema"}, indent=2))
    return out
