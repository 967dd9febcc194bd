"""Optional TensorBoard logging (`tensorboard: true`, extra `msc-ray-train[tensorboard]`)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from msc_core.config import ConfigError
from msc_ray_train import launch
from msc_ray_train.job import job_from_dict
from msc_ray_train.train_loop import read_metrics, run_training_loop


def test_tensorboard_events_hold_the_reported_metrics(make_job_dict) -> None:
    pytest.importorskip("tensorboard", reason="the `tensorboard` extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = job_from_dict(make_job_dict("tb", steps=4, log_every=2, checkpoint_every=4, tensorboard=True))
    assert run_training_loop(job, 0, 1, torch.device("cpu"), None, lambda metrics, checkpoint: None) == "finished"

    events = EventAccumulator(str(job.run_dir / "tensorboard"))
    events.Reload()
    records = read_metrics(job.run_dir)
    assert [r["step"] for r in records] == [2, 4]
    for name in ("loss", "lr", "grad_norm", "samples_per_s"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [2, 4]
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in records], rel=1e-6)


def test_tensorboard_is_off_by_default(make_job_dict) -> None:
    job = job_from_dict(make_job_dict("no-tb", steps=2))
    assert job.tensorboard is False
    run_training_loop(job, 0, 1, torch.device("cpu"), None, lambda metrics, checkpoint: None)
    assert not (job.run_dir / "tensorboard").exists()


def test_tensorboard_without_the_package_is_refused_before_ray_starts(make_job_dict, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"pip install 'msc-ray-train\[tensorboard\]'"):
        launch.run_training(job_from_dict(make_job_dict(tensorboard=True)))
