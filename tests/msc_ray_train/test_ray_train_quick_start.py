"""The README's Quick start as a user types it: `msc demo --out demo-out` through the `msc`
console script, from a working directory of its own, with a relative `--out` (the
documented `--steps N` keeps it short). It checks every output file under `demo-out/`,
that nothing landed in the workers' own working directories under Ray's session folder
(where a relative path used to send the run), the progress bar at the last step with a
loss, that the samples are the exported model's seeded samples of every digit at twice
the training length, and that the same command again reuses the finished run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from msc_ray_train.sampling import load_trained_model
from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_trainer_state
from msc_ray_train.train_loop import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_quick_start_as_written_trains_samples_and_writes_every_file_under_the_relative_out(tmp_path: Path) -> None:
    """The README's first command, `msc demo --out demo-out` (shortened with the documented
    `--steps`), through the console script from a working directory of its own."""
    from msc_ray_train.demo import FPS, GUIDANCE, SAMPLE_OFFSET, SAMPLE_STEPS, VIEW_SCALE
    from msc_ray_train.sampling import generate_video
    from msc_ray_train.video_output import read_gif, video_to_rgb_frames

    import shutil
    import tempfile

    user_dir = tmp_path / "user"
    user_dir.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="msc-ray-", dir="/tmp"))  # short: Ray's unix sockets live there
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_UV_RUN_RUNTIME_ENV", None)  # msc's own default, also under `uv run pytest`
    command = [str(Path(sys.executable).parent / "msc"), "demo", "--out", "demo-out", "--steps", "10"]
    result = subprocess.run(command, cwd=user_dir, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]

    out = user_dir / "demo-out"
    assert {p.name for p in out.iterdir()} == {"sample.mp4", "sample.gif", "real.gif", "loss.png", "metrics.json", "runs"}
    run_dir = out / "runs" / "demo"
    assert {"metrics.jsonl", "events.jsonl", "model", "workers"} <= {p.name for p in run_dir.iterdir()}
    assert read_trainer_state(latest_valid_checkpoint(run_dir)).step == 10
    assert [r["step"] for r in read_metrics(run_dir)][-1] == 10
    # nothing of the run landed in a worker's own working directory under Ray's session folder
    assert not [p for p in ray_tmp.rglob("demo-out")]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 10 and summary["run_dir"] == str(run_dir)
    assert summary["sample_frames"] == 2 * summary["train_frames"] == 16 and summary["sample_digits"] == list(range(10))

    # the progress monitor followed the run to its last step and showed the loss
    bar = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("demo:")][-1]
    assert "10/10" in bar and "loss=" in bar, bar

    # at the demo's frame rate: after 10 steps every frame of a sample may be the same image
    sample, real = read_gif(out / "sample.gif", fps=FPS), read_gif(out / "real.gif", fps=FPS)
    tile = 32 * VIEW_SCALE
    assert sample.shape == (16, 2 * tile + 2, 5 * tile + 8, 3) and real.shape == (8, 2 * tile + 2, 5 * tile + 8, 3)
    with av.open(str(out / "sample.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    # each tile is the exported model's seeded sample of its digit
    model = load_trained_model(run_dir)
    for digit in (0, 7):
        video = generate_video(model, 16, seed=digit, num_steps=SAMPLE_STEPS, offset=SAMPLE_OFFSET,
                               class_label=digit, guidance_scale=GUIDANCE, progress=False)
        row, col = divmod(digit, 5)
        got = sample[:, row * (tile + 2) : row * (tile + 2) + tile, col * (tile + 2) : col * (tile + 2) + tile]
        assert abs(got.astype(int) - video_to_rgb_frames(video, scale=VIEW_SCALE).astype(int)).max() <= 2

    # the same command again reuses the finished run: no training, the same samples
    again = subprocess.run(command, cwd=user_dir, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 10
    assert (read_gif(out / "sample.gif", fps=FPS) == sample).all()
    shutil.rmtree(ray_tmp, ignore_errors=True)
