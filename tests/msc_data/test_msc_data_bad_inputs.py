"""Bad inputs give a clear message (skipped with a reason, or an error naming the path), never a PyAV traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msc_data import ClipBuildConfig, VideoClipDataset, build_shards, load_manifest
from msc_data.cli import main
from msc_data.moving_mnist import MovingMNISTConfig, render_moving_mnist
from msc_data.video_io import VideoDecodeError, iter_video_frames, write_video

CONFIG = ClipBuildConfig(frames=4, stride=4, size=32, fps=8.0)


def good_video(path: Path) -> Path:
    frames = render_moving_mnist(MovingMNISTConfig(frames=8, size=32), seed=0, index=0).frames
    return write_video(path, frames, fps=8.0)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_non_video_and_unreadable_files_are_skipped_with_reasons(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good_video(src / "good.mp4")
    (src / "notes.mp4").write_text("this is not a video\n")  # video extension, text inside
    (src / "gone.avi").symlink_to(tmp_path / "deleted.avi")  # unreadable: dangling link
    (src / "cover.jpg").write_bytes(b"\xff\xd8\xff")  # not a video extension
    (src / "empty.webm").write_bytes(b"")
    unreadable = src / "locked.mkv"
    good_video(unreadable)
    os.chmod(unreadable, 0)
    code, out, err = run_cli(["build", str(src), str(tmp_path / "out"), "--frames", "4", "--stride", "4",
                              "--size", "32", "--workers", "1", "--quiet"], capsys)
    assert code == 0 and "Traceback" not in out + err
    manifest = load_manifest(tmp_path / "out")
    reasons = {Path(s.path).name: s.reason for s in manifest.skipped}
    assert {s.path for s in manifest.skipped} >= {str(src / n) for n in ("notes.mp4", "gone.avi", "cover.jpg")}
    assert "cannot open as a video" in reasons["notes.mp4"]
    assert "No such file" in reasons["gone.avi"]
    assert "not a video file" in reasons["cover.jpg"]
    assert "cannot open as a video" in reasons["empty.webm"]
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        assert "Permission denied" in reasons["locked.mkv"]
    # The good videos still made their clips; every skipped file is printed with its reason.
    assert {s.source_id for s in manifest.sources} >= {"good.mp4"}
    assert [s["source"] for s in VideoClipDataset(tmp_path / "out")].count("good.mp4") == 2
    for name in ("notes.mp4", "gone.avi", "cover.jpg", "empty.webm"):
        assert f"skipped {src / name}: " in out


def test_empty_folder_is_an_error_naming_the_path(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(["build", str(empty), str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and f"no video files found in {empty}" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="no video files found"):
        build_shards(empty, tmp_path / "out2", CONFIG, progress=False)


def test_missing_source_and_all_bad_files_are_errors_naming_the_path(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["build", str(tmp_path / "nope"), str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and str(tmp_path / "nope") in err and "moving-mnist, sample-videos" in err
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"\x00" * 4096)  # fixed bytes: random ones are sometimes probed as audio
    with pytest.raises(ValueError, match=r"no clips could be made .*/bad/a\.mp4: cannot open as a video"):
        build_shards(src, tmp_path / "out", CONFIG, progress=False)


def test_too_short_video_and_bad_caption_sidecar_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good_video(src / "short.mp4")  # 8 frames at 8 fps: too short for 12-frame clips
    good_video(src / "captioned.mp4")
    (src / "captioned.json").write_text("{not json")
    with pytest.raises(ValueError, match="no clips could be made") as info:
        build_shards(src, tmp_path / "out", CONFIG.replace(frames=12), progress=False)
    assert "too short: 8 frames at 8 fps, a clip needs 12" in str(info.value)
    assert f"caption file {src / 'captioned.json'} is not valid JSON" in str(info.value)


def test_decoder_errors_name_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "clip.mov"
    bogus.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoDecodeError, match=f"{bogus}: cannot open as a video"):
        list(iter_video_frames(bogus, fps=8, size=32))


def test_reader_settings_that_do_not_fit_the_shards_are_errors(tmp_path: Path) -> None:
    build_shards("moving-mnist", tmp_path, CONFIG.replace(num_clips=4), progress=False)
    with pytest.raises(ValueError, match="hold 4-frame clips"):
        VideoClipDataset(tmp_path, frames=8)
    with pytest.raises(FileNotFoundError, match="shard .*missing.tar does not exist"):
        VideoClipDataset([str(tmp_path / "missing.tar")])
    with pytest.raises(ValueError, match="give both rank and world_size"):
        VideoClipDataset(tmp_path, rank=1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        VideoClipDataset(tmp_path, rank=2, world_size=2)


@pytest.mark.parametrize("name", ["pipe:curl http://example.invalid/x.tar", "../outside.tar", "/etc/passwd", ".."])
def test_a_manifest_naming_a_command_or_a_path_outside_its_folder_is_refused(tmp_path: Path, name: str) -> None:
    """A job file is code (`data.path: pipe:...` runs a shell command); a manifest is data:
    its shard entries are file names beside it and nothing else."""
    import json

    out = tmp_path / "mm"
    build_shards("moving-mnist", out, ClipBuildConfig(frames=4, size=32, num_clips=2, fps=None), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["name"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not a file name beside the manifest"):
        load_manifest(out)
