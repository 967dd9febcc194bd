"""Training-service hooks of latent generators: AR-Diffusion and NOVA on a tokenizer's latents.

The papers generate in a tokenizer's latent space (AR-Diffusion on AR-VAE tokens, NOVA on
3D-VAE latents). A generator config with `tokenizer_path` is a latent model:

- `model.tokenizer_path`: a trained vae3d / arvae run folder (its exported `model/`), an
  exported `model/` or any `save_pretrained` folder, made absolute when the job is read.
  The tokenizer is frozen: it is never part of the generator (not in its `parameters()`,
  `state_dict()`, optimizer, EMA or checkpoints); each worker loads it to encode its
  clips (`LatentBatches`), and the exported pipeline carries a copy.
- the clips a job reads are the tokenizer's input clips (pixels), whose shape follows
  from the generator's latent frames and grid and the tokenizer's compression; or, with
  `data.source: latents`, the cache `msc data encode` wrote with that tokenizer.
- `model.latent_normalization`: per-channel shift and scale (msc_core.latents); when the
  job leaves it out it is taken from the run's own checkpoints (a re-run), from the
  latent cache's manifest, or measured on the job's first clips, on the driver, before
  Ray starts (`resolve_latent_normalization`); the job saved with every checkpoint holds it.
- `model.latent_grid` / channels / tokens per frame must match the tokenizer's
  `LatentSpec` (refused naming both sides).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msc_core.checkpoint import from_pretrained, read_config_kind, resolve_pretrained
from msc_core.config import Config
from msc_core.interfaces import LatentSpec
from msc_core.latents import LatentNormalization, LatentStatistics
from msc_core.pipeline import load_registered

from msc_ray_train.tokenizer_kinds import resolve_model_path

logger = logging.getLogger("msc_ray_train")

Clip = tuple[int, int, int, int]  # (channels, frames, height, width)
DEFAULT_STATISTICS_CLIPS = 64  # clips the driver encodes to measure a latent normalisation


def is_latent_model(config: Any) -> bool:
    return getattr(config, "tokenizer_path", None) is not None


def tokenizer_config(config: Any) -> Config:
    """The config of the model's tokenizer, read from `tokenizer_path` (no weights loaded)."""
    try:
        files = resolve_pretrained(config.tokenizer_path)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"model.tokenizer_path: {err} (train the tokenizer first, e.g. msc train vae3d / msc train arvae)"
        ) from None
    cls = load_registered("tokenizer", read_config_kind(files.config))
    return cls.config_class.load(files.config)


def tokenizer_spec(config: Any) -> LatentSpec:
    return tokenizer_config(config).latent_spec


def load_frozen_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The tokenizer at `path` (a model's `tokenizer_path`), in eval mode, without gradients."""
    files = resolve_pretrained(path)
    cls = load_registered("tokenizer", read_config_kind(files.config))
    return from_pretrained(cls, files, device=device).requires_grad_(False)


def latent_clip(config: Any) -> tuple[int, tuple[int, ...]]:
    """(latent frames, per-frame latent size) the generator trains on: grid `(h, w)` or tokens `(L,)`."""
    if config.kind == "ardiffusion":
        data = config.data
        size = (data.height, data.width) if data.input_layout == "grid" else (data.tokens_per_frame,)
        return data.num_frames, size
    size = tuple(config.sample_size) if config.layout == "grid" else (config.tokens_per_frame,)
    return config.num_frames, size


def pixel_clip_shape(config: Any, tokenizer: Config | None = None) -> Clip:
    """(channels, frames, height, width) of the pixel clips whose latents the generator reads;
    `tokenizer`: the tokenizer's config (default: read from `config.tokenizer_path`)."""
    tokenizer = tokenizer or tokenizer_config(config)
    spec = tokenizer.latent_spec
    config.check_latent_space(spec)
    frames, size = latent_clip(config)
    if spec.layout == "grid":
        s = spec.spatial_compression
        return tokenizer.in_channels, spec.pixel_frames(frames), size[0] * s, size[1] * s
    height, width = tokenizer.frame_size
    return tokenizer.in_channels, spec.pixel_frames(frames), height, width


def latent_clip_tokens(config: Any, patch_size: int) -> int:
    """Tokens the generator processes for one clip: latent frames x positions / patch^2."""
    frames, size = latent_clip(config)
    positions = math.prod(size)
    return frames * (positions // patch_size**2 if len(size) == 2 else positions)


def prepare_section(section: dict[str, Any]) -> dict[str, Any]:
    """`model.tokenizer_path` made absolute (and a run folder's `model/`) when the job is read."""
    if isinstance(section.get("tokenizer_path"), str):
        section = {**section, "tokenizer_path": resolve_model_path(section["tokenizer_path"])}
    return section


def model_files(config: Any) -> dict[str, str]:
    return {"model.tokenizer_path": config.tokenizer_path} if is_latent_model(config) else {}


# --------------------------------------------------------------------------- batches


class LatentBatches:
    """Clip batches as normalised latents: `"video"` is encoded with the frozen tokenizer
    (on-the-fly), `"latents"` (a cache) are used as stored; both are then normalised.
    Every other key (label, caption, motion, fps) passes through."""

    def __init__(self, inner: Any, tokenizer: nn.Module | None, normalization: LatentNormalization | None,
                 device: torch.device) -> None:
        self.inner, self.tokenizer, self.normalization, self.device = inner, tokenizer, normalization, device

    def batch(self, step: int) -> dict[str, Any]:
        batch = dict(self.inner.batch(step))
        if "video" in batch:
            if self.tokenizer is None:
                raise ValueError("pixel clips need the tokenizer to encode them (model.tokenizer_path)")
            with torch.no_grad():
                latents = self.tokenizer.encode(batch.pop("video").to(self.device))
        else:
            latents = batch.pop("latents").to(self.device)
        batch["latents"] = self.normalization.normalize(latents) if self.normalization is not None else latents
        return batch

    @property
    def corrupt_skipped(self) -> int:
        return self.inner.corrupt_skipped

    def position(self, next_step: int) -> dict[str, Any]:
        return self.inner.position(next_step)

    @property
    def sample_caption(self) -> str | None:
        return self.inner.sample_caption


def measure_normalization(tokenizer: nn.Module, batches: Any, clips: int, batch_size: int) -> LatentNormalization:
    """The per-channel statistics of the tokenizer's latents of the first `clips` clips of
    `batches` (a rank-0, world-size-1 clip stream of the job)."""
    statistics = LatentStatistics(tokenizer.latent_spec.layout)
    step = 0
    while statistics.clips < clips:
        video = batches.batch(step)["video"]
        with torch.no_grad():
            statistics.update(tokenizer.encode(video[: clips - statistics.clips]))
        step += 1
    normalization = statistics.normalization()
    logger.info("measured the latent normalization on %d clips (batches of %d)", statistics.clips, batch_size)
    return normalization


def resolve_latent_normalization(job: Any, clips: int = DEFAULT_STATISTICS_CLIPS) -> tuple[Any, str | None]:
    """`job` with `model.latent_normalization` filled in (driver side, before Ray starts),
    and a line saying where it came from; `(job, None)` when there is nothing to resolve.

    Order: the job's own value; the run's newest valid checkpoint (a re-run continues with
    the statistics it started with); the latent cache's manifest (`data.source: latents`);
    else measured by encoding the first `clips` clips of the job's data stream."""
    from msc_ray_train.clip_batches import make_clip_batches
    from msc_ray_train.job import LatentCacheSource
    from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_job_dict

    model = job.model
    if not is_latent_model(model) or model.latent_normalization is not None:
        return job, None
    latest = latest_valid_checkpoint(job.run_dir)
    saved = read_job_dict(latest)["model"].get("latent_normalization") if latest is not None else None
    if saved is not None:
        normalization = LatentNormalization.from_dict(saved)
        where = f"latent normalization from {latest.name} ({normalization.clips} clips)"
    elif isinstance(job.data, LatentCacheSource):
        normalization = job.data.manifest().latent_normalization
        if normalization is None:
            raise ValueError(
                f"the latent cache {job.data.path} has no latent_normalization in its manifest (written before msc "
                "measured it); re-encode it with msc data encode, or give model.latent_normalization"
            )
        where = f"latent normalization from the cache manifest ({normalization.clips} clips)"
    else:
        tokenizer = load_frozen_tokenizer(model.tokenizer_path)
        batch_size = min(8, clips)
        batches = make_clip_batches(job.data, job.seed, 0, 1, batch_size, 0,
                                    with_labels=job.class_conditional)
        normalization = measure_normalization(tokenizer, batches, clips, batch_size)
        where = f"latent normalization measured on the job's first {normalization.clips} clips"
    return job.replace(model=model.replace(latent_normalization=normalization.model_dump())), where
