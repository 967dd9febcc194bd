"""Training on a real Ray cluster, as a user reaches it: a head started with `ray start
--head` (its own RAY_TMPDIR, free ports, stopped by its own PIDs), jobs sent with
`ray job submit --working-dir` and with `msc train --address`, and `msc train` without an
address next to that cluster. Every command runs through the console scripts, from a
working directory of its own, with the relative paths a user types.

- `msc train --address` resolves a relative `run.storage_path` where it was typed (the
  driver's working directory), not in the workers' own working directories;
- under `ray job submit` the driver's working directory is a temporary copy of
  --working-dir, so a relative storage path is refused with one line; an absolute one
  (`--storage-path`) gives the complete run folder;
- without an address, `msc train` runs on a private local Ray even when a cluster is
  recorded in RAY_TMPDIR (it used to attach to it and fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_trainer_state

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent
STEPS = 4


def write_job(folder: Path, make_job_dict, name: str) -> Path:
    """A tiny job whose run.storage_path is the relative path `runs`, as a user writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    job = make_job_dict(name, steps=STEPS, checkpoint_every=2, log_every=2)
    job["run"] = {"name": name, "storage_path": "runs"}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_complete_run(run_dir: Path, steps: int = STEPS) -> None:
    """Checkpoints, metrics, events, heartbeats of both workers and the exported model, all
    in `run_dir`."""
    latest = latest_valid_checkpoint(run_dir)
    assert latest is not None and read_trainer_state(latest).step == steps, sorted(os.listdir(run_dir))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == steps and metrics[-1]["status"] == "finished"
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])["step"] == 0
    assert {p.name for p in (run_dir / "workers").iterdir()} == {"rank-0.json", "rank-1.json"}
    assert {p.name for p in (run_dir / "model").iterdir()} >= {"config.json", "model.safetensors"}


def assert_msc_sample_works(run_arg: str, cwd: Path, env: dict[str, str]) -> None:
    result = run([str(BIN / "msc"), "sample", run_arg, "--frames", "6", "--steps", "4", "--out", "sample.gif",
                  "--no-progress"], cwd, env)
    assert result.returncode == 0, result.stderr
    assert (cwd / "sample.gif").stat().st_size > 0


def test_ray_job_submit_refuses_a_relative_storage_path_and_runs_with_an_absolute_one(
    ray_head, make_job_dict, tmp_path: Path
) -> None:
    working_dir = tmp_path / "project"
    write_job(working_dir, make_job_dict, "submitted")
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard, "--working-dir", "."]

    refused = run([*submit, "--", "msc", "train", "job.yaml", "--no-progress"], working_dir, ray_head.env)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert ("msc: error: invalid job file job.yaml: run.storage_path: storage_path 'runs' is relative, but this "
            "job runs under `ray job submit`") in output
    assert "Traceback" not in output

    shared = tmp_path / "shared-storage"
    accepted = run([*submit, "--", "msc", "train", "job.yaml", "--no-progress", "--storage-path", str(shared)],
                   working_dir, ray_head.env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert f"run 'submitted': step {STEPS}/{STEPS}" in accepted.stdout
    assert_complete_run(shared / "submitted")
    assert_msc_sample_works(str(shared / "submitted"), tmp_path, ray_head.env)


def test_msc_train_address_resolves_a_relative_storage_path_on_the_driver(
    ray_head, make_job_dict, tmp_path: Path
) -> None:
    working_dir = tmp_path / "laptop"
    write_job(working_dir, make_job_dict, "attached")
    result = run([str(BIN / "msc"), "train", "job.yaml", "--address", ray_head.address, "--no-progress"],
                 working_dir, ray_head.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"run:        {working_dir / 'runs' / 'attached'}" in result.stdout
    assert_complete_run(working_dir / "runs" / "attached")
    assert_msc_sample_works("runs/attached", working_dir, ray_head.env)


def test_msc_train_without_an_address_starts_a_private_ray_beside_a_running_cluster(
    ray_head, make_job_dict, tmp_path: Path
) -> None:
    working_dir = tmp_path / "beside"
    write_job(working_dir, make_job_dict, "private")
    env = {k: v for k, v in ray_head.env.items() if k != "RAY_ADDRESS"}  # RAY_TMPDIR records the cluster
    result = run([str(BIN / "msc"), "train", "job.yaml", "--no-progress"], working_dir, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_run(working_dir / "runs" / "private")
