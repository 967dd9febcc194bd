"""Shared fixtures of the msc_ray_train tests: a tiny, fast training job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

# Before Ray is imported anywhere: no usage stats, no auth token, 0.2 s controller polls.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def tiny_job_dict(storage: Path, name: str = "tiny", **changes: Any) -> dict[str, Any]:
    """A 2-layer AR-Diffusion model on 4-frame 16x16 moving digits (2 clips per worker)."""
    job: dict[str, Any] = {
        "model": {
            "kind": "ardiffusion",
            "preset": "tiny",
            "data": {"channels": 1, "num_frames": 4, "height": 16, "width": 16},
            "transformer": {"dim": 32, "num_heads": 2},
        },
        "data": {"source": "moving-mnist", "frames": 4, "size": 32, "output_size": 16, "num_digits": 1,
                 "channels": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "ema": {"decay": 0.9},
        "steps": 8,
        "batch_size": 2,
        "checkpoint_every": 2,
        "keep_checkpoints": 3,
        "log_every": 2,
        "scaling": {"workers": 2},
        "run": {"name": name, "storage_path": str(storage)},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


@pytest.fixture
def make_job_dict(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def make(name: str = "tiny", **changes: Any) -> dict[str, Any]:
        return tiny_job_dict(tmp_path / "runs", name, **changes)

    return make
