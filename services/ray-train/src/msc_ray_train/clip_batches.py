"""Per-worker clip batches for training, split by rank, with a resumable position.

- moving MNIST: clip `index` is a pure function of `(seed, index)`
  (`msc_data.MovingMNIST.clip`), and rank r of W reads the indices `r, r + W, ...`
  (msc_data's stream order). Batch `step` of rank r holds stream items
  `step * B .. step * B + B - 1`, so the data position is the step itself and a resumed
  run reads exactly the clips an uninterrupted run would have read.
- shards: `msc_data.VideoClipDataset`, resampled with replacement and split by rank and
  DataLoader worker; a resumed run re-seeds its streams with the step it resumes from
  (`set_epoch(step)`), so it does not replay the clips it already trained on in the
  same order. Corrupt samples are skipped and counted (`corrupt_skipped`).

Batches are `{"video": (B, C, T, H, W)}` in [-1, 1], plus `{"label": (B,)}` (the digit)
for class-conditional models on one-digit moving MNIST, and, `with_captions` (text-
conditional models such as NOVA), `{"caption": list[str], "motion": (B,), "fps": (B,)}`:
each clip's caption, optical-flow motion score (msc_data.motion, NOVA §3.2) and frame
rate. Moving MNIST captions name the digits (`msc_data.moving_mnist_caption`); shard
captions are the ones the shards hold, and `needs_captions` refuses a clip without one.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F

from msc_data import LatentClipDataset, MovingMNIST, VideoClipDataset

from msc_ray_train.job import LatentCacheSource, MovingMNISTSource, ShardSource


class ClipBatches(Protocol):
    def batch(self, step: int) -> dict[str, Any]: ...

    @property
    def corrupt_skipped(self) -> int: ...

    def position(self, next_step: int) -> dict[str, Any]: ...

    @property
    def sample_caption(self) -> str | None: ...


def downsample_video(video: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample `(..., C, T, H, W)` frames to `size x size` (integer factors)."""
    *lead, c, t, h, w = video.shape
    if (h, w) == (size, size):
        return video
    frames = video.reshape(-1, c, t, h, w).transpose(1, 2).reshape(-1, c, h, w)  # (N*T, C, H, W)
    frames = F.interpolate(frames, size=(size, size), mode="area")
    return frames.reshape(-1, t, c, size, size).transpose(1, 2).reshape(*lead, c, t, size, size)


class MovingMNISTBatches:
    """Batch `step` of rank `rank`: clips `(step * B + i) * W + rank`, i < B."""

    def __init__(
        self, source: MovingMNISTSource, seed: int, rank: int, world_size: int, batch_size: int,
        with_labels: bool = False, with_captions: bool = False,
    ) -> None:
        if with_labels and source.num_digits != 1:
            raise ValueError(f"class labels need one digit per clip, got num_digits={source.num_digits}")
        self.source, self.batch_size, self.with_labels = source, batch_size, with_labels
        self.with_captions = with_captions
        self.dataset = MovingMNIST(
            source.clip_config(), seed=seed, channels=source.channels, with_motion=with_captions,
            rank=rank, world_size=world_size,
        )

    def clip_indices(self, step: int) -> list[int]:
        ds = self.dataset
        return [(step * self.batch_size + i) * ds.world_size + ds.rank for i in range(self.batch_size)]

    def batch(self, step: int) -> dict[str, Any]:
        clips = [self.dataset.clip(i) for i in self.clip_indices(step)]
        video = torch.stack([clip["video"] for clip in clips])  # (B, C, T, S, S)
        batch = {"video": downsample_video(video, self.source.frame_size)}
        if self.with_labels:
            batch["label"] = torch.stack([clip["labels"][0] for clip in clips])  # (B,)
        if self.with_captions:
            batch.update(_clip_conditions(clips))
        return batch

    @property
    def corrupt_skipped(self) -> int:
        return 0  # rendered, never read from disk

    @property
    def sample_caption(self) -> str | None:
        """The caption of clip 0 (the first clip of the run), the prompt of training samples."""
        return self.dataset.clip(0)["caption"] if self.with_captions else None

    def position(self, next_step: int) -> dict[str, Any]:
        return {"source": "moving-mnist", "next_clip": self.clip_indices(next_step)[0]}


def _clip_conditions(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Caption, motion score and fps of each clip, as NOVA's batch keys."""
    return {
        "caption": [clip["caption"] for clip in clips],
        "motion": torch.tensor([clip["motion"] for clip in clips], dtype=torch.float32),  # (B,)
        "fps": torch.tensor([clip["fps"] for clip in clips], dtype=torch.float32),  # (B,)
    }


class ShardBatches:
    """Resampled shard stream of one rank; `step` only numbers the batches. Clip shards
    give `"video"`, a latent cache (msc data encode) `"latents"` as stored."""

    def __init__(
        self, source: ShardSource | LatentCacheSource, seed: int, rank: int, world_size: int, batch_size: int,
        start_step: int, with_captions: bool = False, needs_captions: bool = False,
    ) -> None:
        self.start_step, self.read = start_step, 0
        self.source, self.with_captions, self.needs_captions = source, with_captions, needs_captions
        self.first_caption: str | None = None
        stream = dict(resampled=True, shuffle_buffer=source.shuffle_buffer, batch_size=batch_size, drop_last=True,
                      seed=seed, rank=rank, world_size=world_size)
        if isinstance(source, LatentCacheSource):
            self.key = "latents"
            self.dataset = LatentClipDataset(source.path, **stream)
        else:
            self.key = "video"
            self.dataset = VideoClipDataset(
                source.path, frames=source.frames, size=source.size, crop_scale=source.crop_scale,
                hflip=source.hflip, channels=source.channels, **stream,
            )
        self.dataset.set_epoch(start_step)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=source.loader_workers,
            persistent_workers=source.loader_workers > 0,
        )
        self._batches: Iterator[dict[str, Any]] = iter(loader)

    def batch(self, step: int) -> dict[str, Any]:
        self.read += 1
        clips = next(self._batches)
        if not self.with_captions:
            return {self.key: clips[self.key]}
        if self.needs_captions:
            uncaptioned = [key for key, caption in zip(clips["key"], clips["caption"]) if not caption.strip()]
            if uncaptioned:
                raise ValueError(
                    f"data.source={self.source.source!r} (data.path={self.source.path!r}) holds clips without a caption "
                    f"(e.g. {uncaptioned[0]!r}), but the model is text-conditional; build the shards with a "
                    "caption sidecar per video (<video>.txt or .json, msc data build), or train without text "
                    "(model.text_drop_prob: 1.0)"
                )
        if self.first_caption is None:
            self.first_caption = clips["caption"][0]
        return {self.key: clips[self.key], "caption": list(clips["caption"]), "motion": clips["motion"],
                "fps": clips["fps"]}

    @property
    def corrupt_skipped(self) -> int:
        return self.dataset.skipped.total

    @property
    def sample_caption(self) -> str | None:
        """The caption of the first clip this process read, the prompt of training samples."""
        return self.first_caption

    def position(self, next_step: int) -> dict[str, Any]:
        return {"source": "shards", "stream_epoch": self.start_step, "batches_read": self.read}


def make_clip_batches(
    source: MovingMNISTSource | ShardSource | LatentCacheSource,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    start_step: int,
    with_labels: bool = False,
    with_captions: bool = False,
    needs_captions: bool = False,
) -> ClipBatches:
    if isinstance(source, MovingMNISTSource):
        return MovingMNISTBatches(source, seed, rank, world_size, batch_size, with_labels, with_captions)
    if with_labels:
        raise ValueError("shard clips carry no class labels; train an unconditional model on shards")
    return ShardBatches(source, seed, rank, world_size, batch_size, start_step, with_captions, needs_captions)
