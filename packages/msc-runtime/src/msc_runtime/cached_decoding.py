"""The chunk loop shared by the two decoders whose graphs carry an explicit cache.

A decoder graph maps `(latents, cache_in_0..n-1) -> (video, cache_out_0..n-1)`: the
cache is what the decoder remembers of earlier latent frames of the clip (a causal
convolution's last input frames, or an AR-VAE's keys and values). A clip starts from the
graph's empty cache (`zero_cache`); each call's `cache_out_*` is the next call's
`cache_in_*`, so decoding chunk by chunk equals decoding the whole clip and memory does
not grow with its length.

`decode_chunk(latents, cache)` is the public step with numpy caches (`cache=None`: clip
start), the protocol msc_core.pipeline's `decoder="onnx"` calls. `stream(chunks)` and
`decode` keep the cache where the session computes (on the GPU with CUDA, `binding`).
Decoded frames are clamped to the graph's `msc.output_range` (the graph itself does not
clamp) unless `clamp=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from msc_runtime.binding import DeviceValue, GraphRunner
from msc_runtime.graphs import GraphInfo, LatentSpec, cache_names
from msc_runtime.input_checks import check_positive_int
from msc_runtime.sessions import GraphSession, ProviderEntry, open_session


class CachedDecoder:
    """Base of `VAEDecoder` and `ARVAEDecoder`: the chunk loop over an explicit cache."""

    KIND: str = ""
    LATENT_FRAME_AXIS: int = 2

    def __init__(
        self,
        path: str | Path | GraphSession,
        providers: str | Sequence[ProviderEntry] | None = None,
        threads: int | None = None,
        binding: bool | None = None,
    ) -> None:
        self.graph = path if isinstance(path, GraphSession) else open_session(path, self.KIND, providers, threads)
        if self.graph.kind != self.KIND:
            raise ValueError(f"{self.graph.path} holds a {self.graph.kind!r} graph; {type(self).__name__} runs {self.KIND!r}")
        self.runner = GraphRunner(self.graph, binding)
        self.cache_in, self.cache_out = cache_names(self.info.cache_count)

    # --- what the graph is ---------------------------------------------------------------

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
        """The provider the session runs on (e.g. CPUExecutionProvider after a CUDA fallback)."""
        return self.graph.provider

    @property
    def output_range(self) -> tuple[float, float]:
        return self.info.output_range

    # --- subclass hooks ------------------------------------------------------------------

    def check_latents(self, latents: Any, name: str = "latents") -> np.ndarray:
        raise NotImplementedError

    def zero_cache(self, latents: np.ndarray) -> list[np.ndarray]:
        """The cache of a clip start, for latents shaped like `latents`."""
        raise NotImplementedError

    def check_cache(self, cache: Any, latents: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def drop_first_frames(self) -> int:
        """Frames of a clip start's first output that are not part of the clip."""
        return 0

    def _same_clip(self, first: np.ndarray, z: np.ndarray, index: int) -> None:
        """Later chunks of a clip keep the first chunk's sizes, except the frame axis."""
        a = list(first.shape)
        b = list(z.shape)
        a[self.LATENT_FRAME_AXIS] = b[self.LATENT_FRAME_AXIS] = -1
        if a != b:
            raise ValueError(f"latent chunk {index} has shape {z.shape}, but the clip started with {first.shape}: "
                             f"chunks of a clip differ in frames only (axis {self.LATENT_FRAME_AXIS}) "
                             f"(input of {self.path})")

    # --- decoding ------------------------------------------------------------------------

    def clamp(self, video: np.ndarray) -> np.ndarray:
        low, high = self.output_range
        return np.clip(video, low, high)

    def denormalize(self, latents: Any) -> np.ndarray:
        """Generated (normalised) latents -> the tokenizer's latents, `x * scale + shift` per channel,
        with the graph's `msc.latent_normalization` (a ValueError when it has none)."""
        norm = self.info.latent_normalization
        z = self.check_latents(latents)
        if norm is None:
            raise ValueError(f"{self.path} carries no 'msc.latent_normalization' (it was not exported from a "
                             "pipeline): its latents are the tokenizer's own, decode them as they are")
        axis = 1 if self.latent_spec.layout == "grid" else -1
        view = [1] * z.ndim
        view[axis] = -1
        scale = np.asarray(norm["scale"], np.float32).reshape(view)
        shift = np.asarray(norm["shift"], np.float32).reshape(view)
        return (z * scale + shift).astype(np.float32)

    def _step(self, z: np.ndarray, cache: Sequence[DeviceValue], keep_on_device: bool) -> tuple[np.ndarray, list]:
        feeds = {"latents": z, **dict(zip(self.cache_in, cache))}
        outputs = self.runner.run(feeds, keep=self.cache_out if keep_on_device else ())
        return outputs["video"], [outputs[name] for name in self.cache_out]

    def decode_step(self, latents: Any, cache: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The raw graph call: frames of `latents` (a clip start's extra frames not dropped, not
        clamped) and the next cache."""
        z = self.check_latents(latents)
        return self._step(z, self.check_cache(cache, z), keep_on_device=False)

    def decode_chunk(
        self, latents: Any, cache: Sequence[Any] | None = None, clamp: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The next latent frames of a clip -> their video frames `[B, 3, n, H, W]` and the next
        cache (numpy arrays); `cache=None` starts a clip."""
        z = self.check_latents(latents)
        start = cache is None
        state = self.zero_cache(z) if start else self.check_cache(cache, z)
        video, state = self._step(z, state, keep_on_device=False)
        if start:
            video = video[:, :, self.drop_first_frames():]
        return (self.clamp(video) if clamp else video), state

    def stream(self, latent_chunks: Iterable[Any], clamp: bool = True) -> Iterator[np.ndarray]:
        """Decode a clip whose latent frames arrive in chunks: yields each chunk's video frames
        as soon as they are decoded (the cache stays on the session's device in between)."""
        first: np.ndarray | None = None
        cache: list[DeviceValue] = []
        for index, chunk in enumerate(latent_chunks):
            z = self.check_latents(chunk, "latents" if index == 0 else f"latent chunk {index}")
            if first is None:
                first = z
                cache = [self.runner.put(c) for c in self.zero_cache(z)]
            else:
                self._same_clip(first, z, index)
            video, cache = self._step(z, cache, keep_on_device=True)
            if index == 0:
                video = video[:, :, self.drop_first_frames():]
            yield self.clamp(video) if clamp else video

    def decode(self, latents: Any, chunk_frames: int | None = None, clamp: bool = True) -> np.ndarray:
        """A whole clip's latents -> its video `[B, 3, N, H, W]`, decoded `chunk_frames` latent
        frames at a time (None: one call)."""
        z = self.check_latents(latents)
        T = z.shape[self.LATENT_FRAME_AXIS]
        chunk = check_positive_int("chunk_frames", chunk_frames) or T
        index = [slice(None)] * z.ndim

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, T, chunk):
                index[self.LATENT_FRAME_AXIS] = slice(start, start + chunk)
                yield np.ascontiguousarray(z[tuple(index)])

        return np.concatenate(list(self.stream(chunks(), clamp)), axis=2)
