"""The cascade decoder (CascadeV §3.1) in ONNX Runtime: refine base latents, decode, upscale videos.

A cascade model folder exported by `msc export cascade` holds `cascade_step.onnx` (one DDIM
step of the DiT: `(x_t, base_up, t, t_next) -> x_next`, scaled latent space),
`vae_decoder.onnx` and `vae_encoder.onnx` (the frozen VAE the cascade works in). The loop
is `msc_cascade.cascade_decoder.CascadeDecodePipeline`'s, in numpy:

1. condition `base_up` = the base latent times `latent_scale`, upsampled to the target size
   (bilinear in space for sr, linear in time for fps: `latent_resampling`);
2. noise `np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)` times the
   temperature (the same noise the PyTorch decoder draws for that seed);
3. DDIM over the exported step on `ddim_timestep_grid(num_timesteps, steps)`, in sliding
   temporal windows x spatial tiles cross-faded in the overlaps (`latent_tiling`); on CUDA
   the window's condition is bound once and `x_t` stays on the GPU between steps;
4. divide by `latent_scale` and decode with the VAE in spatial tiles and causal chunks,
   clamped to [-1, 1].

`upscale(video)` = `encode` (vae_encoder.onnx) -> refine -> decode (§3.4: post-processing
of pixel videos, since base and target share the VAE latent space).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from msc_runtime.binding import GraphRunner
from msc_runtime.cascade_sampling import ddim_refine, ddim_timestep_grid, initial_noise, target_latent_size
from msc_runtime.graphs import (
    CASCADE_STEP,
    GRAPH_FILES,
    VAE_DECODER,
    VAE_ENCODER,
    CascadeStepInfo,
    LatentSpec,
    OnnxModelError,
)
from msc_runtime.input_checks import as_input_array, check_positive_int
from msc_runtime.latent_resampling import upsample_base_latent
from msc_runtime.latent_tiling import count_pieces, refine_in_pieces, tile_starts, tiled_map
from msc_runtime.sessions import ProviderEntry, open_session
from msc_runtime.vae import VAEDecoder, VAEEncoder

# (done, total) work units: DDIM steps of all pieces, then VAE tiles
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class RefineSettings:
    """How the work is split (`msc_cascade.cascade_decoder.CascadeDecodeSettings`); sizes in
    TARGET latent units (frames / positions)."""

    steps: int | None = None  # DDIM steps (None: the model's sample_steps)
    temperature: float = 1.0  # initial noise scale: 0 decodes deterministically (seed-independent)
    window_frames: int | None = None  # latent frames per temporal window (None: whole clip)
    window_overlap: int = 2
    tile_size: int | None = None  # latent rows/cols per spatial tile (None: whole frame)
    tile_overlap: int = 2
    vae_chunk_frames: int | None = None  # latent frames per causal VAE chunk (None: whole)
    vae_tile_size: int | None = None  # latent rows/cols per VAE decoder tile (None: whole)
    vae_tile_overlap: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "window_frames", "tile_size", "vae_chunk_frames", "vae_tile_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("window_overlap", "tile_overlap", "vae_tile_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        for size, overlap, sized, name in (
            (self.window_frames, self.window_overlap, "window_frames", "window_overlap"),
            (self.tile_size, self.tile_overlap, "tile_size", "tile_overlap"),
            (self.vae_tile_size, self.vae_tile_overlap, "vae_tile_size", "vae_tile_overlap"),
        ):
            if size is not None and overlap >= size:
                raise ValueError(f"{name}={overlap} must be smaller than {sized}={size}")


class CascadeRefiner:
    """`CascadeDecoder.decode` / `upscale` in ONNX Runtime from an exported cascade folder."""

    def __init__(
        self,
        directory: str | Path,
        settings: RefineSettings | None = None,
        providers: str | Sequence[ProviderEntry] | None = None,
        threads: int | None = None,
        binding: bool | None = None,
    ) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            kind = "a file" if directory.exists() else "not found"
            raise NotADirectoryError(
                f"cascade folder {directory} is {kind}; expected a folder holding {GRAPH_FILES[CASCADE_STEP]}, "
                f"{GRAPH_FILES[VAE_DECODER]} and {GRAPH_FILES[VAE_ENCODER]} (msc export cascade)"
            )
        self.directory = directory
        self.settings = settings or RefineSettings()
        self.providers_requested, self.threads, self.binding = providers, threads, binding
        self.step = open_session(directory / GRAPH_FILES[CASCADE_STEP], CASCADE_STEP, providers, threads)
        info = self.step.info.cascade
        assert info is not None  # validate_metadata sets it for this kind
        self.info: CascadeStepInfo = info
        if info.conditioning != "latent":
            raise OnnxModelError(
                f"{self.step.path} is a cascade with conditioning={info.conditioning!r}, whose condition re-encodes "
                "the upsampled base video (bicubic pixel resampling) with the VAE: decode it with msc_cascade's "
                "CascadeDecoder (PyTorch), or export a cascade trained with conditioning='latent'"
            )
        steps = self.settings.steps
        if steps is not None and steps > info.num_timesteps:
            raise ValueError(f"steps={steps} exceeds the model's num_timesteps={info.num_timesteps}")
        self.vae_decoder = VAEDecoder(directory / GRAPH_FILES[VAE_DECODER], providers, threads, binding)
        self._check_same_latents(self.vae_decoder.path, self.vae_decoder.latent_spec)
        self.step_runner = GraphRunner(self.step, binding)
        self._encoder: VAEEncoder | None = None

    def _check_same_latents(self, path: Path, spec: LatentSpec) -> None:
        if spec != self.latent_spec:
            raise OnnxModelError(
                f"{self.step.path} works in latent space {self.latent_spec} but {path} has {spec}: "
                "the two files come from different exports"
            )

    # --- what the model is ---------------------------------------------------------------

    @property
    def latent_spec(self) -> LatentSpec:
        return self.step.info.latent_spec

    @property
    def mode(self) -> str:
        return self.info.mode

    @property
    def factor(self) -> int:
        return self.info.factor

    @property
    def steps(self) -> int:
        return self.settings.steps or self.info.sample_steps

    @property
    def providers(self) -> dict[str, str]:
        """Active provider of each graph loaded so far."""
        out = {CASCADE_STEP: self.step.provider, VAE_DECODER: self.vae_decoder.provider}
        if self._encoder is not None:
            out[VAE_ENCODER] = self._encoder.provider
        return out

    @property
    def encoder(self) -> VAEEncoder:
        """The VAE encoder (`vae_encoder.onnx`), loaded on first use."""
        if self._encoder is None:
            path = self.directory / GRAPH_FILES[VAE_ENCODER]
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: encoding a video (upscale) needs the VAE encoder graph; re-export the cascade "
                    f"with an msc that writes it (msc export cascade --model MODEL --out {self.directory})"
                )
            self._encoder = VAEEncoder(path, self.providers_requested, self.threads)
            self._check_same_latents(path, self._encoder.latent_spec)
        return self._encoder

    # --- the loop ------------------------------------------------------------------------

    def check_base(self, base_latents: Any) -> np.ndarray:
        C = self.latent_spec.channels
        return as_input_array(self.step.path, "base_latents", base_latents, (None, C, None, None, None),
                              f"[B, {C}, t, h, w]")

    def target_size(self, base_latents: Any) -> tuple[int, int, int]:
        """`(T, H, W)` of the target latent for base latents `[B, C, t, h, w]`."""
        shape = np.shape(base_latents)
        size = target_latent_size(self.mode, self.factor, tuple(shape[2:5]))
        p = self.info.patch_size
        if size[1] % p or size[2] % p:
            raise ValueError(f"target latent size {size[1]}x{size[2]} is not divisible by the DiT's patch_size={p} "
                             f"(input of {self.step.path})")
        return size

    def work_units(self, base_latents: Any) -> int:
        """Total progress units of `decode`: DDIM steps over all pieces plus VAE tiles."""
        s = self.settings
        size = self.target_size(base_latents)
        pieces = count_pieces(size, s.window_frames, s.window_overlap, s.tile_size, s.tile_overlap)
        return pieces * self.steps + self._vae_tiles(size)

    def _vae_tiles(self, size: tuple[int, int, int]) -> int:
        s = self.settings
        _, H, W = size
        if s.vae_tile_size is None or (H <= s.vae_tile_size and W <= s.vae_tile_size):
            return 1
        return len(tile_starts(H, s.vae_tile_size, s.vae_tile_overlap)) * len(tile_starts(W, s.vae_tile_size, s.vae_tile_overlap))

    def condition(self, base_latents: Any) -> np.ndarray:
        """The DiT's condition `base_up` (scaled latent space, target size) of unscaled base latents."""
        base = self.check_base(base_latents)
        return upsample_base_latent(base * self.info.latent_scale, self.target_size(base))

    def denoise_step(self, x_t: np.ndarray, base_up: np.ndarray, t: np.ndarray, t_next: np.ndarray) -> np.ndarray:
        """One DDIM step in the scaled latent space (plain call of the exported graph)."""
        feeds = {"x_t": np.ascontiguousarray(x_t, np.float32), "base_up": np.ascontiguousarray(base_up, np.float32),
                 "t": np.asarray(t, np.int64), "t_next": np.asarray(t_next, np.int64)}
        return self.step.run(feeds)[0]

    def _refine_piece(self, base_up: np.ndarray, noise: np.ndarray, grid: np.ndarray,
                      on_step: Callable[[], None]) -> np.ndarray:
        """The DDIM chain of one window/tile: its condition bound once, `x_t` kept on the device."""
        runner = self.step_runner
        if not runner.binding:
            return ddim_refine(self.denoise_step, base_up, noise, grid, on_step)
        B = noise.shape[0]
        call = runner.bind({"base_up": base_up})
        timesteps = [runner.put(np.full((B,), g, np.int64)) for g in grid]
        x = runner.put(noise)
        for k in range(len(grid) - 1):
            call.bind("x_t", x)
            call.bind("t", timesteps[k])
            call.bind("t_next", timesteps[k + 1])
            x = call.run(keep=("x_next",))["x_next"]
            on_step()
        return runner.fetch(x)

    def refine(self, base_latents: Any, seed: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
        """Base latents `[B, C, t, h, w]` -> target latents, deterministic for a given `seed`."""
        base_up = self.condition(base_latents)
        noise = initial_noise(base_up.shape, seed) * np.float32(self.settings.temperature)
        grid = ddim_timestep_grid(self.info.num_timesteps, self.steps)
        total, done = self.work_units(base_latents), 0

        def on_step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        s = self.settings
        refined = refine_in_pieces(
            lambda base, eps: self._refine_piece(base, eps, grid, on_step),
            base_up, noise, s.window_frames, s.window_overlap, s.tile_size, s.tile_overlap,
        )
        return (refined / self.info.latent_scale).astype(np.float32)

    def decode_latents(self, latents: Any, progress: Callable[[], None] | None = None) -> np.ndarray:
        """Target latents `[B, C, T, H, W]` -> video `[B, 3, 1 + tc (T - 1), H s, W s]`, clamped to [-1, 1]."""
        s = self.settings
        z = self.vae_decoder.check_latents(latents)

        def decode_tile(tile: np.ndarray) -> np.ndarray:
            video = self.vae_decoder.decode(tile, s.vae_chunk_frames, clamp=False)
            if progress is not None:
                progress()
            return video

        if s.vae_tile_size is None:
            video = decode_tile(z)
        else:
            scale = Fraction(self.latent_spec.spatial_compression)
            video = tiled_map(decode_tile, z, s.vae_tile_size, s.vae_tile_overlap, scale)
        return self.vae_decoder.clamp(video)

    def decode(self, base_latents: Any, seed: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
        """Base latents -> video `[B, 3, N, H, W]` in [-1, 1]: 4x the size (sr) or the frame rate (fps)."""
        latents = self.refine(base_latents, seed, progress)
        total = self.work_units(base_latents)
        done = total - self._vae_tiles(self.target_size(base_latents))

        def on_tile() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        return self.decode_latents(latents, on_tile)

    def encode(self, video: Any) -> np.ndarray:
        """VAE latents of a video `[B, 3, 1 + tc k, H, W]` in [-1, 1] (the base for `decode`)."""
        return self.encoder.encode(video)

    def upscale(self, video: Any, seed: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
        """A video -> the 4x larger (sr) or 4x smoother (fps) video, in [-1, 1]."""
        return self.decode(self.encode(video), seed, progress)
