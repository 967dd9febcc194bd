"""The AR-VAE decoder graph in ONNX Runtime, streaming frames with its key/value cache.

`arvae_decoder` is `ARVAE.forward_decoder`: latents `[B, T, L, D]` (L tokens of D dims per
frame) and, per decoder layer, the keys and values of the past frames' latent tokens
(`cache_in_0..2 depth - 1`, each `[B, heads, P L, head_dim]` for P past frames; P = 0 at a
clip start) -> video `[B, 3, T, H, W]` and the cache including these frames. Frames are
clamped to `msc.output_range`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msc_runtime.cached_decoding import CachedDecoder
from msc_runtime.graphs import ARVAE_DECODER
from msc_runtime.input_checks import as_input_array


class ARVAEDecoder(CachedDecoder):
    """The exported AR-VAE decoder: whole, chunked (key/value cache) or streaming."""

    KIND = ARVAE_DECODER
    LATENT_FRAME_AXIS = 1

    @property
    def cache_spec(self) -> dict[str, int]:
        assert self.info.arvae_cache is not None  # validate_metadata sets it for this kind
        return self.info.arvae_cache

    def check_latents(self, latents: Any, name: str = "latents") -> np.ndarray:
        spec = self.latent_spec
        L, D = spec.tokens_per_frame, spec.channels
        return as_input_array(self.path, name, latents, (None, None, L, D), f"[B, T, {L}, {D}]")

    def zero_cache(self, latents: np.ndarray) -> list[np.ndarray]:
        c = self.cache_spec
        empty = np.zeros((latents.shape[0], c["heads"], 0, c["head_dim"]), np.float32)
        return [empty] * (2 * c["layers"])

    def check_cache(self, cache: Any, latents: np.ndarray) -> list[np.ndarray]:
        c = self.cache_spec
        n, B = 2 * c["layers"], latents.shape[0]
        if not isinstance(cache, (list, tuple)) or len(cache) != n:
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {n} arrays a previous call returned, got {got} (input of {self.path})")
        shape = (B, c["heads"], None, c["head_dim"])
        layout = f"[B={B}, {c['heads']}, P*{c['tokens_per_frame']}, {c['head_dim']}] (P past frames)"
        checked: list[np.ndarray] = []
        for i, state in enumerate(cache):
            state = as_input_array(self.path, f"cache[{i}]", state, shape, layout, allow_empty=True)
            if state.shape[2] % c["tokens_per_frame"] or (checked and state.shape != checked[0].shape):
                raise ValueError(f"cache[{i}] must be {layout}, the same for every entry, got shape {state.shape} "
                                 f"(input of {self.path})")
            checked.append(state)
        return checked

    def decode(self, latents: Any, chunk_frames: int | None = None, clamp: bool = True) -> np.ndarray:
        """Latents `[B, T, L, D]` -> video `[B, 3, T, H, W]` in the output range, `chunk_frames`
        frames per graph call (None: the whole clip in one call)."""
        return super().decode(latents, chunk_frames, clamp)
