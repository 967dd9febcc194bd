"""End to end on a real local Ray cluster (2 CPU workers, DDP over gloo).

- re-running a job resumes at its newest valid saved step (a damaged newest
  checkpoint is skipped for the one before) and continues exactly as an
  uninterrupted run: same losses, same final weights;
- a worker SIGKILLed mid-run is restarted from the last checkpoint when
  max_failures >= 1, and fails with a clear message when max_failures = 0;
- the Quick start (`msc demo`) is tested as a user types it in test_ray_train_quick_start.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

import ray  # noqa: E402

from msc_core.testing import assert_state_dicts_equal  # noqa: E402
from msc_ray_train.job import job_from_dict  # noqa: E402
from msc_ray_train.launch import TrainingFailed, configure_ray_environment, run_training  # noqa: E402
from msc_ray_train.sampling import load_trained_model  # noqa: E402
from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_trainer_state  # noqa: E402
from msc_ray_train.train_loop import read_metrics  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_cluster():
    configure_ray_environment(local=True)
    ray.init(address="local", num_cpus=2, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def kill_when_rank_reaches(run_dir: Path, rank: int, step: int, killed: dict, timeout: float = 600.0) -> None:
    """Poll the rank's heartbeat; SIGKILL its process once it reports `step` or later."""
    heartbeat = run_dir / "workers" / f"rank-{rank}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if heartbeat.is_file():
            record = json.loads(heartbeat.read_text())
            if record["step"] >= step:
                os.kill(record["pid"], signal.SIGKILL)
                killed.update(record)
                return
        time.sleep(0.05)


def test_rerun_resumes_from_the_saved_step_and_continues_like_an_uninterrupted_run(
    ray_cluster, make_job_dict
) -> None:
    # constant LR after warm-up: the schedule must not depend on where `steps` was cut
    optim = {"schedule": "constant", "warmup_steps": 2}
    straight = run_training(job_from_dict(make_job_dict("straight", steps=8, optim=optim)), progress=False)
    first = run_training(job_from_dict(make_job_dict("resumed", steps=6, optim=optim)), progress=False)
    assert (first.start_step, first.step) == (0, 6)

    # the newest checkpoint (step 6) is damaged: the re-run resumes from the one before
    job = job_from_dict(make_job_dict("resumed", steps=8, optim=optim))
    newest = latest_valid_checkpoint(job.run_dir)
    assert read_trainer_state(newest).step == 6
    weights = newest / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 3)
    second = run_training(job, progress=False)
    assert (second.start_step, second.step) == (4, 8)
    assert second.metrics["status"] == "finished" and second.metrics["world_size"] == 2

    records = read_metrics(job.run_dir)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert [r["start_step"] for r in records] == [0, 0, 4, 4]  # step 6 was trained again after the resume
    # same losses and the same final weights as the run that was never interrupted
    assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(straight.run_dir)]
    assert_state_dicts_equal(load_trained_model(second.checkpoint_dir), load_trained_model(straight.checkpoint_dir))
    starts = [json.loads(line) for line in (job.run_dir / "events.jsonl").read_text().splitlines()]
    assert [s["step"] for s in starts] == [0, 4]


def test_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, make_job_dict) -> None:
    job = job_from_dict(make_job_dict("fault", steps=16, checkpoint_every=4, max_failures=1))
    killed: dict = {}
    killer = threading.Thread(target=kill_when_rank_reaches, args=(job.run_dir, 1, 6, killed), daemon=True)
    killer.start()
    outcome = run_training(job, progress=False)
    killer.join(timeout=5)
    assert killed, "rank 1 was never killed"
    assert outcome.step == 16 and outcome.metrics["status"] == "finished"
    # the restarted group resumed from the last checkpoint before the kill (step >= 6), not from 0
    assert 4 <= outcome.start_step <= killed["step"] and outcome.start_step % 4 == 0
    pids = {json.loads((job.run_dir / "workers" / f"rank-{r}.json").read_text())["pid"] for r in (0, 1)}
    assert killed["pid"] not in pids  # a new worker process finished the run
    assert [r["step"] for r in read_metrics(job.run_dir)] == list(range(2, 17, 2))


def test_killed_worker_without_retries_fails_with_a_clear_message(ray_cluster, make_job_dict) -> None:
    job = job_from_dict(make_job_dict("no-retry", steps=16, checkpoint_every=4, max_failures=0))
    killed: dict = {}
    killer = threading.Thread(target=kill_when_rank_reaches, args=(job.run_dir, 1, 6, killed), daemon=True)
    killer.start()
    with pytest.raises(TrainingFailed) as info:
        run_training(job, progress=False)
    killer.join(timeout=5)
    assert killed
    message = str(info.value)
    assert "training run 'no-retry' failed no restarts allowed (max_failures=0)" in message
    step = read_trainer_state(latest_valid_checkpoint(job.run_dir)).step
    assert f"the last checkpoint is step {step}; re-run the same job to resume" in message
