"""Training checkpoints: exact round trip, damaged saves detected, fallback, `msc sample`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from msc_core.testing import assert_state_dicts_equal
from msc_data.video_io import decode_video_bytes
from msc_ray_train.cli import main
from msc_ray_train.clip_batches import MovingMNISTBatches
from msc_ray_train.ema import ExponentialMovingAverage
from msc_ray_train.job import job_from_dict
from msc_ray_train.model_kinds import build_model
from msc_ray_train.optimization import build_optimizer, build_scheduler
from msc_ray_train.sampling import load_trained_model
from msc_ray_train.train_checkpoint import (
    CorruptCheckpointError,
    TrainerState,
    export_model,
    latest_valid_checkpoint,
    load_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from msc_ray_train.train_loop import TrainingLossModule, restore_latest, training_step
from msc_ray_train.video_output import read_gif, video_to_rgb_frames, write_gif


def trained_objects(job, steps: int):
    torch.manual_seed(job.seed)
    model = build_model(job.model)
    ema = ExponentialMovingAverage(model, job.ema)
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.optim, job.steps)
    state = TrainerState()
    data = MovingMNISTBatches(job.data, job.seed, 0, 1, job.batch_size)
    for _ in range(steps):
        training_step(TrainingLossModule(model), model, ema, optimizer, scheduler, state, data.batch(state.step),
                      torch.Generator().manual_seed(state.step), job.optim.grad_clip)
    state.data_position = data.position(state.step)
    return model, ema, optimizer, scheduler, state


@pytest.fixture
def job(make_job_dict):
    return job_from_dict(make_job_dict())


@pytest.fixture
def two_checkpoints(job):
    """Checkpoints after 2 and 3 steps in `<run>/checkpoint_*`, oldest first."""
    model, ema, optimizer, scheduler, state = trained_objects(job, 2)
    first = write_checkpoint(job.run_dir / "checkpoint_a", model, ema.model, optimizer, scheduler, state, job)
    training_step(TrainingLossModule(model), model, ema, optimizer, scheduler, state,
                  {"video": torch.rand(2, 1, 4, 16, 16) * 2 - 1}, None, 1.0)
    second = write_checkpoint(job.run_dir / "checkpoint_b", model, ema.model, optimizer, scheduler, state, job)
    return first, second


def fresh(job):
    torch.manual_seed(123)  # different init: loading must overwrite everything
    model = build_model(job.model)
    ema = ExponentialMovingAverage(model, job.ema)
    optimizer = build_optimizer(model, job.optim)
    return model, ema, optimizer, build_scheduler(optimizer, job.optim, job.steps)


def test_checkpoint_round_trip_restores_everything(job) -> None:
    model, ema, optimizer, scheduler, state = trained_objects(job, 3)
    directory = write_checkpoint(job.run_dir / "checkpoint_x", model, ema.model, optimizer, scheduler, state, job)
    model2, ema2, optimizer2, scheduler2 = fresh(job)
    restored = load_checkpoint(directory, model2, ema2.model, optimizer2, scheduler2)
    assert restored == state and restored.step == 3 and restored.data_position == {"source": "moving-mnist",
                                                                                     "next_clip": 6}
    assert_state_dicts_equal(model, model2)
    assert_state_dicts_equal(ema.model, ema2.model)
    assert scheduler2.state_dict() == scheduler.state_dict()
    for index, moments in optimizer.state_dict()["state"].items():
        loaded = optimizer2.state_dict()["state"][index]
        assert all(torch.equal(value, loaded[name]) for name, value in moments.items())
    assert json.loads((directory / "job.json").read_text()) == json.loads(job.to_json())


def test_truncated_file_is_detected_and_the_previous_checkpoint_is_used(job, two_checkpoints) -> None:
    first, second = two_checkpoints
    assert latest_valid_checkpoint(job.run_dir) == second
    weights = second / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match=str(weights)):
        verify_checkpoint(second)
    assert latest_valid_checkpoint(job.run_dir) == first
    model, ema, optimizer, scheduler = fresh(job)
    state, used, skipped = restore_latest(job.run_dir, str(second), model, ema, optimizer, scheduler)
    assert used == first and state.step == 2
    assert list(skipped) == [second.name] and f"{weights} has" in skipped[second.name]


def test_save_killed_before_its_manifest_leaves_the_previous_checkpoint(job, two_checkpoints) -> None:
    first, second = two_checkpoints
    (second / "manifest.json").unlink()  # the manifest is the last file a save writes
    with pytest.raises(CorruptCheckpointError, match="manifest.json is missing"):
        verify_checkpoint(second)
    assert latest_valid_checkpoint(job.run_dir) == first


def test_newest_complete_checkpoint_wins_over_an_older_registered_one(job, two_checkpoints) -> None:
    # Ray registered `first`; the worker group died before `second` was registered
    first, second = two_checkpoints
    state, used, skipped = restore_latest(job.run_dir, str(first), *fresh(job))
    assert used == second and state.step == 3 and skipped == {}


def test_no_valid_checkpoint_left_is_a_clear_error(job, two_checkpoints) -> None:
    for directory in two_checkpoints:
        (directory / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="no checkpoint of .* verifies and loads") as info:
        restore_latest(job.run_dir, str(two_checkpoints[1]), *fresh(job))
    for directory in two_checkpoints:  # each one is named with why
        assert f"{directory.name}: " in str(info.value)


def test_a_poisoned_optimizer_state_is_refused_unexecuted_and_the_checkpoint_before_used(
    job, two_checkpoints, tmp_path
) -> None:
    """A pickle that would run code when loaded (torch.load with weights_only=False): the
    newest checkpoint's optimizer.pt is replaced, its manifest re-written to match (an
    attacker controls both), and resume uses the checkpoint before it, naming why."""
    import pickle

    from msc_core.checkpoint import write_manifest
    from msc_ray_train.train_checkpoint import CHECKPOINT_FILES

    first, second = two_checkpoints
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (second / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    write_manifest(second, CHECKPOINT_FILES, step=3)
    state, used, skipped = restore_latest(job.run_dir, str(second), *fresh(job))
    assert used == first and state.step == 2 and not marker.exists()
    assert list(skipped) == [second.name]
    assert "optimizer.pt (or trainer_state.json) does not load: UnpicklingError" in skipped[second.name]


def test_run_dir_export_and_checkpoint_load_the_same_ema_model(job, two_checkpoints) -> None:
    model, ema, optimizer, scheduler, state = trained_objects(job, 3)
    checkpoint = write_checkpoint(job.run_dir / "checkpoint_c", model, ema.model, optimizer, scheduler, state, job)
    export_model(ema.model, job.run_dir, state.step)
    for path in (job.run_dir, job.run_dir / "model", checkpoint):
        loaded = load_trained_model(path)
        assert not loaded.training
        assert_state_dicts_equal(loaded, ema.model)


# --------------------------------------------------------------------------- msc sample


@pytest.fixture
def exported_run(job):
    model, ema, *_ = trained_objects(job, 2)
    export_model(ema.model, job.run_dir, 2)
    return job.run_dir


def test_msc_sample_writes_an_mp4_of_the_requested_length(exported_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "video.mp4"
    code = main(["sample", str(exported_run), "--frames", "8", "--out", str(out), "--steps", "4",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    frames = decode_video_bytes(out.read_bytes())
    assert frames.shape == (8, 128, 128, 3)  # twice the 4-frame training length, 16 px shown 8x


def test_msc_sample_continues_a_prefix_video(job, exported_run: Path, tmp_path: Path, capsys) -> None:
    clip = MovingMNISTBatches(job.data, 7, 0, 1, 1).batch(0)["video"][0]  # (1, 4, 16, 16)
    prefix_frames = video_to_rgb_frames(clip[:, :3])
    write_gif(tmp_path / "prefix.gif", prefix_frames, 8.0)
    out = tmp_path / "continued.gif"
    code = main(["sample", str(exported_run), "--frames", "6", "--out", str(out), "--prefix",
                 str(tmp_path / "prefix.gif"), "--steps", "4", "--scale", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    frames = read_gif(out)
    assert frames.shape[1:] == (16, 16, 3)
    # the prefix is kept (up to the GIF palette) and continued
    assert np.abs(frames[:3].astype(int) - prefix_frames.astype(int)).max() <= 2


def test_msc_sample_missing_checkpoint_exits_2(tmp_path: Path, capsys) -> None:
    code = main(["sample", str(tmp_path / "nowhere"), "--frames", "4", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"msc: error: model not found: {tmp_path / 'nowhere'}"


def test_msc_sample_damaged_weights_exit_2_naming_the_file(exported_run: Path, tmp_path: Path, capsys) -> None:
    weights = exported_run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = main(["sample", str(exported_run), "--frames", "4", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and str(weights) in err and "Traceback" not in err


def test_msc_sample_damaged_checkpoint_exits_2(job, two_checkpoints, tmp_path: Path, capsys) -> None:
    broken = two_checkpoints[1]
    shutil.copy(two_checkpoints[0] / "ema.safetensors", broken / "ema.safetensors")  # wrong step's weights
    code = main(["sample", str(broken), "--frames", "4", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "does not match its SHA-256" in err
