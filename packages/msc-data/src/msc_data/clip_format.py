"""How one clip is stored in a webdataset shard (DESIGN.md, "Data").

A sample is two tar members sharing a key:

- `<key>.<format>`: the frames, uint8 `(T, H, W, 3)`, in one of `CLIP_FORMATS`:
  `npy` (raw array), `npy.gz` (gzip level 1 of the raw array; lossless, the default) or
  `mp4` (H.264 yuv420p, lossy, smallest, about 10x slower to decode). The trade-off is
  measured by `bench/data.py` and documented in the package README.
- `<key>.json`: `ClipMeta`: source id, caption, fps, motion score, first frame index,
  shape, format and the CRC32 of the frames member, so garbled bytes are detected even
  where the format itself would still decode.

`read_clip_sample` raises `CorruptSampleError` for anything inconsistent; the reader
counts and logs those samples instead of crashing.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np

from msc_data.video_io import VideoDecodeError, decode_video_bytes, encode_video

ClipFormat = Literal["npy", "npy.gz", "mp4"]
CLIP_FORMATS: tuple[str, ...] = ("npy", "npy.gz", "mp4")
META_MEMBER = "json"


class CorruptSampleError(ValueError):
    """A shard sample is incomplete or its bytes do not decode to what its metadata says."""


def parse_json_record(data: bytes, fields: Mapping[str, Callable[[Any], Any]], what: str) -> dict[str, Any]:
    """`{name: convert(value)}` of a JSON object's fields; CorruptSampleError when anything is off."""
    try:
        raw = json.loads(data.decode("utf-8"))
        return {name: convert(raw[name]) for name, convert in fields.items()}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptSampleError(f"{what} is not valid ({type(err).__name__}: {err})") from None


def int_tuple(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class ClipMeta:
    """Per-clip metadata stored next to the frames (`<key>.json`)."""

    source: str
    caption: str
    fps: float
    motion: float
    start_frame: int
    shape: tuple[int, int, int, int]  # (T, H, W, 3)
    format: str
    crc32: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "ClipMeta":
        fields = dict(source=str, caption=str, fps=float, motion=float, start_frame=int, shape=int_tuple,
                      format=str, crc32=int)
        meta = cls(**parse_json_record(data, fields, "clip metadata"))
        if len(meta.shape) != 4 or meta.format not in CLIP_FORMATS:
            raise CorruptSampleError(f"clip metadata has shape {meta.shape} / format {meta.format!r}")
        return meta


def npy_bytes(array: np.ndarray) -> bytes:
    """The `.npy` file bytes of an array (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_clip(frames: np.ndarray, clip_format: ClipFormat, fps: float, crf: int = 18) -> bytes:
    """Bytes of uint8 frames `(T, H, W, 3)` in `clip_format`."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clips are uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if clip_format == "npy":
        return npy_bytes(frames)
    if clip_format == "npy.gz":
        # Level 1: ~2.5x smaller than raw on natural video, decodes at ~0.6 ms per 16x64x64 clip.
        return gzip.compress(npy_bytes(frames), compresslevel=1, mtime=0)
    if clip_format == "mp4":
        return encode_video(frames, fps, crf=crf)
    raise ValueError(f"unknown clip format {clip_format!r}; valid: {', '.join(CLIP_FORMATS)}")


def decode_clip(data: bytes, clip_format: str) -> np.ndarray:
    """uint8 frames `(T, H, W, 3)` from bytes in `clip_format`; CorruptSampleError if unreadable."""
    try:
        if clip_format == "mp4":
            return decode_video_bytes(data)
        if clip_format == "npy.gz":
            data = gzip.decompress(data)
        elif clip_format != "npy":
            raise CorruptSampleError(f"unknown clip format {clip_format!r}; valid: {', '.join(CLIP_FORMATS)}")
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (VideoDecodeError, OSError, EOFError, zlib.error, ValueError) as err:
        if isinstance(err, CorruptSampleError):
            raise
        raise CorruptSampleError(f"{clip_format} clip does not decode ({type(err).__name__}: {err})") from None


def make_clip_sample(
    key: str,
    frames: np.ndarray,
    *,
    source: str,
    caption: str,
    fps: float,
    motion: float,
    start_frame: int,
    clip_format: ClipFormat,
    crf: int = 18,
) -> dict[str, bytes | str]:
    """A webdataset sample dict (`__key__` + encoded members) for one clip."""
    if "." in key or "/" in key:
        raise ValueError(f"sample keys may not contain '.' or '/', got {key!r}")
    payload = encode_clip(frames, clip_format, fps, crf)
    meta = ClipMeta(
        source=source,
        caption=caption,
        fps=float(fps),
        motion=float(motion),
        start_frame=int(start_frame),
        shape=tuple(int(s) for s in frames.shape),  # type: ignore[arg-type]
        format=clip_format,
        crc32=zlib.crc32(payload),
    )
    return {"__key__": key, clip_format: payload, META_MEMBER: meta.to_json()}


def read_clip_sample(sample: Mapping[str, object]) -> tuple[np.ndarray, ClipMeta]:
    """Frames `(T, H, W, 3)` and metadata of a sample read from a shard, fully checked."""
    meta_bytes = sample.get(META_MEMBER)
    if not isinstance(meta_bytes, bytes):
        raise CorruptSampleError(f"sample has no {META_MEMBER!r} member (members: {_members(sample)})")
    meta = ClipMeta.from_json(meta_bytes)
    payload = sample.get(meta.format)
    if not isinstance(payload, bytes):
        raise CorruptSampleError(f"sample has no {meta.format!r} member (members: {_members(sample)})")
    if zlib.crc32(payload) != meta.crc32:
        raise CorruptSampleError(f"{meta.format} member fails its CRC32 check ({len(payload)} bytes)")
    frames = decode_clip(payload, meta.format)
    if frames.dtype != np.uint8 or tuple(frames.shape) != meta.shape:
        raise CorruptSampleError(f"decoded clip is {frames.dtype} {tuple(frames.shape)}, metadata says uint8 {meta.shape}")
    return frames, meta


def _members(sample: Mapping[str, object]) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))
