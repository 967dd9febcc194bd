"""Spatial tiling with blended overlaps, for encoding/decoding frames too large to fit.

As diffusers' `enable_tiling()`: the frame is cut into overlapping square tiles, each
tile goes through the network alone, and the outputs are averaged in the overlaps
with weights that ramp linearly towards each tile's inner edges, so no seam shows.
Tiling changes the result near tile borders (each tile sees zero padding where the
whole frame would show its neighbours); the tokenizers document the tolerance.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels with at least `overlap` overlap covering `size`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]  # the last tile is flush with the border


def blend_ramp(length: int, ramp: int, ramp_start: bool, ramp_end: bool, device: torch.device) -> torch.Tensor:
    """Weights `[length]`: 1 inside, rising linearly over `ramp` positions at the chosen ends."""
    weight = torch.ones(length, device=device)
    ramp = min(ramp, length)
    if ramp > 0:
        up = torch.arange(1, ramp + 1, device=device, dtype=weight.dtype) / (ramp + 1)
        if ramp_start:
            weight[:ramp] = torch.minimum(weight[:ramp], up)
        if ramp_end:
            weight[length - ramp:] = torch.minimum(weight[length - ramp:], up.flip(0))
    return weight


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: Fraction,
) -> torch.Tensor:
    """Apply `fn` to overlapping spatial tiles of `x` `[..., H, W]` and blend the outputs.

    `fn` maps a `[..., tile, tile]` input to `[..., tile * scale, tile * scale]` (any
    leading dims); `scale` is e.g. `Fraction(1, 8)` for an encoder, `8` for a decoder.
    `tile` and `overlap` are in input pixels and must map to whole output pixels.
    """
    height, width = x.shape[-2:]
    for name, value in (("tile", tile), ("overlap", overlap)):
        if (value * scale).denominator != 1:
            raise ValueError(f"{name}={value} times scale {scale} is not a whole number of output pixels")
    if height <= tile and width <= tile:
        return fn(x)
    out_overlap = int(overlap * scale)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    for r, h0 in enumerate(rows):
        for c, w0 in enumerate(cols):
            y = fn(x[..., h0:h0 + tile, w0:w0 + tile])
            th, tw = y.shape[-2:]
            oh, ow = int(h0 * scale), int(w0 * scale)
            if out is None:
                out = y.new_zeros(*y.shape[:-2], int(height * scale), int(width * scale))
                weight_sum = y.new_zeros(out.shape[-2:])
            weight = (
                blend_ramp(th, out_overlap, r > 0, r < len(rows) - 1, y.device)[:, None]
                * blend_ramp(tw, out_overlap, c > 0, c < len(cols) - 1, y.device)[None, :]
            ).to(y.dtype)  # (th, tw)
            out[..., oh:oh + th, ow:ow + tw] += y * weight
            weight_sum[oh:oh + th, ow:ow + tw] += weight
    return out / weight_sum
