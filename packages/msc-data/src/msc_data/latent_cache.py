"""Latent cache: clip shards -> latent shards with any `Tokenizer` (DESIGN.md, "Data").

`encode_shards` runs a tokenizer's `encode` once over every clip of a shard set and
writes one latent shard per clip shard (`latents-%06d.tar`, same sample keys) plus a
`manifest.json` naming the tokenizer, its config and `LatentSpec`. Generators then train
on `LatentClipDataset` without re-encoding. Each output shard is written to a temporary
file and renamed when complete, and the manifest is rewritten after it, so an
interrupted run resumes at the first shard without a verified output.

When every shard is written, the per-channel shift and scale of the cached latents are
measured over all of them (`msc_core.latents`) and stored in the manifest
(`latent_normalization`): the latents stay as the tokenizer made them, and training
normalises them with those statistics.

A latent sample: `<key>.latents.npy` (float16/float32, one clip's latents without the
batch axis) and `<key>.json` (`LatentMeta`: caption, fps, motion, source, start frame,
shape, dtype, CRC32 of the array member).
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm
from webdataset import TarWriter

from msc_core.interfaces import Tokenizer
from msc_core.latents import LatentNormalization, LatentStatistics
from msc_core.runtime import resolve_device
from msc_data.clip_format import (
    ClipMeta,
    CorruptSampleError,
    int_tuple,
    npy_bytes,
    parse_json_record,
    read_clip_sample,
)
from msc_data.manifest import (
    LATENT_SHARD_PATTERN,
    MANIFEST_NAME,
    LatentManifest,
    ShardInfo,
    load_manifest,
    save_manifest,
    shard_info,
    sha256_file,
)
from msc_data.shard_stream import (
    ShardRef,
    ShardSource,
    ShardStreamDataset,
    SkipCounter,
    iter_shard_samples,
    logger,
    resolve_shards,
    source_manifest,
)
from msc_data.tokenizer_registry import class_path, load_tokenizer, read_tokenizer_kind
from msc_data.video_tensor import frames_to_video

LATENT_MEMBER = "latents.npy"
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class LatentMeta:
    source: str
    caption: str
    fps: float
    motion: float
    start_frame: int
    shape: tuple[int, ...]
    dtype: str
    crc32: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "LatentMeta":
        fields = dict(source=str, caption=str, fps=float, motion=float, start_frame=int, shape=int_tuple,
                      dtype=str, crc32=int)
        return cls(**parse_json_record(data, fields, "latent metadata"))


def _latent_sample(key: str, latents: np.ndarray, meta: ClipMeta) -> dict[str, Any]:
    payload = npy_bytes(latents)
    latent_meta = LatentMeta(
        source=meta.source, caption=meta.caption, fps=meta.fps, motion=meta.motion, start_frame=meta.start_frame,
        shape=tuple(int(s) for s in latents.shape), dtype=str(latents.dtype), crc32=zlib.crc32(payload),
    )
    return {"__key__": key, LATENT_MEMBER: payload, "json": latent_meta.to_json()}


def read_latent_sample(sample: dict[str, Any]) -> tuple[np.ndarray, LatentMeta]:
    """Latents and metadata of a latent-shard sample, fully checked (CorruptSampleError)."""
    meta_bytes, payload = sample.get("json"), sample.get(LATENT_MEMBER)
    if not isinstance(meta_bytes, bytes) or not isinstance(payload, bytes):
        members = sorted(k for k in sample if not k.startswith("__"))
        raise CorruptSampleError(f"latent sample needs 'json' and {LATENT_MEMBER!r} members, has {members}")
    meta = LatentMeta.from_json(meta_bytes)
    if zlib.crc32(payload) != meta.crc32:
        raise CorruptSampleError(f"{LATENT_MEMBER} fails its CRC32 check")
    try:
        latents = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptSampleError(f"{LATENT_MEMBER} does not load ({err})") from None
    if tuple(latents.shape) != meta.shape or str(latents.dtype) != meta.dtype:
        raise CorruptSampleError(f"latents are {latents.dtype} {latents.shape}, metadata says {meta.dtype} {meta.shape}")
    return latents, meta


def _clip_batches(shard: ShardRef, counter: SkipCounter, batch_size: int) -> Iterator[list[tuple[str, np.ndarray, ClipMeta]]]:
    batch: list[tuple[str, np.ndarray, ClipMeta]] = []
    for sample in iter_shard_samples(shard, counter):
        try:
            frames, meta = read_clip_sample(sample)
        except CorruptSampleError as err:
            counter.add("corrupt")
            logger.warning("skipping corrupt sample %s in %s: %s", sample["__key__"], shard.url, err)
            continue
        if batch and frames.shape != batch[0][1].shape:  # clips of one batch must stack
            yield batch
            batch = []
        batch.append((sample["__key__"], frames, meta))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_shard(
    shard: ShardRef, target: Path, tokenizer: Tokenizer, device: torch.device, dtype: np.dtype,
    batch_size: int, counter: SkipCounter,
) -> int:
    """Encode one clip shard into the latent shard `target`; returns the samples written."""
    spec = tokenizer.latent_spec
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    written = 0
    try:
        with open(tmp, "wb") as f:
            writer = TarWriter(f, encoder=False, mtime=0)
            for batch in _clip_batches(shard, counter, batch_size):
                num_frames = batch[0][1].shape[0]
                spec.latent_frames(num_frames)  # ValueError naming valid lengths if the tokenizer cannot take it
                video = torch.stack([frames_to_video(frames) for _, frames, _ in batch]).to(device)  # (B, 3, T, H, W)
                with torch.inference_mode():
                    latents = tokenizer.encode(video)
                latents = latents.float().cpu().numpy().astype(dtype)
                for (key, _, meta), latent in zip(batch, latents):
                    writer.write(_latent_sample(key, np.ascontiguousarray(latent), meta))
                    written += 1
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def encode_shards(
    clips: ShardSource,
    out: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    tokenizer: torch.nn.Module | None = None,
    tokenizer_class: type | str | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> LatentManifest:
    """Encode every clip of `clips` with a tokenizer into latent shards in `out`.

    The tokenizer is loaded from `tokenizer_dir` (config.json `kind` -> class via the
    registry / `msc.tokenizers` entry points, or `tokenizer_class`), or given directly as
    `tokenizer` (a module with a `config`). Resumes an interrupted run into the same `out`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dtype not in LATENT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(LATENT_DTYPES)}, got {dtype!r}")
    if (tokenizer is None) == (tokenizer_dir is None):
        raise ValueError("give exactly one of tokenizer_dir and tokenizer")
    resolved_device = resolve_device(device)
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_dir, tokenizer_class, device=resolved_device)  # type: ignore[arg-type]
        kind = read_tokenizer_kind(tokenizer_dir) or class_path(type(tokenizer))  # type: ignore[arg-type]
    else:
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(f"{type(tokenizer).__name__} is not a Tokenizer (needs encode, decode, latent_spec)")
        tokenizer = tokenizer.to(resolved_device).eval()
        kind = getattr(getattr(tokenizer, "config", None), "kind", None) or class_path(type(tokenizer))
    config = getattr(tokenizer, "config", None)
    refs = resolve_shards(clips)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = LatentManifest(
        clips=str(Path(clips).resolve()) if isinstance(clips, (str, Path)) else json.dumps([r.url for r in refs]),
        tokenizer_kind=str(kind),
        tokenizer_class=class_path(type(tokenizer)),
        tokenizer_config=config.model_dump(mode="json") if config is not None else {},
        latent_spec=tokenizer.latent_spec,  # type: ignore[union-attr]
        dtype=dtype,
    )
    done = _finished_latent_shards(out, fresh)
    shards: list[ShardInfo] = []
    bar = tqdm(total=len(refs), unit="shard", desc=f"encode {out.name}", disable=not progress)
    for i, ref in enumerate(refs):
        target = out / (LATENT_SHARD_PATTERN % i)
        if target.name in done:
            shards.append(done[target.name])
        else:
            counter = SkipCounter()
            written = _encode_shard(ref, target, tokenizer, resolved_device, np.dtype(LATENT_DTYPES[dtype]),
                                    batch_size, counter)
            skipped = {k: v for k, v in counter.as_dict().items() if k != "total" and v}
            shards.append(shard_info(target, written, skipped=skipped))
            _save_latent_manifest(out, fresh, shards, complete=False)
        bar.update(1)
    bar.close()
    normalization = measure_cached_latents(out, shards, tokenizer.latent_spec.layout)  # type: ignore[union-attr]
    return _save_latent_manifest(out, fresh, shards, complete=True, normalization=normalization)


def measure_cached_latents(out: Path, shards: list[ShardInfo], layout: str) -> LatentNormalization | None:
    """Per-channel shift and scale over every latent written to `out` (what training reads,
    in the stored dtype), re-read from the shards so a resumed encode counts all of them."""
    statistics = LatentStatistics(layout)  # type: ignore[arg-type]
    for shard in shards:
        for sample in iter_shard_samples(ShardRef(url=str(out / shard.name)), SkipCounter()):
            latents, _ = read_latent_sample(sample)
            statistics.update(torch.from_numpy(latents.astype(np.float32))[None])
    return statistics.normalization() if statistics.count else None


def _save_latent_manifest(
    out: Path, fresh: LatentManifest, shards: list[ShardInfo], complete: bool,
    normalization: LatentNormalization | None = None,
) -> LatentManifest:
    skipped: dict[str, int] = {}
    for shard in shards:
        for reason, n in shard.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    manifest = LatentManifest.from_dict(fresh.model_dump() | dict(
        shards=[s.model_dump() for s in shards], num_samples=sum(s.num_samples for s in shards),
        skipped=skipped, complete=complete,
        latent_normalization=normalization.model_dump() if normalization is not None else None,
    ))
    save_manifest(manifest, out)
    return manifest


def _finished_latent_shards(out: Path, fresh: LatentManifest) -> dict[str, ShardInfo]:
    """Verified latent shards of an earlier run of the same encoding, by file name."""
    if not (out / MANIFEST_NAME).is_file():
        return {}
    previous = load_manifest(out)
    if not isinstance(previous, LatentManifest):
        raise ValueError(f"{out} holds a {previous.kind} shard set, not latents; encode into another directory")
    for name in ("clips", "tokenizer_kind", "tokenizer_config", "latent_spec", "dtype"):
        if getattr(previous, name) != getattr(fresh, name):
            raise ValueError(
                f"{out} holds latents made with another {name} ({getattr(previous, name)!r} vs {getattr(fresh, name)!r}); "
                "encode into a new directory"
            )
    return {
        s.name: s for s in previous.shards
        if (out / s.name).is_file() and (out / s.name).stat().st_size == s.bytes and sha256_file(out / s.name) == s.sha256
    }


class LatentClipDataset(ShardStreamDataset):
    """Latents `{"latents": float32 tensor, "caption", "fps", "motion", "source", "key",
    "start_frame"}` from latent shards, with every `ShardStreamDataset` option."""

    def __init__(self, source: ShardSource, **stream: Any) -> None:
        super().__init__(source, **stream)
        manifest = source_manifest(source)
        if manifest is not None and not isinstance(manifest, LatentManifest):
            raise ValueError(f"{source} is a {manifest.kind} shard set; read it with VideoClipDataset")
        self.manifest = manifest

    def decode_sample(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        latents, meta = read_latent_sample(sample)
        return {
            "latents": torch.from_numpy(latents).float(),
            "caption": meta.caption,
            "fps": meta.fps,
            "motion": meta.motion,
            "source": meta.source,
            "key": sample["__key__"],
            "start_frame": meta.start_frame,
        }
