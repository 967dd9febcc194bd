"""bench/ablations.py as a user runs it: from another directory with a relative --work,
deterministic per (configuration, seed), finished runs reused, tables written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--suite", "offset", "--seeds", "1", "--steps", "2", "--sample-steps", "3", "--jobs", "1",
        "--work", "runs", "--out", "report.json", "--markdown", "tables.md"]


def ablations(cwd: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "ablations.py"), *ARGS, *extra], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])  # the last line is the JSON
    assert report == json.loads((cwd / "report.json").read_text())
    return report


@pytest.mark.slow
def test_ablation_runs_are_deterministic_reused_and_tabulated(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    a, b = ablations(first), ablations(second)

    (name,) = a["configs"]
    run_a, run_b = a["configs"][name]["runs"][0], b["configs"][name]["runs"][0]
    assert "error" not in run_a
    for key in ("heldout_loss", "train_loss_last", "recognition", "frechet"):
        assert run_a[key] == run_b[key], key  # same configuration and seed: the same numbers
    (dir_a,) = (first / "runs").glob("*/seed0")  # under the cwd: the relative --work
    (dir_b,) = (second / "runs").glob("*/seed0")
    samples_a = torch.load(dir_a / "samples.pt", weights_only=True)
    samples_b = torch.load(dir_b / "samples.pt", weights_only=True)
    assert samples_a.keys() == samples_b.keys() == {"default", "3", "real"}
    assert all(torch.equal(samples_a[k], samples_b[k]) for k in samples_a)

    # offset 0 cannot generate 2x the training length: reported, not a crash
    assert "offset=0" in run_a["offsets"]["0"]["error"]
    tables = (first / "tables.md").read_text()
    assert "| 0 | not possible: offset=0" in tables
    (row,) = [line for line in tables.splitlines() if line.startswith("| 3 | ")]
    assert f"{run_a['offsets']['3']['recognition']:.3f} ± 0.000" in row

    # finished runs are reused: scoring again trains nothing and gives the same report
    again = ablations(first, "--score-only")
    assert again["configs"][name]["runs"] == a["configs"][name]["runs"]
