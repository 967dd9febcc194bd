"""msc-data benchmarks (DESIGN.md, "Data"). Last line: one JSON object.

- `clips_per_s`: 16x64x64 RGB clips per second delivered by `VideoClipDataset`
  (resampled, shuffle buffer 64, batches of 16, decode + normalise to [-1, 1]) through a
  `DataLoader` with 2 workers, from shards of the bundled natural sample videos in the
  default `npy.gz` format, after one warm-up batch. Target >= 200 on the 2-core CPU.
- `build_clips_per_s`: clips per second written by `build_shards` (PyAV decode, 25->8 fps,
  resize + crop, Farneback motion score, encode) from the sample videos (stride 4), in
  process (`workers=1`: the 3 videos are too few to amortise a worker pool's start-up).
- `bytes_per_clip`: mean shard bytes per clip (tar overhead included), default format.
- `corrupt_skipped`: samples the reader reports skipped on a copy of those shards with
  one shard truncated and two members garbled; `corrupt_planted` is what was planted.
- `formats`: those measurements for each clip format (`npy`, `npy.gz`, `mp4`), plus
  `decode_cpu_ms_per_clip` (CPU time per clip of the whole reader pipeline in one process,
  one thread; less sensitive to a busy machine than wall-clock rates): the size/speed
  trade-off documented in the msc-data README.
- `moving_mnist`: the same for 512 moving-MNIST clips (highly compressible), built with
  a pool of 2 worker processes (start-up included).

    flock /tmp/msc-bench.lock .venv/bin/python bench/data.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from msc_data import ClipBuildConfig, VideoClipDataset, build_shards

FRAMES, SIZE = 16, 64


def build(source: str, out: Path, config: ClipBuildConfig, workers: int) -> dict[str, float]:
    start = time.perf_counter()
    manifest = build_shards(source, out, config, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    return {
        "num_clips": manifest.num_clips,
        "build_clips_per_s": manifest.num_clips / seconds,
        "bytes_per_clip": sum(s.bytes for s in manifest.shards) / manifest.num_clips,
    }


def read_rate(shards: Path, num_clips: int, workers: int, batch_size: int = 16) -> float:
    """Clips per second through a DataLoader, after one warm-up batch."""
    ds = VideoClipDataset(shards, frames=FRAMES, size=SIZE, resampled=True, shuffle_buffer=64, batch_size=batch_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4)
    seen, start = 0, 0.0
    for i, batch in enumerate(loader):
        if i == 0:
            start = time.perf_counter()  # workers are up and the pipeline is primed
            continue
        assert batch["video"].shape[1:] == (3, FRAMES, SIZE, SIZE)
        seen += batch["video"].shape[0]
        if seen >= num_clips:
            break
    return seen / (time.perf_counter() - start)


def decode_cpu_ms(shards: Path, num_batches: int = 40, batch_size: int = 16) -> float:
    """CPU milliseconds per clip of the reader pipeline in this process (one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = VideoClipDataset(shards, frames=FRAMES, size=SIZE, resampled=True, shuffle_buffer=64, batch_size=batch_size)
        batches = iter(ds)
        next(batches)
        start = time.process_time()
        for _ in range(num_batches):
            next(batches)
        return (time.process_time() - start) / (num_batches * batch_size) * 1000
    finally:
        torch.set_num_threads(threads)


def plant_corruption(src: Path, dst: Path) -> int:
    """Copy a shard set, truncate one shard and garble two members; return the samples damaged."""
    shutil.copytree(src, dst)
    shards = sorted(dst.glob("clips-*.tar"))
    with tarfile.open(shards[0]) as tar:
        members = tar.getmembers()
    cut = members[4].offset_data + members[4].size // 2  # inside the 3rd sample's second member
    num_samples = len({m.name.split(".", 1)[0] for m in members})
    with open(shards[0], "r+b") as f:
        f.truncate(cut)
    planted = num_samples - 2  # samples 0 and 1 survive
    with tarfile.open(shards[1]) as tar:
        members = tar.getmembers()
    with open(shards[1], "r+b") as f:
        for m in (members[1], members[3]):  # the frames of two samples
            f.seek(m.offset_data + m.size // 2)
            f.write(b"\xde\xad\xbe\xef" * 8)
    return planted + 2


def corrupt_skipped(shards: Path, workers: int) -> int:
    ds = VideoClipDataset(shards, frames=FRAMES, size=SIZE)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    for _ in loader:
        pass
    return ds.skipped.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--read-clips", type=int, default=1024, help="clips timed per read measurement")
    args = parser.parse_args()
    logging.getLogger("msc_data").setLevel(logging.ERROR)  # the planted damage is reported below, not logged
    root = Path(tempfile.mkdtemp(prefix="msc-bench-data-"))
    try:
        # Warm-up: first use of PyAV, OpenCV and the page cache would be billed to the first format.
        build_shards("sample-videos", root / "warm-up", ClipBuildConfig(frames=FRAMES, size=SIZE, max_clips_per_video=1),
                     progress=False)
        formats = {}
        for clip_format in ("npy", "npy.gz", "mp4"):
            out = root / clip_format
            config = ClipBuildConfig(frames=FRAMES, stride=4, size=SIZE, fps=8.0, clip_format=clip_format, shard_max_clips=8)
            result = build("sample-videos", out, config, workers=1)
            result["clips_per_s"] = read_rate(out, args.read_clips, args.workers)
            result["decode_cpu_ms_per_clip"] = decode_cpu_ms(out)
            formats[clip_format] = {k: round(v, 2) for k, v in result.items()}
        mnist = root / "moving-mnist"
        mnist_config = ClipBuildConfig(frames=FRAMES, size=SIZE, num_clips=512, shard_max_clips=64)
        moving_mnist = build("moving-mnist", mnist, mnist_config, args.workers)
        moving_mnist["clips_per_s"] = read_rate(mnist, args.read_clips, args.workers)
        planted = plant_corruption(root / "npy.gz", root / "damaged")
        skipped = corrupt_skipped(root / "damaged", args.workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    default = formats["npy.gz"]
    print(json.dumps({
        "clips_per_s": default["clips_per_s"],
        "build_clips_per_s": default["build_clips_per_s"],
        "bytes_per_clip": default["bytes_per_clip"],
        "corrupt_skipped": skipped,
        "corrupt_planted": planted,
        "clip": f"{FRAMES}x{SIZE}x{SIZE}x3",
        "workers": args.workers,
        "formats": formats,
        "moving_mnist": {k: round(v, 2) for k, v in moving_mnist.items()},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
