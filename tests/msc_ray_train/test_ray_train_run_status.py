"""An honest run status, through the `msc` console script on a real local Ray:

- a run whose loss stops being finite exits with status 1 and one line naming "diverged"
  and the step it stopped at (its final word is the run's last record, not the last
  checkpoint's, which was still "running");
- a re-run past a poisoned newest checkpoint (an optimizer state that would run code
  when unpickled, its manifest re-written to match) continues from the checkpoint before
  it, names the one it skipped and why, and ends where an uninterrupted run ends;
- the run's events (resume, skipped checkpoint) reach the console with --no-progress.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from msc_core.checkpoint import save_pretrained, write_manifest
from msc_core.testing import perturb_parameters
from msc_ray_train.train_checkpoint import CHECKPOINT_FILES, checkpoint_dirs, read_trainer_state
from msc_ray_train.train_loop import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent


def msc_train(job: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(BIN / "msc"), "train", "job.yaml", "--no-progress"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_diverging_run_exits_1_naming_diverged_and_the_step(make_job_dict, tmp_path: Path) -> None:
    from msc_tokenizers import CausalVAE3D, CausalVAE3DConfig

    # a latent model whose normalisation scale is absurdly small: its latents overflow to
    # inf and every loss is infinite (a user's wrong statistics, not an injected fault)
    vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02)
    save_pretrained(vae, tmp_path / "vae")
    job = make_job_dict("diverging", steps=8, checkpoint_every=2, log_every=1, max_nonfinite_steps=3)
    job["model"] = {"kind": "ardiffusion", "preset": "tiny", "tokenizer_path": str(tmp_path / "vae"),
                    "data": {"input_layout": "grid", "channels": 4, "num_frames": 2, "height": 2, "width": 2},
                    "transformer": {"dim": 32, "num_heads": 2, "patch_size": 1, "pool": 2, "max_pool": None},
                    "latent_normalization": {"layout": "grid", "shift": [0.0] * 4, "scale": [1e-38] * 4}}
    job["data"] = {"source": "moving-mnist", "frames": 5, "size": 32, "output_size": 16, "num_digits": 1, "channels": 3}
    job["run"]["storage_path"] = "runs"
    result = msc_train(job, tmp_path)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("msc: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    records = read_metrics(tmp_path / "runs" / "diverging")
    assert records[-1]["status"] == "diverged"
    assert errors[0].startswith(f"msc: error: training run 'diverging' diverged at step {records[-1]['step']}: ")
    assert "not finite for 3 steps in a row" in errors[0] and "lower optim.lr" in errors[0]


def test_a_rerun_skips_a_poisoned_newest_checkpoint_and_says_so_without_a_progress_bar(
    make_job_dict, tmp_path: Path
) -> None:
    job = make_job_dict("poisoned", steps=4, checkpoint_every=2, keep_checkpoints=3)
    job["optim"] = {"lr": 1e-3, "warmup_steps": 2, "schedule": "constant"}
    job["run"]["storage_path"] = "runs"
    first = msc_train(job, tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "poisoned"
    newest = max(checkpoint_dirs(run_dir), key=lambda d: read_trainer_state(d).step)
    assert read_trainer_state(newest).step == 4
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (newest / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    write_manifest(newest, CHECKPOINT_FILES, step=4)  # the manifest matches: only loading can tell

    job["steps"] = 6
    second = msc_train(job, tmp_path)
    assert second.returncode == 0, second.stderr
    assert not marker.exists()  # refused by torch.load(weights_only=True), never executed
    assert (f"poisoned: skipping damaged checkpoint {newest.name}: {newest / 'optimizer.pt'} (or trainer_state.json) "
            "does not load: UnpicklingError") in second.stderr
    assert "poisoned: resuming at step 2 from " in second.stderr
    assert f"run 'poisoned': step 6/6 (resumed from step 2)" in second.stdout
    assert [r["step"] for r in read_metrics(run_dir)][-1] == 6
    starts = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [s["step"] for s in starts] == [0, 2] and newest.name in starts[1]["damaged_checkpoints"]


def test_ctrl_c_ends_the_run_with_status_130_naming_the_step_it_reached(make_job_dict, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the console script, as a terminal sends it) during training: Ray
    Train aborts its run and exits; msc says where the run stopped and how to go on."""
    import signal
    import time

    job = make_job_dict("interrupted", steps=100_000, checkpoint_every=10_000, log_every=1)
    job["run"]["storage_path"] = "runs"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([str(BIN / "msc"), "train", "job.yaml", "--no-progress"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "interrupted" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.is_file() and len(read_metrics(metrics.parent)) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    reached = read_metrics(metrics.parent)[-1]["step"]
    assert f"msc: interrupted: training run 'interrupted' interrupted at step {reached}; " in stderr
    assert "Traceback" not in stderr
