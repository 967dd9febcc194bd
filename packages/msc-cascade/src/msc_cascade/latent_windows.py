"""Sliding temporal windows and spatial tiles over a latent volume, blended in the overlaps.

A long or large clip is refined piece by piece: windows of `window_frames` latent frames
and tiles of `tile_size x tile_size` latent positions, overlapping by `*_overlap`. Each
piece is refined on its own (same slice of the clip's noise, so the result is fixed by
the seed), then the pieces are cross-faded: inside an overlap the weights ramp linearly
(`msc_tokenizers.spatial_tiling.blend_ramp`) and are normalised, so every output value is
a convex combination of the pieces that cover it, and a value covered by one piece is
that piece's value exactly. Window and tile starts are `spatial_tiling.tile_starts`
(the last piece is flush with the border).
"""

from __future__ import annotations

from typing import Callable

import torch

from msc_tokenizers.spatial_tiling import blend_ramp, tile_starts

# (base_up piece, noise piece) -> refined piece, all (B, C, t, h, w)
RefinePieceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def piece_spans(size: int, piece: int | None, overlap: int) -> list[tuple[int, int]]:
    """`(start, stop)` of the pieces covering `0..size` (one piece when `piece` is None or >= size)."""
    if piece is None or piece >= size:
        return [(0, size)]
    if not 0 <= overlap < piece:
        raise ValueError(f"overlap must be in [0, {piece}) for pieces of {piece}, got {overlap}")
    return [(start, start + piece) for start in tile_starts(size, piece, overlap)]


def crossfade_weights(spans: list[tuple[int, int]], index: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Weights `[length]` of piece `index`: linear ramps over `overlap` towards its neighbours."""
    start, stop = spans[index]
    return blend_ramp(stop - start, overlap, index > 0, index < len(spans) - 1, device)


def refine_in_pieces(
    refine_piece: RefinePieceFn,
    base_up: torch.Tensor,
    noise: torch.Tensor,
    window_frames: int | None,
    window_overlap: int,
    tile_size: int | None,
    tile_overlap: int,
) -> torch.Tensor:
    """Refine `(B, C, T, H, W)` in overlapping windows x tiles and blend the results."""
    if base_up.shape != noise.shape or base_up.ndim != 5:
        raise ValueError(f"base {tuple(base_up.shape)} and noise {tuple(noise.shape)} must be one (B, C, T, H, W) shape")
    _, _, T, H, W = base_up.shape
    t_spans = piece_spans(T, window_frames, window_overlap)
    h_spans = piece_spans(H, tile_size, tile_overlap)
    w_spans = piece_spans(W, tile_size, tile_overlap)
    if len(t_spans) * len(h_spans) * len(w_spans) == 1:
        return refine_piece(base_up, noise)
    out = torch.zeros_like(base_up)
    weight_sum = base_up.new_zeros(T, H, W)
    for i, (t0, t1) in enumerate(t_spans):
        wt = crossfade_weights(t_spans, i, window_overlap, base_up.device)
        for j, (h0, h1) in enumerate(h_spans):
            wh = crossfade_weights(h_spans, j, tile_overlap, base_up.device)
            for k, (w0, w1) in enumerate(w_spans):
                ww = crossfade_weights(w_spans, k, tile_overlap, base_up.device)
                piece = (slice(None), slice(None), slice(t0, t1), slice(h0, h1), slice(w0, w1))
                refined = refine_piece(base_up[piece], noise[piece])
                weight = (wt[:, None, None] * wh[None, :, None] * ww[None, None, :]).to(out.dtype)  # (t, h, w)
                out[piece] += refined * weight
                weight_sum[t0:t1, h0:h1, w0:w1] += weight
    return out / weight_sum


def count_pieces(size: tuple[int, int, int], window_frames: int | None, window_overlap: int,
                 tile_size: int | None, tile_overlap: int) -> int:
    """How many pieces `refine_in_pieces` refines for a `(T, H, W)` volume (for progress bars)."""
    T, H, W = size
    return (len(piece_spans(T, window_frames, window_overlap)) * len(piece_spans(H, tile_size, tile_overlap))
            * len(piece_spans(W, tile_size, tile_overlap)))
