"""CascadeDecoder: base latents -> video (CascadeV §3.1: DiT decoding, then the VAE decoder).

`decode(base_latents, seed)`:

1. the DiT's condition at the target size (`condition`: the scaled base latent upsampled in
   latent space, or, with pixel conditioning, decoded, upsampled in pixels and re-encoded);
2. draw the clip's noise from `seed` with numpy (`cascade_sampling.seeded_noise`:
   `np.random.default_rng(seed)`, float32), so the same seed gives the same noise on every
   device and in msc_runtime (ONNX Runtime, no torch); scaled by `settings.temperature`
   (0: no noise, a deterministic decode);
3. refine with DDIM in sliding temporal windows x spatial tiles, cross-faded in the
   overlaps (`latent_windows`); one window/tile covering the clip is the plain `refine`;
4. decode the target latent with the VAE, in spatial tiles (`spatial_tiling.tiled_map`)
   and causal temporal chunks, so memory stays bounded for long or large clips.

`CascadeDecodePipeline` holds that orchestration and is backend-agnostic: it calls
`denoise_step` (one DDIM step) and `decode_latent_tile` (VAE decode of one tile). The
PyTorch `CascadeDecoder` and the ONNX Runtime runner (`onnx_export.OnnxCascadeDecoder`)
plug in their own, so they run the same loop.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch
from pydantic import Field, model_validator

from msc_cascade.cascade_model import CascadeConfig, CascadeModel, cascade_target_size
from msc_cascade.cascade_sampling import ddim_refine, seeded_noise
from msc_cascade.dit import upsample_base_latent
from msc_cascade.latent_windows import count_pieces, refine_in_pieces
from msc_core.checkpoint import from_pretrained, read_config_kind, resolve_pretrained
from msc_core.config import Config
from msc_core.diffusion import ddim_timestep_grid
from msc_core.interfaces import LatentSpec
from msc_core.runtime import resolve_device
from msc_core.validation import check_tensor, check_values
from msc_tokenizers.spatial_tiling import tile_starts, tiled_map

# (done, total) work units: DDIM steps of all pieces, then VAE tiles
ProgressFn = Callable[[int, int], None]


class CascadeDecodeSettings(Config):
    """How `decode` splits the work. Sizes are in TARGET latent units (frames / positions)."""

    steps: int | None = Field(None, ge=1, description="DDIM steps (None: the model's sample_steps)")
    temperature: float = Field(
        1.0,
        ge=0,
        description="scale of the initial noise: 1 samples the DiT's distribution (detail that need not be the "
        "source's); 0 starts from the mean, so the result is deterministic (seed-independent) and closest to the "
        "conditional mean",
    )
    window_frames: int | None = Field(None, ge=1, description="latent frames per temporal window (None: whole clip)")
    window_overlap: int = Field(2, ge=0, description="latent frames two neighbouring windows share")
    tile_size: int | None = Field(None, ge=1, description="latent rows/cols per spatial tile (None: whole frame)")
    tile_overlap: int = Field(2, ge=0)
    vae_chunk_frames: int | None = Field(None, ge=1, description="latent frames per causal VAE chunk (None: whole)")
    vae_tile_size: int | None = Field(None, ge=1, description="latent rows/cols per VAE decoder tile (None: whole)")
    vae_tile_overlap: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "CascadeDecodeSettings":
        for size, overlap, name in (
            (self.window_frames, self.window_overlap, "window"),
            (self.tile_size, self.tile_overlap, "tile"),
            (self.vae_tile_size, self.vae_tile_overlap, "vae_tile"),
        ):
            if size is not None and overlap >= size:
                sized = "window_frames" if name == "window" else f"{name}_size"
                raise ValueError(f"{name}_overlap={overlap} must be smaller than {sized}={size}")
        return self


class CascadeDecodePipeline:
    """The decode loop, independent of the backend that runs the networks."""

    def __init__(self, config: CascadeConfig, latent_spec: LatentSpec, settings: CascadeDecodeSettings | None) -> None:
        self.config = config
        self.latent_spec = latent_spec
        self.settings = settings or CascadeDecodeSettings()
        if self.settings.steps is not None and self.settings.steps > config.num_timesteps:
            raise ValueError(f"steps={self.settings.steps} exceeds the model's num_timesteps={config.num_timesteps}")

    # --- backend hooks ------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def denoise_step(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def condition(self, base_latents: torch.Tensor) -> torch.Tensor:
        """The DiT's condition of the whole clip (`CascadeModel.condition`); pipelines
        without a VAE encoder support latent conditioning only."""
        if self.config.conditioning != "latent":
            raise ValueError(
                f"conditioning={self.config.conditioning!r} re-encodes the upsampled base video, which needs the "
                f"VAE encoder; {type(self).__name__} has none: decode with CascadeDecoder (PyTorch)"
            )
        size = self.target_size(base_latents)
        check_values("base_latents", base_latents)
        return upsample_base_latent(base_latents.to(self.device, torch.float32) * self.config.latent_scale, size)

    def decode_latent_tile(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode of one spatial tile `[B, C, T, h, w]` -> `[B, 3, 1 + tc (T - 1), h s, w s]`."""
        raise NotImplementedError

    # --- the loop -----------------------------------------------------------------------

    @property
    def steps(self) -> int:
        return self.settings.steps or self.config.sample_steps

    def target_size(self, base_latents: torch.Tensor) -> tuple[int, int, int]:
        return cascade_target_size(self.config, self.latent_spec, base_latents)

    def work_units(self, base_latents: torch.Tensor) -> int:
        """Total progress units of `decode`: DDIM steps over all pieces plus VAE tiles."""
        s = self.settings
        pieces = count_pieces(self.target_size(base_latents), s.window_frames, s.window_overlap, s.tile_size, s.tile_overlap)
        return pieces * self.steps + self._vae_tiles(self.target_size(base_latents))

    def _vae_tiles(self, size: tuple[int, int, int]) -> int:
        s = self.settings
        if s.vae_tile_size is None:
            return 1
        _, H, W = size
        if H <= s.vae_tile_size and W <= s.vae_tile_size:
            return 1
        return len(tile_starts(H, s.vae_tile_size, s.vae_tile_overlap)) * len(tile_starts(W, s.vae_tile_size, s.vae_tile_overlap))

    @torch.no_grad()
    def refine(self, base_latents: torch.Tensor, seed: int = 0, progress: ProgressFn | None = None) -> torch.Tensor:
        """Base latents `[B, C, t, h, w]` -> target latents, deterministic for a given `seed`
        (numpy noise, `seeded_noise`: equal in msc_runtime)."""
        scale = self.config.latent_scale
        base_up = self.condition(base_latents)
        noise = seeded_noise(tuple(base_up.shape), seed, base_up.device, base_up.dtype)
        noise = noise * self.settings.temperature
        grid = ddim_timestep_grid(self.config.num_timesteps, self.steps)
        total, done = self.work_units(base_latents), 0

        def on_step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        s = self.settings
        refined = refine_in_pieces(
            lambda base, eps: ddim_refine(self.denoise_step, base, eps, grid, on_step),
            base_up, noise, s.window_frames, s.window_overlap, s.tile_size, s.tile_overlap,
        )
        return refined / scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Target latents `[B, C, T, H, W]` -> video `[B, 3, 1 + tc (T - 1), H s, W s]`, clamped to [-1, 1]."""
        s = self.settings

        def decode_tile(tile: torch.Tensor) -> torch.Tensor:
            video = self.decode_latent_tile(tile)
            if progress is not None:
                progress()
            return video

        if s.vae_tile_size is None:
            video = decode_tile(latents)
        else:
            scale = Fraction(self.latent_spec.spatial_compression)
            video = tiled_map(decode_tile, latents, s.vae_tile_size, s.vae_tile_overlap, scale)
        return video.clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode(self, base_latents: torch.Tensor, seed: int = 0, progress: ProgressFn | None = None) -> torch.Tensor:
        """Base latents -> video `[B, 3, N, H, W]` in [-1, 1]: 4x the size (sr) or 4x the frame rate (fps)."""
        latents = self.refine(base_latents, seed, progress)
        total = self.work_units(base_latents)
        done = total - self._vae_tiles(self.target_size(base_latents))

        def on_tile() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        return self.decode_latents(latents, on_tile)


class CascadeDecoder(CascadeDecodePipeline):
    """The PyTorch cascade decoder around a `CascadeModel` (DiT + frozen VAE)."""

    def __init__(self, model: CascadeModel, settings: CascadeDecodeSettings | None = None) -> None:
        super().__init__(model.config, model.latent_spec, settings)
        self.model = model.eval()

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        settings: CascadeDecodeSettings | None = None,
        vae_path: str | Path | None = None,
        device: str | torch.device | None = "cpu",
    ) -> "CascadeDecoder":
        """Load a cascade checkpoint (`save_pretrained` directory); `vae_path` overrides the
        VAE directory recorded in its config (e.g. after moving the files)."""
        model = load_cascade(checkpoint, vae_path=vae_path, device=device)
        return cls(model, settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def denoise_step(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return self.model.denoise_step(x_t, base_up, t, t_next)

    def condition(self, base_latents: torch.Tensor) -> torch.Tensor:
        return self.model.condition(base_latents)

    def decode_latent_tile(self, latents: torch.Tensor) -> torch.Tensor:
        chunk = self.settings.vae_chunk_frames
        vae = self.model.vae
        return vae.decode(latents) if chunk is None else vae.decode_chunked(latents, chunk)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """VAE latents of a video `[B, 3, 1 + tc k, H, W]` in [-1, 1] (the base for `decode`)."""
        check_tensor("video", video, pixels=True)  # before the cast: a uint8 video is refused, not read as 0..255
        return self.model.vae.encode(video.to(self.device, torch.float32))

    @torch.no_grad()
    def upscale(self, video: torch.Tensor, seed: int = 0, progress: ProgressFn | None = None) -> torch.Tensor:
        """A video -> the 4x larger (sr) or 4x smoother (fps) video (§3.4: post-processing of
        pixel videos, since base and target share the VAE latent space)."""
        return self.decode(self.encode(video), seed, progress)


def load_cascade(
    checkpoint: str | Path, vae_path: str | Path | None = None, device: str | torch.device | None = "cpu"
) -> CascadeModel:
    """`CascadeModel` from a model folder (a `save_pretrained` directory, a cascade run folder or
    a `checkpoint_*` folder); `vae_path` replaces the recorded VAE path."""
    files = resolve_pretrained(checkpoint)
    kind = read_config_kind(files.config)
    if kind != "cascade":
        raise ValueError(f"{files.config} holds a {kind!r} model, not a cascade")
    target = resolve_device(device)
    if vae_path is None:
        return from_pretrained(CascadeModel, files, device=target)
    config = CascadeConfig.load(files.config).replace(vae_path=str(vae_path))

    # from_pretrained builds `cls(config)` from config.json; this subclass builds it with the
    # overridden vae_path instead, so loading and its error messages stay in one place
    class _WithVAE(CascadeModel):
        def __init__(self, _config: CascadeConfig) -> None:
            super().__init__(config)

    model = from_pretrained(_WithVAE, files, device=target)
    model.__class__ = CascadeModel
    return model
