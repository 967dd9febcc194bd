"""The CausalVAE3D graphs in ONNX Runtime: the chunked decoder and the encoder.

`VAEDecoder` runs `vae3d_decoder` (one causal chunk, `CausalVAE3D.decode_step`): the cache
is, per causal convolution, its last `k_t - 1` input frames, `[B, channels, frames,
h * height_scale, w * width_scale]` as listed in `msc.cache`; a clip start is the all-zero
cache, and the first chunk's output then starts with `tc - 1` copies of frame 0 that the
runner drops (`msc.chunk_rule`), as `CausalVAE3D.decode_chunk` does. Latents `[B, C, T, h, w]`
decode to `[B, 3, 1 + tc (T - 1), h s, w s]`, clamped to `msc.output_range`.

`VAEEncoder` runs `vae3d_encoder`: a video `[B, 3, 1 + tc k, H, W]` in [-1, 1] (H, W
multiples of the spatial compression `s`) -> latents `[B, C, 1 + k, H / s, W / s]`, the
posterior mean (`CausalVAE3D.encode`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msc_runtime.cached_decoding import CachedDecoder
from msc_runtime.graphs import VAE_DECODER, VAE_ENCODER, GraphInfo, LatentSpec
from msc_runtime.input_checks import as_input_array
from msc_runtime.sessions import GraphSession, ProviderEntry, open_session


class VAEDecoder(CachedDecoder):
    """The exported `CausalVAE3D` decoder: whole, chunked (explicit causal cache) or streaming."""

    KIND = VAE_DECODER
    LATENT_FRAME_AXIS = 2

    @property
    def cache_spec(self) -> tuple[dict[str, int], ...]:
        return self.info.vae_cache

    def check_latents(self, latents: Any, name: str = "latents") -> np.ndarray:
        C = self.latent_spec.channels
        return as_input_array(self.path, name, latents, (None, C, None, None, None), f"[B, {C}, T, h, w]")

    def zero_cache(self, latents: np.ndarray) -> list[np.ndarray]:
        B, _, _, h, w = latents.shape
        return [np.zeros(self._cache_shape(c, B, h, w), np.float32) for c in self.cache_spec]

    @staticmethod
    def _cache_shape(c: dict[str, int], batch: int, h: int, w: int) -> tuple[int, ...]:
        return batch, c["channels"], c["frames"], h * c["height_scale"], w * c["width_scale"]

    def check_cache(self, cache: Any, latents: np.ndarray) -> list[np.ndarray]:
        """A cache from a previous call, checked against the metadata for these latents."""
        n = len(self.cache_spec)
        if not isinstance(cache, (list, tuple)) or len(cache) != n:
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {n} arrays a previous call returned, got {got} (input of {self.path})")
        B, _, _, h, w = latents.shape
        checked = []
        for i, (state, c) in enumerate(zip(cache, self.cache_spec)):
            shape = self._cache_shape(c, B, h, w)
            layout = f"{list(shape)} (for latents {list(latents.shape)})"
            checked.append(as_input_array(self.path, f"cache[{i}]", state, shape, layout, allow_empty=True))
        return checked

    def drop_first_frames(self) -> int:
        return self.info.drop_first_frames

    def decode(self, latents: Any, chunk_latent_frames: int | None = None, clamp: bool = True) -> np.ndarray:
        """Latents `[B, C, T, h, w]` -> video `[B, 3, 1 + tc (T - 1), h s, w s]` in the output range,
        `chunk_latent_frames` latent frames per graph call (None: the whole clip in one call)."""
        return super().decode(latents, chunk_latent_frames, clamp)


class VAEEncoder:
    """The exported `CausalVAE3D` encoder: video in [-1, 1] -> latents (the posterior mean)."""

    def __init__(
        self,
        path: str | Path | GraphSession,
        providers: str | Sequence[ProviderEntry] | None = None,
        threads: int | None = None,
    ) -> None:
        self.graph = path if isinstance(path, GraphSession) else open_session(path, VAE_ENCODER, providers, threads)
        if self.graph.kind != VAE_ENCODER:
            raise ValueError(f"{self.graph.path} holds a {self.graph.kind!r} graph; VAEEncoder runs {VAE_ENCODER!r}")

    @property
    def path(self) -> Path:
        return self.graph.path

    @property
    def info(self) -> GraphInfo:
        return self.graph.info

    @property
    def latent_spec(self) -> LatentSpec:
        return self.info.latent_spec

    @property
    def provider(self) -> str:
        return self.graph.provider

    def check_video(self, video: Any) -> np.ndarray:
        spec = self.latent_spec
        x = as_input_array(self.path, "video", video, (None, 3, None, None, None), "[B, 3, N, H, W]",
                           pixel_range=self.info.input_range)
        _, _, N, H, W = x.shape
        tc, s = spec.temporal_compression, spec.spatial_compression
        first = 1 if spec.causal_first_frame else 0  # a causal VAE encodes frame 0 alone
        if N < first or (N - first) % tc or N == 0:
            below = first + max(N - first, 0) // tc * tc
            nearest = f"{below} or {below + tc}" if below > 0 else f"{below + tc}"
            rule = f"1 + {tc} k" if first else f"{tc} k"
            raise ValueError(f"video has {N} frames; the encoder reads {rule} frames, nearest valid: {nearest} "
                             f"(input of {self.path})")
        if H % s or W % s:
            raise ValueError(f"video frames are {H}x{W}; the encoder needs sides divisible by {s}, e.g. "
                             f"{H // s * s or s}x{W // s * s or s} (input of {self.path})")
        return x

    def encode(self, video: Any) -> np.ndarray:
        """Video `[B, 3, 1 + tc k, H, W]` in [-1, 1] -> latents `[B, C, 1 + k, H / s, W / s]`."""
        x = self.check_video(video)
        return self.graph.run({"video": x})[0]
