"""`VideoClipDataset`: clip shards -> training clips `[3, T, H, W]` in `[-1, 1]`.

The reader of DESIGN.md "Data": shards from a manifest or URLs, split by node and
DataLoader worker, shuffled, decoded, temporally and spatially cropped, resized and
normalised, optionally batched, with the caption, fps, motion score (NOVA Sec. 3.2)
and source id of every clip. Corrupt samples are skipped and counted in
`dataset.skipped` (see `shard_stream`).

    ds = VideoClipDataset("shards/", frames=16, size=64, resampled=True,
                          shuffle_buffer=256, batch_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    for batch in loader:   # batch["video"]: (8, 3, 16, 64, 64)
        ...
    print(ds.skipped.as_dict())
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F

from msc_data.clip_format import read_clip_sample
from msc_data.manifest import ClipManifest
from msc_data.shard_stream import ShardSource, ShardStreamDataset, source_manifest
from msc_data.video_tensor import frames_to_video


class VideoClipDataset(ShardStreamDataset):
    """Clips `{"video": float (C, T, H, W) in [-1, 1], "caption", "fps", "motion", "source",
    "key", "start_frame"}` from clip shards (batched: `video` is `(B, C, T, H, W)`).

    Args:
        frames: clip length T; a random window of the stored clip when shorter
            (`random_start`), the whole stored clip when None.
        size: output side; None keeps the stored size.
        crop_scale: `(lo, hi)` fraction of the short side of a random square crop before
            resizing; `(1, 1)` is the full center square.
        hflip: flip each clip horizontally with probability 1/2.
        channels: 3 (RGB) or 1 (luma).
        **stream: `ShardStreamDataset` options (resampled, shuffle_buffer, batch_size,
            samples_per_epoch, seed, rank, world_size, ...).
    """

    def __init__(
        self,
        source: ShardSource,
        *,
        frames: int | None = None,
        size: int | None = None,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        random_start: bool = True,
        hflip: bool = False,
        channels: int = 3,
        **stream: Any,
    ) -> None:
        super().__init__(source, **stream)
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        manifest = source_manifest(source)
        if manifest is not None and not isinstance(manifest, ClipManifest):
            raise ValueError(f"{source} is a {manifest.kind} shard set; read it with LatentClipDataset")
        if manifest is not None and frames is not None and frames > manifest.frames:
            raise ValueError(
                f"frames={frames} but the shards in {source} hold {manifest.frames}-frame clips; "
                f"ask for at most {manifest.frames} frames or rebuild with --frames {frames}"
            )
        self.manifest = manifest
        self.frames, self.size, self.crop_scale = frames, size, (float(lo), float(hi))
        self.random_start, self.hflip, self.channels = random_start, hflip, channels

    def decode_sample(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        clip, meta = read_clip_sample(sample)  # (T, H, W, 3) uint8
        length, height, width = clip.shape[:3]
        frames = self.frames or length
        if frames > length:
            raise ValueError(
                f"sample {sample['__key__']} in {sample['__url__']} has {length} frames, frames={frames} requested"
            )
        t0 = int(rng.integers(0, length - frames + 1)) if self.random_start else 0
        short = min(height, width)
        lo, hi = self.crop_scale
        side = max(1, round(short * (lo if lo == hi else rng.uniform(lo, hi))))
        if lo == hi == 1.0:
            y0, x0 = (height - side) // 2, (width - side) // 2
        else:
            y0, x0 = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = clip[t0 : t0 + frames, y0 : y0 + side, x0 : x0 + side]  # (T, s, s, 3)
        if self.hflip and rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        video = frames_to_video(np.ascontiguousarray(crop), self.channels)  # (C, T, s, s)
        size = self.size or short
        if side != size:
            video = F.interpolate(
                video.transpose(0, 1), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            ).transpose(0, 1).contiguous()  # (C, T, size, size)
        return {
            "video": video.clamp_(-1.0, 1.0),
            "caption": meta.caption,
            "fps": meta.fps,
            "motion": meta.motion,
            "source": meta.source,
            "key": sample["__key__"],
            "start_frame": meta.start_frame + t0,
        }
