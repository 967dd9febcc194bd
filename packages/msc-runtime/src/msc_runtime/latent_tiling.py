"""Overlapping windows and tiles, blended in the overlaps, in numpy.

Ports of `msc_tokenizers.spatial_tiling` (`tile_starts`, `blend_ramp`, `tiled_map`: the
tiled VAE decode) and `msc_cascade.latent_windows` (`piece_spans`, `refine_in_pieces`,
`count_pieces`: the cascade's sliding temporal windows x spatial tiles). Inside an overlap
the weights ramp linearly and are normalised, so every output value is a convex
combination of the pieces covering it and a value covered by one piece is that piece's
value exactly; the last piece is flush with the border. Weights are float32, accumulated
in the same order as the PyTorch versions.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import numpy as np

# (base_up piece, noise piece) -> refined piece, all (B, C, t, h, w)
RefinePieceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` positions with at least `overlap` overlap covering `size`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def blend_ramp(length: int, ramp: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """Weights `[length]` (float32): 1 inside, rising linearly over `ramp` positions at the chosen ends."""
    weight = np.ones(length, np.float32)
    ramp = min(ramp, length)
    if ramp > 0:
        up = (np.arange(1, ramp + 1, dtype=np.float32) / np.float32(ramp + 1)).astype(np.float32)
        if ramp_start:
            weight[:ramp] = np.minimum(weight[:ramp], up)
        if ramp_end:
            weight[length - ramp:] = np.minimum(weight[length - ramp:], up[::-1])
    return weight


def piece_spans(size: int, piece: int | None, overlap: int) -> list[tuple[int, int]]:
    """`(start, stop)` of the pieces covering `0..size` (one piece when `piece` is None or >= size)."""
    if piece is None or piece >= size:
        return [(0, size)]
    if not 0 <= overlap < piece:
        raise ValueError(f"overlap must be in [0, {piece}) for pieces of {piece}, got {overlap}")
    return [(start, start + piece) for start in tile_starts(size, piece, overlap)]


def count_pieces(size: tuple[int, int, int], window_frames: int | None, window_overlap: int,
                 tile_size: int | None, tile_overlap: int) -> int:
    """How many pieces `refine_in_pieces` refines for a `(T, H, W)` volume."""
    T, H, W = size
    return (len(piece_spans(T, window_frames, window_overlap)) * len(piece_spans(H, tile_size, tile_overlap))
            * len(piece_spans(W, tile_size, tile_overlap)))


def refine_in_pieces(
    refine_piece: RefinePieceFn,
    base_up: np.ndarray,
    noise: np.ndarray,
    window_frames: int | None,
    window_overlap: int,
    tile_size: int | None,
    tile_overlap: int,
) -> np.ndarray:
    """Refine `(B, C, T, H, W)` in overlapping windows x tiles and blend the results."""
    if base_up.shape != noise.shape or base_up.ndim != 5:
        raise ValueError(f"base {base_up.shape} and noise {noise.shape} must be one (B, C, T, H, W) shape")
    _, _, T, H, W = base_up.shape
    t_spans = piece_spans(T, window_frames, window_overlap)
    h_spans = piece_spans(H, tile_size, tile_overlap)
    w_spans = piece_spans(W, tile_size, tile_overlap)
    if len(t_spans) * len(h_spans) * len(w_spans) == 1:
        return refine_piece(base_up, noise)
    out = np.zeros_like(base_up, dtype=np.float32)
    weight_sum = np.zeros((T, H, W), np.float32)
    for i, (t0, t1) in enumerate(t_spans):
        wt = blend_ramp(t1 - t0, window_overlap, i > 0, i < len(t_spans) - 1)
        for j, (h0, h1) in enumerate(h_spans):
            wh = blend_ramp(h1 - h0, tile_overlap, j > 0, j < len(h_spans) - 1)
            for k, (w0, w1) in enumerate(w_spans):
                ww = blend_ramp(w1 - w0, tile_overlap, k > 0, k < len(w_spans) - 1)
                piece = (slice(None), slice(None), slice(t0, t1), slice(h0, h1), slice(w0, w1))
                refined = refine_piece(np.ascontiguousarray(base_up[piece]), np.ascontiguousarray(noise[piece]))
                weight = wt[:, None, None] * wh[None, :, None] * ww[None, None, :]  # (t, h, w)
                out[piece] += refined * weight
                weight_sum[t0:t1, h0:h1, w0:w1] += weight
    return out / weight_sum


def tiled_map(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int, overlap: int,
              scale: Fraction | int) -> np.ndarray:
    """Apply `fn` to overlapping spatial tiles of `x [..., H, W]` and blend the outputs.

    `fn` maps `[..., tile, tile]` to `[..., tile * scale, tile * scale]`; `tile` and `overlap`
    are in input positions and must map to whole output positions."""
    scale = Fraction(scale)
    height, width = x.shape[-2:]
    for name, value in (("tile", tile), ("overlap", overlap)):
        if (value * scale).denominator != 1:
            raise ValueError(f"{name}={value} times scale {scale} is not a whole number of output pixels")
    if height <= tile and width <= tile:
        return fn(x)
    out_overlap = int(overlap * scale)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out: np.ndarray | None = None
    weight_sum: np.ndarray | None = None
    for r, h0 in enumerate(rows):
        for c, w0 in enumerate(cols):
            y = fn(np.ascontiguousarray(x[..., h0:h0 + tile, w0:w0 + tile]))
            th, tw = y.shape[-2:]
            oh, ow = int(h0 * scale), int(w0 * scale)
            if out is None:
                out = np.zeros((*y.shape[:-2], int(height * scale), int(width * scale)), y.dtype)
                weight_sum = np.zeros(out.shape[-2:], y.dtype)
            weight = (blend_ramp(th, out_overlap, r > 0, r < len(rows) - 1)[:, None]
                      * blend_ramp(tw, out_overlap, c > 0, c < len(cols) - 1)[None, :]).astype(y.dtype)
            out[..., oh:oh + th, ow:ow + tw] += y * weight
            weight_sum[oh:oh + th, ow:ow + tw] += weight
    assert out is not None and weight_sum is not None
    return out / weight_sum
