"""`manifest.json` of a shard set: how it was built and what it holds (DESIGN.md, "Data").

A clip shard set (`msc data build`) and a latent shard set (`msc data encode`) each keep
a manifest next to their shards: the build settings, every shard with its sample count,
size and SHA-256, the sources and the files skipped with a reason. It is rewritten
atomically after every finished shard with `complete=False`, which is what lets a build
resume: shards listed with a matching checksum are kept and the work continues after the
last one. Readers use the per-shard sample counts to report exactly how many samples a
truncated shard lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from msc_core.checkpoint import atomic_write_text
from msc_core.config import Config, ConfigError
from msc_core.interfaces import LatentSpec
from msc_core.latents import LatentNormalization
from msc_data.clip_format import ClipFormat
from msc_data.motion import MotionMethod
from msc_data.moving_mnist import MovingMNISTConfig

MANIFEST_NAME = "manifest.json"
CLIP_SHARD_PATTERN = "clips-%06d.tar"
LATENT_SHARD_PATTERN = "latents-%06d.tar"


class ClipBuildConfig(Config):
    """Settings of `msc data build` (`build_shards`)."""

    frames: int = Field(default=17, ge=2, description="frames per clip")
    stride: int = Field(default=8, ge=1, description="frames between the starts of consecutive clips")
    size: int = Field(default=64, ge=8, description="clips are size x size after resize + center crop")
    fps: float | None = Field(default=8.0, gt=0.0, description="target frame rate; None keeps the native rate")
    clip_format: ClipFormat = "npy.gz"
    mp4_crf: int = Field(default=18, ge=0, le=51, description="H.264 quality when clip_format='mp4'")
    motion_method: MotionMethod = "farneback"
    shard_max_bytes: int = Field(default=256_000_000, ge=1)
    shard_max_clips: int = Field(default=100_000, ge=1)
    max_clips_per_video: int | None = Field(default=None, ge=1)
    # Named source "moving-mnist" only: how many clips, which stream, and the digits' motion.
    num_clips: int = Field(default=1000, ge=1)
    seed: int = Field(default=0, ge=0)
    moving_mnist: MovingMNISTConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> "ClipBuildConfig":
        if self.clip_format == "mp4" and self.size % 2:
            raise ValueError(f"clip_format='mp4' needs an even size (H.264 yuv420p), got size={self.size}")
        mm = self.moving_mnist
        if mm is not None and (mm.frames, mm.size) != (self.frames, self.size):
            raise ValueError(
                f"moving_mnist frames/size ({mm.frames}, {mm.size}) must equal the build's "
                f"frames/size ({self.frames}, {self.size})"
            )
        return self

    def moving_mnist_config(self) -> MovingMNISTConfig:
        """The moving-MNIST clip settings this build uses for the named source."""
        if self.moving_mnist is not None:
            return self.moving_mnist
        return MovingMNISTConfig(frames=self.frames, size=self.size, fps=self.fps or MovingMNISTConfig().fps)


class ShardInfo(Config):
    name: str = Field(description="file name, relative to the manifest's directory")
    num_samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    end: tuple[int, int] | None = Field(
        default=None, description="build cursor after this shard: (source index, next clip index)"
    )
    skipped: dict[str, int] = Field(default={}, description="input samples skipped making this shard, by reason")

    @field_validator("name")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        # a manifest is data: its shards are files beside it, never a `pipe:` command (which a
        # job file may hold, as code) nor a path out of the manifest's directory
        if v.startswith("pipe:") or "/" in v or "\\" in v or v in ("", ".", ".."):
            raise ValueError(f"shard name {v!r} is not a file name beside the manifest (no paths, no pipe: commands)")
        return v


class SourceEntry(Config):
    index: int = Field(ge=0)
    path: str
    source_id: str
    num_clips: int = Field(ge=0)
    num_frames: int = Field(ge=0, description="frames after fps resampling")
    native_fps: float | None = None
    caption: str = ""


class SkippedFile(Config):
    path: str
    reason: str


class ClipManifest(Config):
    kind: Literal["clips"] = "clips"
    version: Literal[1] = 1
    source: str = Field(description="SRC as given to build: a folder or a named source")
    source_fingerprint: str
    build: ClipBuildConfig
    clip_format: str
    frames: int
    height: int
    width: int
    channels: int = 3
    num_clips: int = 0
    shards: list[ShardInfo] = []
    sources: list[SourceEntry] = []
    skipped: list[SkippedFile] = []
    complete: bool = False


class LatentManifest(Config):
    kind: Literal["latents"] = "latents"
    version: Literal[1] = 1
    clips: str = Field(description="the clip shard source that was encoded")
    tokenizer_kind: str
    tokenizer_class: str = Field(description="module:Class that encoded the clips")
    tokenizer_config: dict[str, Any]
    latent_spec: LatentSpec
    dtype: str
    latent_normalization: LatentNormalization | None = Field(
        default=None, description="per-channel shift/scale measured over every cached latent (set when complete)"
    )
    num_samples: int = 0
    shards: list[ShardInfo] = []
    skipped: dict[str, int] = Field(default={}, description="input samples skipped, by reason")
    complete: bool = False


Manifest = ClipManifest | LatentManifest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_info(
    path: Path, num_samples: int, end: tuple[int, int] | None = None, skipped: dict[str, int] | None = None
) -> ShardInfo:
    return ShardInfo(
        name=path.name, num_samples=num_samples, bytes=path.stat().st_size, sha256=sha256_file(path), end=end,
        skipped=skipped or {},
    )


def manifest_path(location: str | Path) -> Path:
    """`location` itself if it is a file, else `location/manifest.json`."""
    location = Path(location)
    return location if location.suffix == ".json" else location / MANIFEST_NAME


def read_json_with_kind(path: Path, missing: str) -> tuple[Any, str | None]:
    """A JSON file and its top-level `kind` string (None when absent); `missing` explains a missing file."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    return data, kind if isinstance(kind, str) else None


def load_manifest(location: str | Path) -> Manifest:
    """A clip or latent manifest from a `manifest.json` path or the directory holding it."""
    path = manifest_path(location)
    data, kind = read_json_with_kind(path, f"no shard manifest at {path} (expected a manifest.json written by msc-data)")
    if kind == "clips":
        return ClipManifest.from_dict(data)
    if kind == "latents":
        return LatentManifest.from_dict(data)
    raise ConfigError(f"{path}: unknown manifest kind {kind!r}; valid: 'clips', 'latents'")


def save_manifest(manifest: Manifest, directory: str | Path) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json())
    return path


def verified_shard_prefix(shards: list[ShardInfo], directory: Path) -> list[ShardInfo]:
    """The longest prefix of `shards` whose files exist with the recorded size and SHA-256."""
    kept: list[ShardInfo] = []
    for info in shards:
        path = directory / info.name
        if not path.is_file() or path.stat().st_size != info.bytes or sha256_file(path) != info.sha256:
            break
        kept.append(info)
    return kept


__all__ = [
    "ClipBuildConfig",
    "ClipManifest",
    "LatentManifest",
    "MANIFEST_NAME",
    "ShardInfo",
    "SkippedFile",
    "SourceEntry",
    "load_manifest",
    "save_manifest",
]
