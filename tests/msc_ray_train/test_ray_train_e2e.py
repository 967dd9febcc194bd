"""End to end on a real local Ray cluster (2 CPU workers, DDP over gloo).

- re-running a job resumes at its newest valid saved step (a damaged newest
  checkpoint is skipped for the one before) and continues exactly as an
  uninterrupted run: same losses, same final weights;
- a worker SIGKILLed mid-run is restarted from the last checkpoint when
  max_failures >= 1, and fails with a clear message when max_failures = 0;
- `msc demo` (run_demo, on a tiny job) writes its files, samples every digit at twice
  the training length, and reuses a finished run.
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
    ray.init(num_cpus=2, logging_level=logging.WARNING)
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


def test_demo_writes_its_files_and_samples_each_digit_at_twice_the_training_length(
    ray_cluster, make_job_dict, tmp_path: Path
) -> None:
    import av
    import yaml

    from msc_ray_train.demo import SAMPLE_OFFSET, SAMPLE_STEPS, GUIDANCE, VIEW_SCALE, run_demo
    from msc_ray_train.sampling import generate_video
    from msc_ray_train.video_output import read_gif, video_to_rgb_frames

    job_dict = make_job_dict("demo", steps=4, checkpoint_every=4)
    job_dict["model"]["num_classes"] = 10
    job_dict["seed"] = 5
    job_file = tmp_path / "demo.yaml"
    job_file.write_text(yaml.safe_dump(job_dict))
    out = tmp_path / "demo-out"
    summary = run_demo(out, job_path=job_file, progress=False)

    assert {p.name for p in out.iterdir()} >= {"sample.mp4", "sample.gif", "real.gif", "loss.png", "metrics.json", "runs"}
    assert json.loads((out / "metrics.json").read_text()) == summary
    assert summary["steps"] == 4 and summary["sample_frames"] == 2 * summary["train_frames"] == 8
    assert summary["sample_digits"] == list(range(10))
    sample, real = read_gif(out / "sample.gif"), read_gif(out / "real.gif")
    tile = 16 * VIEW_SCALE
    assert sample.shape == (8, 2 * tile + 2, 5 * tile + 8, 3) and real.shape == (4, 2 * tile + 2, 5 * tile + 8, 3)
    with av.open(str(out / "sample.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8

    # each tile is the exported model's seeded sample of its digit
    model = load_trained_model(out / "runs" / "demo")
    for digit in (0, 7):
        video = generate_video(model, 8, seed=5 + digit, num_steps=SAMPLE_STEPS,
                               offset=SAMPLE_OFFSET, class_label=digit, guidance_scale=GUIDANCE, progress=False)
        row, col = divmod(digit, 5)
        got = sample[:, row * (tile + 2) : row * (tile + 2) + tile, col * (tile + 2) : col * (tile + 2) + tile]
        assert abs(got.astype(int) - video_to_rgb_frames(video, scale=VIEW_SCALE).astype(int)).max() <= 2

    # a second call reuses the finished run: no training, same samples
    again = run_demo(out, job_path=job_file, progress=False)
    assert again["resumed_from_step"] == 4 and again["steps"] == 4
    assert (read_gif(out / "sample.gif") == sample).all()
