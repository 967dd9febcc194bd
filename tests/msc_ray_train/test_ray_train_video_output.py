"""Videos the service writes come back frame for frame (GIF writers merge repeated frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msc_ray_train.sampling import read_prefix_video
from msc_ray_train.video_output import read_gif, write_gif


def pausing_clip() -> np.ndarray:
    """8 frames `(T, 32, 32, 3)`: a bar that repeats frame 0, moves, and pauses for 3 frames."""
    frames = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    for i in range(5):
        frames[i, 4 * i : 4 * i + 4] = 255
    frames[1] = frames[0]
    frames[5:] = frames[4]
    return frames


@pytest.mark.parametrize("fps", [8.0, 10.0, 24.0])
def test_gif_round_trip_keeps_repeated_frames(tmp_path: Path, fps: float) -> None:
    frames = pausing_clip()
    path = write_gif(tmp_path / "clip.gif", frames, fps=fps)
    assert np.array_equal(read_gif(path), frames)


def test_prefix_gif_with_a_pause_gives_every_frame(tmp_path: Path, make_job_dict) -> None:
    from msc_ray_train.job import job_from_dict
    from msc_ray_train.model_kinds import build_model

    model = build_model(job_from_dict(make_job_dict()).model)  # 1 x 16 x 16 frames
    frames = pausing_clip()
    prefix = read_prefix_video(write_gif(tmp_path / "clip.gif", frames, fps=8.0), model, max_frames=8)
    assert prefix.shape == (1, 1, 8, 16, 16)
    # the bar's row of each frame (16x16: 2 rows per 4-row bar) is where it was written
    lit_rows = [int(np.flatnonzero(prefix[0, 0, t].mean(dim=1).numpy() > 0)[0]) for t in range(8)]
    assert lit_rows == [0, 0, 4, 6, 8, 8, 8, 8]
