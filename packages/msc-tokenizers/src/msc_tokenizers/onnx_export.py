"""ONNX export of the tokenizers: the CausalVAE3D decoder and encoder, the AR-VAE decoder.

Three graphs (kinds, file names and metadata keys from `msc_runtime.graphs`, run by
msc_runtime's runners; the machinery is `msc_core.onnx_export`):

- `vae3d_decoder`: one causal chunk of `CausalVAE3D.decode_step`:
  `latents [batch, C, latent_frames, latent_height, latent_width], cache_in_0..n-1 ->
  video [batch, 3, frames, height, width], cache_out_0..n-1`. The causal cache (the
  last `k_t - 1` frames of every causal convolution's input) is explicit, so chunked
  decoding runs in ONNX Runtime; a clip start is the all-zero cache, and the first
  chunk's output starts with `tc - 1` copies of frame 0 that the runner drops
  (`msc.chunk_rule`). Not clamped: the runner clamps to `msc.output_range`.
- `vae3d_encoder`: `CausalVAE3D.encode`: `video [batch, 3, frames, height, width]` in
  [-1, 1] with `frames = 1 + tc k` -> `latents` (the posterior mean).
- `arvae_decoder`: `ARVAE.forward_decoder`: `latents [batch, frames, L, D], cache_in_*
  [batch, heads, past_tokens, head_dim] -> video, cache_out_*`, the cache being per layer
  the keys/values of past frames' latent tokens (any length, empty at a clip start).

Each goes through `torch.export` (no draft_export fallback is expected; `strict=True`
refuses one), is checked (no float64, `onnx.checker` full check) and run in ONNX Runtime
at a batch size, frame count and size unlike the export example (`ExportReport`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from msc_core.latents import LatentNormalization
from msc_core.onnx_export import (
    DEFAULT_OPSET,
    ExportReport,
    check_parity,
    export_graph,
    package_version,
    require_onnx,
)
from msc_tokenizers.arvae import ARVAE
from msc_tokenizers.causal_vae3d import CausalVAE3D

__all__ = [
    "ARVAEDecodeStep",
    "VAEDecodeStep",
    "VAEEncode",
    "export_arvae_decoder",
    "export_vae_decoder",
    "export_vae_encoder",
]

OUTPUT_RANGE = [-1.0, 1.0]
_MAX = 1 << 20


def _graphs() -> Any:
    require_onnx()
    from msc_runtime import graphs

    return graphs


def _dim(name: str, min: int = 1) -> Any:
    return torch.export.Dim(name, min=min, max=_MAX)


def _scaled(dim: Any, factor: int) -> Any:
    return dim if factor == 1 else factor * dim


def _normalization(normalization: LatentNormalization | None) -> dict[str, Any]:
    """`msc.latent_normalization` when exported from a pipeline (generated latents are
    denormalised `x * scale + shift` before decoding)."""
    if normalization is None:
        return {}
    return {_graphs().LATENT_NORMALIZATION_KEY: {"shift": list(normalization.shift), "scale": list(normalization.scale)}}


# -----------------------------------------------------------------------------
# exportable modules


class VAEDecodeStep(nn.Module):
    """`CausalVAE3D.decode_step` with the cache as separate tensors: `(latents, *cache) -> (video, *cache)`."""

    def __init__(self, vae: CausalVAE3D) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        video, new_cache = self.vae.decode_step(latents, list(cache))
        return (video, *new_cache)


class VAEEncode(nn.Module):
    """`CausalVAE3D.encode`: video `[B, 3, 1 + tc k, H, W]` -> the posterior mean `[B, C, 1 + k, H/s, W/s]`."""

    def __init__(self, vae: CausalVAE3D) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video)


class ARVAEDecodeStep(nn.Module):
    """`ARVAE.forward_decoder` with the cache as separate tensors."""

    def __init__(self, arvae: ARVAE) -> None:
        super().__init__()
        self.arvae = arvae

    def forward(self, latents: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        video, new_cache = self.arvae.forward_decoder(latents, list(cache))
        return (video, *new_cache)


GRID_LATENT_DIMS = {0: "batch", 2: "latent_frames", 3: "latent_height", 4: "latent_width"}
VIDEO_DIMS = {0: "batch", 2: "frames", 3: "height", 4: "width"}


# -----------------------------------------------------------------------------
# exports


def export_vae_decoder(
    vae: CausalVAE3D,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    latent_size: tuple[int, int] = (4, 5),
    *,
    strict: bool = False,
    external_data_threshold: int | None = None,
    latent_normalization: LatentNormalization | None = None,
) -> ExportReport:
    """Export one causal decoding chunk of `vae` (dynamic batch, latent frames, height, width)."""
    g = _graphs()
    path = Path(path)
    vae = vae.eval()
    gen = torch.Generator().manual_seed(0)
    C, tc = vae.config.latent_channels, vae.config.temporal_compression
    s = vae.config.spatial_compression

    def example(batch: int, frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        z = torch.randn(batch, C, frames, *size, generator=gen)
        cache = [torch.randn(c.shape, generator=gen) for c in vae.init_decode_cache(z)]
        return (z, *cache)

    args = example(2, 3, latent_size)
    z, cache = args[0], args[1:]
    batch, frames, height, width = _dim("batch"), _dim("latent_frames"), _dim("latent_height"), _dim("latent_width")
    cache_spec, cache_shapes = [], []
    for c in cache:
        hs, ws = c.shape[3] // z.shape[3], c.shape[4] // z.shape[4]
        cache_spec.append({"channels": c.shape[1], "frames": c.shape[2], "height_scale": hs, "width_scale": ws})
        cache_shapes.append({0: batch, 3: _scaled(height, hs), 4: _scaled(width, ws)})
    n = len(cache)
    inputs = ["latents"] + [f"cache_in_{i}" for i in range(n)]
    outputs = ["video"] + [f"cache_out_{i}" for i in range(n)]
    metadata = {
        g.CONFIG_KEY: vae.config.to_json(),
        g.LATENT_SPEC_KEY: vae.latent_spec.to_json(),
        g.CACHE_KEY: cache_spec,
        g.OUTPUT_RANGE_KEY: OUTPUT_RANGE,
        g.CHUNK_RULE_KEY: {"drop_first_frames": tc - 1, "when": "clip start (zero cache)"},
        **_normalization(latent_normalization),
    }
    description = (
        f"CausalVAE3D decoder, one causal chunk (msc {g.VAE_DECODER}). Inputs: latents [batch, {C}, latent_frames, "
        f"latent_height, latent_width] and the causal cache cache_in_0..{n - 1} (zeros at a clip start; "
        f"layout in msc.cache). Outputs: video [batch, 3, {tc} latent_frames, {s} latent_height, {s} latent_width] "
        f"in [-1, 1] (not clamped by the graph; clamp it) and cache_out_0..{n - 1}, fed back as the next chunk's "
        f"cache. Rule: the first chunk of a clip (zero cache) starts with {tc - 1} copies of frame 0; drop them."
    )
    module = VAEDecodeStep(vae)
    exporter, data = export_graph(
        module, args, path, g.VAE_DECODER,
        input_names=inputs, output_names=outputs,
        dynamic_shapes=({0: batch, 2: frames, 3: height, 4: width}, tuple(cache_shapes)),
        dim_names={"latents": GRID_LATENT_DIMS, "video": VIDEO_DIMS},
        metadata=metadata, description=description, producer_version=package_version("msc-tokenizers"),
        opset=opset, strict=strict, external_data_threshold=external_data_threshold,
    )
    probe = example(3, 5, (latent_size[0] + 2, latent_size[1] + 1))
    err = check_parity(path, g.VAE_DECODER, module, [probe], tolerance)
    return ExportReport(path, g.VAE_DECODER, exporter, opset, err, {"latents": tuple(probe[0].shape)},
                        None if data is None else str(data))


def export_vae_encoder(
    vae: CausalVAE3D,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    latent_size: tuple[int, int] = (4, 5),
    *,
    strict: bool = False,
    external_data_threshold: int | None = None,
    latent_normalization: LatentNormalization | None = None,
) -> ExportReport:
    """Export `CausalVAE3D.encode` (the posterior mean; dynamic batch, frames `1 + tc k`, height, width)."""
    g = _graphs()
    path = Path(path)
    vae = vae.eval()
    gen = torch.Generator().manual_seed(0)
    C, tc = vae.config.latent_channels, vae.config.temporal_compression
    s = vae.config.spatial_compression
    spec = vae.latent_spec

    def example(batch: int, latent_frames: int, size: tuple[int, int]) -> tuple[torch.Tensor]:
        frames = spec.pixel_frames(latent_frames)
        return (torch.rand(batch, 3, frames, size[0] * s, size[1] * s, generator=gen) * 2 - 1,)

    args = example(2, 3, latent_size)
    batch, frames, height, width = _dim("batch"), _dim("latent_frames"), _dim("latent_height"), _dim("latent_width")
    # frames = 1 + tc (latent_frames - 1): the exporter proves the frame rule instead of guarding on it
    pixel_frames = tc * frames - (tc - 1) if spec.causal_first_frame else tc * frames
    metadata = {
        g.CONFIG_KEY: vae.config.to_json(),
        g.LATENT_SPEC_KEY: spec.to_json(),
        g.INPUT_RANGE_KEY: OUTPUT_RANGE,
        g.FRAMES_RULE_KEY: {"temporal_compression": tc},
        **_normalization(latent_normalization),
    }
    description = (
        f"CausalVAE3D encoder (msc {g.VAE_ENCODER}). Input: video [batch, 3, frames, height, width] in [-1, 1], "
        f"frames = 1 + {tc} k, height and width multiples of {s}. Output: latents [batch, {C}, latent_frames, "
        f"latent_height, latent_width] = the posterior mean (CausalVAE3D.encode), latent_frames = 1 + k, "
        f"latent_height = height / {s}, latent_width = width / {s}."
    )
    module = VAEEncode(vae)
    exporter, data = export_graph(
        module, args, path, g.VAE_ENCODER,
        input_names=["video"], output_names=["latents"],
        dynamic_shapes=({0: batch, 2: pixel_frames, 3: s * height, 4: s * width},),
        dim_names={"video": VIDEO_DIMS, "latents": GRID_LATENT_DIMS},
        metadata=metadata, description=description, producer_version=package_version("msc-tokenizers"),
        opset=opset, strict=strict, external_data_threshold=external_data_threshold,
    )
    probe = example(3, 5, (latent_size[0] + 2, latent_size[1] + 1))
    err = check_parity(path, g.VAE_ENCODER, module, [probe], tolerance)
    return ExportReport(path, g.VAE_ENCODER, exporter, opset, err, {"video": tuple(probe[0].shape)},
                        None if data is None else str(data))


def export_arvae_decoder(
    arvae: ARVAE,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    *,
    strict: bool = False,
    external_data_threshold: int | None = None,
    latent_normalization: LatentNormalization | None = None,
) -> ExportReport:
    """Export the AR-VAE decoder (dynamic batch, frames and cached past length)."""
    g = _graphs()
    path = Path(path)
    arvae = arvae.eval()
    c = arvae.config
    gen = torch.Generator().manual_seed(0)
    head_dim = c.width // c.num_heads
    L, D = c.num_latent_tokens, c.latent_dim
    H, W = c.frame_size

    def example(batch: int, frames: int, past: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(batch, frames, L, D, generator=gen)
        cache = [torch.randn(batch, c.num_heads, past * L, head_dim, generator=gen) for _ in range(2 * c.decoder_depth)]
        return (z, *cache)

    batch, frames, past = _dim("batch"), _dim("frames"), _dim("past_tokens", min=0)
    n = 2 * c.decoder_depth
    inputs = ["latents"] + [f"cache_in_{i}" for i in range(n)]
    outputs = ["video"] + [f"cache_out_{i}" for i in range(n)]
    metadata = {
        g.CONFIG_KEY: c.to_json(),
        g.LATENT_SPEC_KEY: arvae.latent_spec.to_json(),
        g.CACHE_KEY: {"layers": c.decoder_depth, "heads": c.num_heads, "head_dim": head_dim, "tokens_per_frame": L},
        g.OUTPUT_RANGE_KEY: OUTPUT_RANGE,
        **_normalization(latent_normalization),
    }
    kept = "" if c.context_frames is None else f", at most the last {c.context_frames * L} (context_frames)"
    description = (
        f"ARVAE decoder (msc {g.ARVAE_DECODER}). Inputs: latents [batch, frames, {L}, {D}] and cache_in_0..{n - 1} "
        f"[batch, {c.num_heads}, past_tokens, {head_dim}] (a key and a value per decoder layer for the latent tokens "
        f"of past frames; empty, past_tokens = 0, at a clip start). Outputs: video [batch, 3, frames, {H}, {W}] in "
        f"[-1, 1] (not clamped by the graph; clamp it) and cache_out_0..{n - 1} [batch, {c.num_heads}, past_tokens "
        f"+ {L} frames{kept}, {head_dim}], fed back as the next chunk's cache."
    )
    dim_names: dict[str, dict[int, str]] = {"latents": {0: "batch", 1: "frames"}, "video": {0: "batch", 2: "frames"}}
    dim_names.update({name: {0: "batch", 2: "past_tokens"} for name in inputs[1:]})
    if c.context_frames is not None:  # the cache keeps the last context_frames * L tokens: min(past + L frames, that)
        dim_names.update({name: {0: "batch", 2: "cache_tokens"} for name in outputs[1:]})
    module = ARVAEDecodeStep(arvae)
    exporter, data = export_graph(
        module, example(2, 3, 2), path, g.ARVAE_DECODER,
        input_names=inputs, output_names=outputs,
        dynamic_shapes=({0: batch, 1: frames}, tuple({0: batch, 2: past} for _ in range(n))),
        dim_names=dim_names, metadata=metadata, description=description,
        producer_version=package_version("msc-tokenizers"),
        opset=opset, strict=strict, external_data_threshold=external_data_threshold,
    )
    probe = example(3, 4, 1)
    err = check_parity(path, g.ARVAE_DECODER, module, [probe, example(1, 1, 0)], tolerance)
    return ExportReport(path, g.ARVAE_DECODER, exporter, opset, err, {"latents": tuple(probe[0].shape)},
                        None if data is None else str(data))
