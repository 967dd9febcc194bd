"""`msc-cascade upscale` on real MP4 files written with PyAV: sizes, frame rates, clear errors."""

import numpy as np
import pytest

from msc_cascade import video_file
from msc_cascade.cli import main
from msc_cascade.video_file import read_video, write_video
from msc_core.checkpoint import save_pretrained


def moving_square(frames, size):
    """A bright square moving over a gradient: a real, decodable clip."""
    h, w = size
    out = np.zeros((frames, h, w, 3), np.uint8)
    out[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    for i in range(frames):
        out[i, 2 + i % (h - 6):6 + i % (h - 6), 2:8] = 255
    return out


@pytest.fixture(scope="module")
def checkpoints(make_cascade, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade_ckpt")
    save_pretrained(make_cascade("sr"), root / "sr")
    save_pretrained(make_cascade("fps"), root / "fps")
    return root


def test_sr_upscale_writes_a_4x_larger_readable_mp4(checkpoints, tmp_path, capsys):
    src = write_video(tmp_path / "in.mp4", moving_square(6, (18, 16)), fps=12)  # 6 frames, 16x18 -> 5 frames, 16x16
    out = tmp_path / "out.mp4"
    assert main(["upscale", str(src), str(out), "--checkpoint", str(checkpoints / "sr"), "--steps", "2"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (5, 64, 64, 3) and fps == pytest.approx(12)
    captured = capsys.readouterr()
    assert "dropped the last 1 frame(s)" in captured.err and "center-cropped 18x16 to 16x16" in captured.err


def test_fps_upscale_writes_4x_the_frames_at_4x_the_rate(checkpoints, tmp_path):
    src = write_video(tmp_path / "in.mp4", moving_square(5, (16, 16)), fps=6)
    out = tmp_path / "out.mp4"
    args = ["upscale", str(src), str(out), "--checkpoint", str(checkpoints / "fps"), "--mode", "fps", "--steps", "2"]
    assert main(args) == 0
    frames, fps = read_video(out)
    assert frames.shape == (17, 16, 16, 3) and fps == pytest.approx(24)  # 1 + 4 * (5 - 1) frames


def test_unreadable_input_and_wrong_mode_exit_2_with_one_line(checkpoints, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    assert main(["upscale", str(bad), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr")]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4: cannot be decoded as a video" in err and "Traceback" not in err
    assert main(["upscale", str(tmp_path / "nope.mp4"), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr")]) == 2
    assert "nope.mp4: no such file" in capsys.readouterr().err
    src = write_video(tmp_path / "in.mp4", moving_square(5, (16, 16)), fps=6)
    assert main(["upscale", str(src), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr"), "--mode", "fps"]) == 2
    assert "is a 'sr' cascade; --mode fps" in capsys.readouterr().err
    assert main(["upscale", str(src), str(tmp_path / "o.mp4"), "--checkpoint", str(tmp_path)]) == 2
    assert "holds no model" in capsys.readouterr().err


def test_temperature_zero_decodes_the_same_video_for_any_seed(checkpoints, tmp_path, capsys, monkeypatch):
    # the frames handed to the MP4 writer (libx264 itself is not bit-reproducible across runs here)
    written = []
    monkeypatch.setattr(video_file, "write_video", lambda path, frames, fps: written.append(frames.copy()))
    src = write_video(tmp_path / "in.mp4", moving_square(5, (16, 16)), fps=6)
    for seed in ("0", "1"):
        args = ["upscale", str(src), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr"), "--steps", "2",
                "--temperature", "0", "--seed", seed]
        assert main(args) == 0
    assert len(written) == 2 and np.array_equal(written[0], written[1])
    assert main(["upscale", str(src), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr"), "--seed", "1"]) == 0
    assert not np.array_equal(written[2], written[0])  # temperature 1 (the default) depends on the seed
    assert main(["upscale", str(src), str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoints / "sr"),
                 "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_msc_cascade_upscale_through_the_console_script_with_relative_paths(checkpoints, tmp_path):
    """`msc cascade upscale in.mp4 out.mp4 --model DIR` as a user types it, from a working
    directory of its own, every path relative to it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_video(tmp_path / "in.mp4", moving_square(5, (16, 16)), fps=6)
    model = os.path.relpath(checkpoints / "sr", tmp_path)
    msc = Path(sys.executable).parent / "msc"
    result = subprocess.run([str(msc), "cascade", "upscale", "in.mp4", "out.mp4", "--model", model, "--steps", "2",
                             "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    frames, fps = read_video(tmp_path / "out.mp4")
    assert frames.shape == (5, 64, 64, 3) and fps == 6
    assert result.stderr == ""  # --no-progress: no bar
