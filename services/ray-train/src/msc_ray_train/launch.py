"""Driver side of a training run: a TrainJob -> a Ray Train `TorchTrainer` run.

`run_training(job)` runs on a private local Ray started for the run (no address and no
`RAY_ADDRESS`, even when another Ray cluster runs on this machine) or on the cluster at
`address` (`auto`, `HOST:PORT`, `ray://HOST:PORT`; `RAY_ADDRESS` as inside
`ray job submit`), checks that a re-run of an existing run name has the same model, and
runs `train_loop.train_worker` on `scaling.workers` DDP workers (gloo on CPU, NCCL on
GPU) with

- `RunConfig(name=run.name, storage_path=run.storage_path)`: re-running the same name
  resumes from its latest checkpoint (Ray Train restores the run's checkpoint list);
- `CheckpointConfig(num_to_keep=keep_checkpoints)`;
- `FailureConfig(max_failures)`: a failed worker group is restarted from the last
  checkpoint that many times.

A progress bar follows `<run>/metrics.jsonl`. Failures come back as `TrainingFailed`
or `TrainingDiverged` with a one-paragraph message, never a Ray traceback.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from msc_core.cli import CommandFailed
from msc_core.config import ConfigError

from msc_ray_train.job import TrainJob
from msc_ray_train.latent_kinds import resolve_latent_normalization
from msc_ray_train.train_checkpoint import EXPORT_DIR, latest_valid_checkpoint, read_job_dict, read_trainer_state
from msc_ray_train.train_loop import EVENTS_FILE, METRICS_FILE, read_metrics, train_worker

logger = logging.getLogger("msc_ray_train")

# Defaults for runs started from this process (a user's own settings win): no usage
# reporting, no token auth on a private local cluster, a 0.2 s controller poll instead
# of 2 s (each report otherwise waits for the next poll), and workers in the Python
# environment Ray runs in: Ray would otherwise start every worker with `uv run` when an
# ancestor of the driver is `uv run` (`uv run msc ...`, `uv run pytest`), in the driver's
# working directory, which fails outside the project ("No module named 'ray'").
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
# Only for a cluster this process starts itself: nothing can be preempted there.
LOCAL_RAY_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class TrainingFailed(CommandFailed):
    """The Ray Train run failed (a worker died or raised) more often than max_failures allows."""


class TrainingDiverged(CommandFailed):
    """The run stopped because the loss was not finite for max_nonfinite_steps steps in a row."""


@dataclass(frozen=True)
class TrainOutcome:
    run_dir: Path
    step: int
    start_step: int
    metrics: dict[str, Any]
    checkpoint_dir: Path | None
    model_dir: Path
    wall_time_s: float


def configure_ray_environment(local: bool) -> None:
    """Set the environment defaults above (call before Ray starts)."""
    for name, value in {**RAY_ENV_DEFAULTS, **(LOCAL_RAY_ENV_DEFAULTS if local else {})}.items():
        os.environ.setdefault(name, value)


def check_resumable(job: TrainJob) -> int:
    """The step a re-run of `job.run.name` resumes from (0 for a new run).

    Raises ConfigError when the run's checkpoints hold a different model config: their
    weights could not be loaded into the model this job describes.
    """
    latest = latest_valid_checkpoint(job.run_dir)
    if latest is None:
        return 0
    saved = read_job_dict(latest).get("model")
    current = job.model.model_dump(mode="json")
    if saved != current:
        changed = sorted(k for k in set(saved or {}) | set(current) if (saved or {}).get(k) != current.get(k))
        raise ConfigError(
            f"run {job.run.name!r} in {job.run.storage_dir} was trained with a different model config "
            f"(fields differ: {', '.join('model.' + k for k in changed)}); use a new run.name, or restore "
            f"the model section saved in {latest / 'job.json'}"
        )
    return read_trainer_state(latest).step


class _JsonlFollower:
    """The complete lines appended to a JSONL file since this follower was created."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0

    def new_records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete, _, _ = chunk.rpartition(b"\n")  # a line being written is read next time
        if not complete:
            return []
        self.offset += len(complete) + 1
        records = []
        for line in complete.decode().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


class _ProgressMonitor:
    """Follows `<run>/metrics.jsonl` and `events.jsonl` in a thread: a tqdm bar of the
    step, and one line per (re)start of the worker group (resumes, restarts, skipped
    damaged checkpoints)."""

    def __init__(self, job: TrainJob, start: int, enabled: bool) -> None:
        self.job = job
        self.metrics = _JsonlFollower(job.run_dir / METRICS_FILE)
        self.events = _JsonlFollower(job.run_dir / EVENTS_FILE)
        self.starts = 0
        self.bar = tqdm(total=job.steps, initial=start, unit="step", desc=job.run.name, disable=not enabled,
                        dynamic_ncols=True)
        self.enabled = enabled
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "_ProgressMonitor":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self._poll()
        self.bar.close()

    def _follow(self) -> None:
        while not self.stop_event.wait(0.5):
            self._poll()

    def _say(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line)
        else:  # events reach the console with or without a bar
            print(f"{self.job.run.name}: {line}", file=sys.stderr, flush=True)

    def _poll(self) -> None:
        for event in self.events.new_records():
            self.starts += 1
            if self.starts > 1:
                self._say(f"worker group restarted after a failure ({self.starts - 1} of "
                          f"max_failures={self.job.max_failures})")
            for name, problem in (event.get("damaged_checkpoints") or {}).items():
                self._say(f"skipping damaged checkpoint {name}: {problem}")
            if event.get("resumed_from"):
                self._say(f"resuming at step {event['step']} from {event['resumed_from']}")
        for record in self.metrics.new_records():
            self.bar.n = int(record["step"])
            loss = record.get("loss")
            self.bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "n/a",
                                 samples_s=f"{record.get('samples_per_s') or 0:.1f}", refresh=False)
            self.bar.refresh()


# how long `msc train --address` waits for a cluster to answer before refusing the address
# (ray.init itself keeps retrying an address where nothing listens for minutes)
ADDRESS_PROBE_TIMEOUT_S = 5.0
RAY_CLIENT_DEFAULT_PORT = 10001


def resolve_address(address: str | None) -> str | None:
    """`address`, else `RAY_ADDRESS` (set inside `ray job submit`), else None: a private local Ray.
    `"local"` also means a private local Ray."""
    value = address or os.environ.get("RAY_ADDRESS") or None
    return None if value == "local" else value


def _host_port(address: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, ""
    if not port and default_port is not None:
        return host or address, default_port
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r} is not HOST:PORT; use auto, HOST:PORT (the head's GCS port, 6379 by "
            "default), ray://HOST:PORT, or no address for a private local Ray"
        )
    return host, int(port)


def check_address(address: str) -> None:
    """Refuse, within seconds, an address where no Ray cluster answers (ValueError)."""
    if address.startswith(("http://", "https://")):
        raise ValueError(
            f"Ray address {address!r} is a dashboard (job submission) address: use it with `ray job submit "
            "--address`; `msc train --address` takes the head's GCS address (auto, HOST:6379 or ray://HOST:10001)"
        )
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError):
            found = None
        if found is None:
            raise ValueError(
                "Ray address 'auto': no Ray cluster is running on this machine (start one with `ray start --head`, "
                "or give no address for a private local Ray)"
            )
        host, port = _host_port(found, None)
    elif address.startswith("ray://"):
        host, port = _host_port(address[len("ray://"):], RAY_CLIENT_DEFAULT_PORT)
    else:
        host, port = _host_port(address, None)
    try:
        with socket.create_connection((host, port), timeout=ADDRESS_PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        raise ValueError(
            f"Ray address {address!r}: no Ray cluster answers at {host}:{port} ({err.strerror or err}); start the "
            "head with `ray start --head`, check the address, or give no address for a private local Ray"
        ) from None


def _ensure_ray(address: str | None, job: TrainJob, ray_logs: bool) -> bool:
    """Connect to the cluster at `address` or start a private local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": ray_logs}
    if address is not None:
        check_address(address)
        ray.init(address=address, **options)
        return False
    cpus_needed = job.scaling.workers * (job.scaling.resources_per_worker or {}).get("CPU", 1)
    try:
        # "local": a new Ray of our own, even when a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus_needed)), **options)
    except OSError as err:  # e.g. a RAY_TMPDIR too long for Ray's unix sockets (107 bytes)
        raise ValueError(
            f"could not start a local Ray: {err}; Ray keeps its sockets under RAY_TMPDIR "
            f"({os.environ.get('RAY_TMPDIR', 'unset: /tmp')}): point it at a short, writable folder"
        ) from None
    return True


def _failure_message(job: TrainJob, err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = "; ".join(lines[:4]) if lines else type(err).__name__
    retries = "no restarts allowed (max_failures=0)" if job.max_failures == 0 else (
        f"after {job.max_failures} restart(s) (max_failures={job.max_failures})" if job.max_failures > 0 else ""
    )
    return f"training run {job.run.name!r} failed {retries}: {reason}. {_resume_hint(job)} ({job.run_dir})."


def _resume_hint(job: TrainJob) -> str:
    latest = latest_valid_checkpoint(job.run_dir)
    if latest is None:
        return "no checkpoint was written"
    return f"the last checkpoint is step {read_trainer_state(latest).step}; re-run the same job to resume"


def _interrupted_message(job: TrainJob) -> str:
    record = last_record(job.run_dir) or {}
    reached = f"at step {record['step']}" if "step" in record else "before its first report"
    return f"training run {job.run.name!r} interrupted {reached}; {_resume_hint(job)}"


def _last_start_step(run_dir: Path, default: int) -> int:
    path = run_dir / EVENTS_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return default


def last_record(run_dir: Path) -> dict[str, Any] | None:
    """The last complete record of `<run>/metrics.jsonl` (how the run ended), None without one."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed writer
    return None


def check_cluster_resources(job: TrainJob, available: dict[str, float]) -> None:
    """Refuse, before any worker starts, a job whose workers ask for a resource the Ray
    cluster lacks, or more of it than the cluster has (Ray Train would wait forever)."""
    known = ", ".join(f"{name} {amount:g}" for name, amount in sorted(available.items()) if not name.startswith("node:"))
    workers = job.scaling.workers
    for name, amount in job.scaling.resources().items():
        if amount <= 0:
            continue
        if name not in available:
            field = "scaling.use_gpu" if name == "GPU" and job.scaling.use_gpu else "scaling.resources_per_worker"
            raise ValueError(f"{field} asks each worker for {amount:g} {name}, which this Ray cluster does not have "
                             f"(it has: {known})")
        if amount * workers > available[name]:
            raise ValueError(f"scaling: {workers} workers x {amount:g} {name} = {amount * workers:g} {name}, but the Ray "
                             f"cluster has {available[name]:g}; lower scaling.workers or the resources per worker")


def run_training(
    job: TrainJob, address: str | None = None, progress: bool = True, ray_logs: bool = False
) -> TrainOutcome:
    """Train `job` on Ray; resume when `<storage_path>/<name>` already holds checkpoints.

    `ray_logs`: show the output of Ray's actors (workers, controller) on this console
    when this call starts or connects to Ray; off by default (it lands in Ray's session
    logs), since the progress bar and the run's events already say what happens.
    """
    if job.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard: true needs the `tensorboard` package: pip install 'msc-ray-train[tensorboard]'")
    job, resolved = resolve_latent_normalization(job)
    if resolved is not None:
        print(f"{job.run.name}: {resolved}", file=sys.stderr)
    start_step = check_resumable(job)
    address = resolve_address(address)
    configure_ray_environment(local=address is None)
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    owns_ray = _ensure_ray(address, job, ray_logs)
    try:
        check_cluster_resources(job, ray.cluster_resources())
    except ValueError:
        if owns_ray:
            ray.shutdown()
        raise
    job.run_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job.model_dump(mode="json")},
        torch_config=TorchConfig(backend="nccl" if job.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.scaling.workers,
            use_gpu=job.scaling.use_gpu,
            resources_per_worker=job.scaling.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=job.run.name,
            storage_path=str(job.run.storage_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        ),
    )
    # Ray Train's fit() installs its own SIGINT handler (abort the run, then sys.exit, which
    # ends with status 1 and no message) and leaves it installed; the previous handler is
    # put back afterwards, and Ray's exit becomes the interrupt it stands for.
    sigint_handler = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        with _ProgressMonitor(job, start_step, enabled=progress):
            result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingFailed(_failure_message(job, err)) from None
    except (KeyboardInterrupt, SystemExit):
        raise KeyboardInterrupt(_interrupted_message(job)) from None
    finally:
        if sigint_handler is not None:
            signal.signal(signal.SIGINT, sigint_handler)
        if owns_ray:
            ray.shutdown()
    # The run's own last record says how it ended; Ray's result holds the metrics of the
    # last report that carried a checkpoint, which can be older (a diverged run's last
    # checkpoint was still "running").
    metrics = {**dict(result.metrics or {}), **(last_record(job.run_dir) or {})}
    step = int(metrics.get("step", start_step))
    if metrics.get("status") == "diverged":
        raise TrainingDiverged(f"training run {job.run.name!r} diverged at step {step}: {metrics.get('message')}")
    if step < job.steps:
        raise TrainingFailed(
            f"training run {job.run.name!r} stopped at step {step} of {job.steps} (last status "
            f"{metrics.get('status')!r}); {_resume_hint(job)} ({job.run_dir})."
        )
    checkpoint_dir = Path(result.checkpoint.path) if result.checkpoint is not None else None
    return TrainOutcome(
        run_dir=job.run_dir,
        step=step,
        # where the last (re)start of the worker group began (its event: the checkpoint it
        # actually loaded, which can be older than the newest one a skipped checkpoint hid)
        start_step=_last_start_step(job.run_dir, start_step),
        metrics=metrics,
        checkpoint_dir=checkpoint_dir,
        model_dir=job.run_dir / EXPORT_DIR,
        wall_time_s=time.perf_counter() - started,
    )


__all__ = [
    "TrainOutcome",
    "TrainingDiverged",
    "TrainingFailed",
    "check_resumable",
    "configure_ray_environment",
    "read_metrics",
    "run_training",
]
