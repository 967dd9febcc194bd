"""Losing a node in the middle of a run, on a real multi-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`: a head without CPUs, where the driver and Ray Train's
controller live, and two 1-CPU worker nodes, one training worker each).

After the run's first checkpoint the node of one worker is removed (all its processes
killed) and a replacement node joins, as an autoscaler would bring one. With
`max_failures: 1` Ray Train restarts the worker group, which resumes from the last
checkpoint: the run reaches its step count and ends in exactly the state of an
uninterrupted run (same losses at every logged step, same weights, EMA, AdamW moments,
schedule and counters).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from msc_ray_train.job import job_from_dict
from msc_ray_train.launch import configure_ray_environment, run_training
from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_trainer_state
from msc_ray_train.train_loop import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]

STEPS, CHECKPOINT_EVERY = 16, 4


@pytest.fixture
def three_node_cluster(monkeypatch: pytest.MonkeyPatch):
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    # its own temp dir: Cluster records its address there for `ray.init()`, which must not
    # point other Ray users of this machine at it
    tmp = tempfile.mkdtemp(prefix="msc-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    temp_dir = Path(tmp) / "ray"  # what Ray makes of RAY_TMPDIR
    temp_dir.mkdir()
    configure_ray_environment(local=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(temp_dir)})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for_first_checkpoint(run_dir: Path, timeout: float = 600) -> int:
    """Block until a checkpoint of the run is persisted and verifies; its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = latest_valid_checkpoint(run_dir)
        if latest is not None:
            return read_trainer_state(latest).step
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint in {run_dir} after {timeout} s")


def test_a_lost_node_is_replaced_and_the_run_finishes_as_if_uninterrupted(
    three_node_cluster, make_job_dict, raylike_run
) -> None:
    cluster, (node_a, node_b) = three_node_cluster
    optim = {"schedule": "constant", "warmup_steps": 2}
    changes = dict(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, log_every=2, max_failures=1, optim=optim)
    straight = run_training(job_from_dict(make_job_dict("straight", **changes)), address=cluster.address,
                            progress=False)

    job = job_from_dict(make_job_dict("node-loss", **changes))
    # the run goes on in a thread: Ray starts a node (a replacement) from the main thread only
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_training, job, address=cluster.address, progress=False)
        first_checkpoint = wait_for_first_checkpoint(job.run_dir)
        cluster.remove_node(node_b, allow_graceful=False)  # every process of that node is killed
        cluster.add_node(num_cpus=1)  # the replacement an autoscaler would bring
        outcome = running.result(timeout=900)

    assert outcome.step == STEPS and outcome.metrics["status"] == "finished"
    # the restarted group resumed from the newest checkpoint the first group wrote, not from 0
    first_group = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = max(r["step"] for r in first_group if r["start_step"] == 0)
    assert CHECKPOINT_EVERY <= first_checkpoint <= outcome.start_step <= reached < STEPS
    assert outcome.start_step % CHECKPOINT_EVERY == 0
    print(f"node lost after the checkpoint of step {first_checkpoint}; the first worker group reached step "
          f"{reached}; the restarted group resumed at step {outcome.start_step} and finished at {outcome.step}")
    starts = [json.loads(line) for line in (job.run_dir / "events.jsonl").read_text().splitlines()]
    assert [s["step"] for s in starts] == [0, outcome.start_step]
    records = read_metrics(job.run_dir)
    assert [r["step"] for r in records] == list(range(2, STEPS + 1, 2))
    assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(straight.run_dir)]
    raylike_run.assert_same_training_state(job, outcome.checkpoint_dir, straight.checkpoint_dir)
