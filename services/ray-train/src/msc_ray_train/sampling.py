"""Loading a trained model and sampling videos from it (`msc sample`, `msc demo`).

`load_trained_model(path)` accepts

- a run directory `<storage_path>/<name>/` (uses its exported `model/`),
- an exported model directory (`config.json` + `model.safetensors`, EMA weights),
- a training checkpoint `<run>/checkpoint_*/` (verified against its manifest; its EMA
  weights are loaded).

The model class comes from the `kind` in `config.json` (model_kinds.MODEL_KINDS).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from msc_core.checkpoint import from_pretrained, read_config_kind, resolve_pretrained
from msc_core.interfaces import GenerationRequest, SchedulerParams
from msc_core.pipeline import VideoPipeline, is_pipeline_dir
from msc_data.video_io import iter_video_frames, shortest_frame_duration
from msc_data.video_tensor import frames_to_video

from msc_ray_train import latent_kinds
from msc_ray_train.model_kinds import model_kind

PIPELINE_DIR = "pipeline"  # a latent model's exported VideoPipeline inside its run folder


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model (EMA weights, eval mode) of a run directory, export or training checkpoint
    (`msc_core.checkpoint.resolve_pretrained`); its class comes from the config's `kind`."""
    files = resolve_pretrained(path)
    kind = model_kind(read_config_kind(files.config))
    return from_pretrained(kind.model_class, files, device=device)


def read_prefix_video(path: str | Path, model: nn.Module, max_frames: int) -> torch.Tensor:
    """The first frames (at most `max_frames`) of a video file as a prefix `(1, C, P, H, W)`."""
    channels, _, height, width = model_kind(model.config.kind).clip_shape(model.config)
    if channels is None:  # a cascade whose VAE is missing
        raise FileNotFoundError(f"{model.config.kind} model: cannot read the channels of its VAE")
    return read_video_clip(path, channels, height, width, max_frames)


def find_pipeline(path: str | Path) -> Path | None:
    """The pipeline folder `path` is, or holds (a latent model's run folder), else None."""
    for candidate in (Path(path), Path(path) / PIPELINE_DIR):
        if is_pipeline_dir(candidate):
            return candidate
    return None


def pipeline_frame_shape(pipeline: VideoPipeline) -> tuple[int, int, int]:
    """(channels, height, width) of the videos a pipeline makes (its tokenizer's input frames)."""
    channels, _, height, width = latent_kinds.pixel_clip_shape(pipeline.generator.config, pipeline.tokenizer.config)
    return channels, height, width


def read_video_clip(path: str | Path, channels: int, height: int | None, width: int | None,
                    max_frames: int) -> torch.Tensor:
    """The first frames (at most `max_frames`) of a video file, center-cropped square and
    resized to `height` (None: the video's own size), as `(1, C, P, H, W)` in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prefix video not found: {path}")
    if height != width:
        raise ValueError(f"prefix videos need a model with square frames, this one takes {height}x{width}")
    frames = []
    # height None: a size-agnostic model (vae3d) reads the video at its own size
    # A GIF stores a repeated frame once, shown longer: resample at its shortest frame
    # duration to get every original frame back (our own GIFs included).
    shortest = shortest_frame_duration(path) if path.suffix.lower() == ".gif" else None
    for frame in iter_video_frames(path, fps=1.0 / shortest if shortest else None, size=height):
        frames.append(frame)
        if len(frames) == max_frames:
            break
    if not frames:
        raise ValueError(f"prefix video {path} holds no frames")
    return frames_to_video(np.stack(frames), channels)[None]  # (1, C, P, H, W)


def generate_video(
    model: nn.Module,
    num_frames: int,
    seed: int = 0,
    num_steps: int = 50,
    offset: int | None = None,
    eta: float = 0.0,
    prefix: torch.Tensor | None = None,
    class_label: int | None = None,
    guidance_scale: float = 1.0,
    progress: bool = True,
    prompt: str | None = None,
) -> torch.Tensor:
    """One sampled video `(C, T, H, W)` in [-1, 1]; `prefix` frames are kept and continued.

    `eta`: DDIM noise (0 deterministic, 1 DDPM-like ancestral sampling). `class_label`
    and `guidance_scale` (classifier-free guidance) for class-conditional models; `prompt`
    (the caption; guidance against the null caption) for text-conditional ones (NOVA).
    """
    request = GenerationRequest(
        num_frames=num_frames, seed=seed, num_steps=num_steps, prefix=prefix, class_label=class_label,
        guidance_scale=guidance_scale, scheduler=SchedulerParams(offset=offset, eta=eta), prompt=prompt,
    )
    if isinstance(model, VideoPipeline):  # a latent model: generate latents, decode them
        return model(request)[0].float()  # (C, T, H, W), in [-1, 1]
    kwargs = {}
    bar = tqdm(desc="sampling", unit="iter", disable=not progress, leave=False)
    if "on_step" in inspect.signature(model.generate).parameters:
        kwargs["on_step"] = lambda n, video: bar.update(1)
    try:
        video = model.generate(request, **kwargs)
    finally:
        bar.close()
    return video[0].float().clamp(-1, 1)  # (C, T, H, W)


@dataclass(frozen=True)
class StreamReport:
    frames: int
    first_frame_s: float
    total_s: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.total_s if self.total_s > 0 else float("inf")


def stream_video(
    model: nn.Module | VideoPipeline, request: GenerationRequest, write: Callable[[torch.Tensor], None]
) -> StreamReport:
    """Hand each frame `(C, H, W)` in [-1, 1] of the first video of `request` to `write` as
    soon as it is final (a pipeline decodes it through the tokenizer's chunk cache; a
    pixel-space generator yields it directly); how long the first frame and all took."""
    started = time.perf_counter()
    if isinstance(model, VideoPipeline):
        frames = model.stream(request)
    elif hasattr(model, "generate_frames"):
        frames = model.generate_frames(request)
    else:
        raise ValueError(f"a {model.config.kind} model does not generate frame by frame; sample without --stream")
    first, count = None, 0
    for frame in frames:
        write(frame[0].float().clamp(-1, 1))
        count += 1
        if first is None:
            first = time.perf_counter() - started
    return StreamReport(count, first or 0.0, time.perf_counter() - started)


def reproduce_beside_clip(model: nn.Module, clip: torch.Tensor, seed: int = 0, num_steps: int = 20) -> torch.Tensor:
    """A clip-to-clip model's (tokenizer, cascade) version of `clip` `(1, C, T, H, W)`,
    left, beside the clip itself, right: `(C, T, H, 2W)` in [-1, 1].

    Tokenizers reconstruct the clip from its latents; the cascade refines the clip's base
    latent (4x downsized in sr mode, every 4th frame in fps mode) with `num_steps` DDIM
    steps seeded by `seed` (model_kinds.ModelKind.reproduce_clip).
    """
    reproduce = model_kind(model.config.kind).reproduce_clip
    if reproduce is None:
        raise ValueError(f"a {model.config.kind} model generates videos; it does not reproduce clips")
    if clip.ndim != 5 or clip.shape[0] != 1:
        raise ValueError(f"clip must be (1, C, T, H, W), got shape {tuple(clip.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = reproduce(model, clip, seed, num_steps)
    finally:
        model.train(was_training)
    return torch.cat([output.float().clamp(-1, 1), clip.float().clamp(-1, 1)], dim=-1)[0]  # (C, T, H, 2W)
