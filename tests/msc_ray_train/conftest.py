"""Shared fixtures of the msc_ray_train tests: a tiny, fast training job."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# Before Ray is imported anywhere: no usage stats, no auth token, 0.2 s controller polls.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


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


# --------------------------------------------------------------------------- crash and resume


class Crash(RuntimeError):
    """A worker lost in the middle of a run (raised by `RaylikeReporter`)."""


class RaylikeReporter:
    """A `report` for `run_training_loop` that persists checkpoints as `<run>/checkpoint_<n>`
    (a copy, as Ray Train does) and raises `Crash` when asked to report `crash_at_step`."""

    def __init__(self, run_dir: Path, crash_at_step: int | None = None) -> None:
        self.run_dir, self.crash_at_step = run_dir, crash_at_step
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if metrics["step"] == self.crash_at_step:
            raise Crash(f"worker lost at step {metrics['step']}")
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            target = self.run_dir / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint_dir, target)
            self.checkpoints.append(target)

    @property
    def latest(self) -> str | None:
        return str(self.checkpoints[-1]) if self.checkpoints else None


def crash_and_resume(job: Any, crash_at_step: int, **loop_kwargs: Any) -> RaylikeReporter:
    """Run `job` in-process on one CPU rank, crash it at `crash_at_step`, resume it from its
    last checkpoint to the end; the resumed run's reporter (checkpoints of both runs)."""
    from msc_ray_train.train_loop import run_training_loop

    cpu = torch.device("cpu")
    crashing = RaylikeReporter(job.run_dir, crash_at_step=crash_at_step)
    with pytest.raises(Crash):
        run_training_loop(job, 0, 1, cpu, None, crashing, **loop_kwargs)
    resumed = RaylikeReporter(job.run_dir)
    resumed.checkpoints = list(crashing.checkpoints)
    assert run_training_loop(job, 0, 1, cpu, crashing.latest, resumed, **loop_kwargs) == "finished"
    return resumed


def assert_same_training_state(job: Any, checkpoint_a: str | Path, checkpoint_b: str | Path) -> None:
    """Two training checkpoints of `job` hold bit-identical weights, EMA, AdamW moments,
    LR schedule and trainer state."""
    from msc_core.testing import assert_state_dicts_equal
    from msc_ray_train.ema import ExponentialMovingAverage
    from msc_ray_train.model_kinds import build_model
    from msc_ray_train.optimization import build_optimizer, build_scheduler
    from msc_ray_train.train_checkpoint import load_checkpoint

    loaded = []
    for checkpoint in (checkpoint_a, checkpoint_b):
        torch.manual_seed(job.seed)
        model = build_model(job.model)
        ema = ExponentialMovingAverage(model, job.ema)
        optimizer = build_optimizer(model, job.optim)
        scheduler = build_scheduler(optimizer, job.optim, job.steps)
        state = load_checkpoint(checkpoint, model, ema.model, optimizer, scheduler)
        loaded.append((state, model, ema, optimizer, scheduler))
    (state_a, model_a, ema_a, optimizer_a, scheduler_a), (state_b, model_b, ema_b, optimizer_b, scheduler_b) = loaded
    assert state_a == state_b
    assert scheduler_a.state_dict() == scheduler_b.state_dict()
    assert_state_dicts_equal(model_a, model_b)
    assert_state_dicts_equal(ema_a.model, ema_b.model)
    adam_a, adam_b = optimizer_a.state_dict(), optimizer_b.state_dict()
    assert adam_a["param_groups"] == adam_b["param_groups"]
    for index, moments in adam_a["state"].items():
        assert all(torch.equal(value, adam_b["state"][index][name]) for name, value in moments.items())


@pytest.fixture(scope="session")
def raylike_run() -> Any:
    """`RaylikeReporter`, `crash_and_resume` and `assert_same_training_state` for test files
    (conftest modules are not importable under `--import-mode=importlib`)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        Reporter=RaylikeReporter, Crash=Crash, crash_and_resume=crash_and_resume,
        assert_same_training_state=assert_same_training_state,
    )


# --------------------------------------------------------------------------- a real `ray start` head


def free_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 right now."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes_mentioning(text: str) -> set[int]:
    """PIDs of the processes whose command line holds `text`, with all their descendants
    (this process and its ancestors excluded)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (parent, cmdline)
    ancestors, pid = set(), os.getpid()
    while pid in table and pid not in ancestors:
        ancestors.add(pid)
        pid = table[pid][0]
    found = {pid for pid, (_, cmdline) in table.items() if text in cmdline} - ancestors
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in found} - found - ancestors
        found |= children
        grew = bool(children)
    return found


def stop_processes_under(temp_dir: Path, grace_s: float = 5.0) -> None:
    """Stop the Ray cluster whose temp dir is `temp_dir`, by the PIDs of its own processes
    (never `ray stop`, which ends every Ray on the machine)."""
    import signal
    import time

    pids = processes_mentioning(str(temp_dir))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.1)
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
        if not pids:
            return


class RayHead:
    """A head node started with `ray start --head` in its own temporary RAY_TMPDIR, with
    every port chosen free, from this environment (its `bin/` first on PATH, as `uv run`
    or an activated virtual environment give it)."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2) -> None:
        import subprocess
        import sys

        self.temp_dir = temp_dir
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_TMPDIR": str(temp_dir)}
        (self.gcs_port, self.dashboard_port, client, node_manager, object_manager, agent_listen, agent_grpc,
         metrics, runtime_env) = free_ports(9)
        self.ray = str(Path(bin_dir) / "ray")
        command = [
            self.ray, "start", "--head", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            f"--num-cpus={num_cpus}", "--disable-usage-stats",
        ]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            stop_processes_under(temp_dir)
            raise RuntimeError(f"ray start --head failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def stop(self) -> None:
        stop_processes_under(self.temp_dir)


@pytest.fixture(scope="module")
def ray_head() -> Any:
    import tempfile

    # a short path: Ray's unix sockets live under it (107-byte limit)
    temp_dir = Path(tempfile.mkdtemp(prefix="msc-ray-", dir="/tmp"))
    head = RayHead(temp_dir)
    try:
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
