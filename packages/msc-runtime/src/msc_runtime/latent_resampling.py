"""Upsampling of a base latent to the cascade's target size, in numpy.

A port of `msc_cascade.dit.upsample_base_latent` with PyTorch's arithmetic (float32
source coordinates and weights, as `F.interpolate` on the CPU computes them):

- space: bilinear per frame, `align_corners=False` (sr mode);
- time: linear with the first and last latent frames aligned, `align_corners=True` (fps
  mode; one base frame is repeated).
"""

from __future__ import annotations

import numpy as np


def linear_weights(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(i0, i1, w0, w1)` of linear interpolation from `in_size` to `out_size` samples:
    output `k` is `w0[k] x[i0[k]] + w1[k] x[i1[k]]` (PyTorch's source index rule)."""
    f32 = np.float32
    dst = np.arange(out_size, dtype=f32)
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
        src = scale * dst
    else:
        scale = f32(in_size) / f32(out_size)
        src = np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    w0 = (f32(1) - w1).astype(f32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, w0, w1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`x [..., h, w]` -> `[..., H, W]`, bilinear, `align_corners=False`."""
    H, W = size
    r0, r1, a0, a1 = linear_weights(x.shape[-2], H, align_corners=False)
    c0, c1, b0, b1 = linear_weights(x.shape[-1], W, align_corners=False)
    a0, a1 = a0[:, None], a1[:, None]
    top = x[..., r0, :]
    bottom = x[..., r1, :]
    return a0 * (b0 * top[..., c0] + b1 * top[..., c1]) + a1 * (b0 * bottom[..., c0] + b1 * bottom[..., c1])


def resize_linear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear resampling of `axis` to `size` samples, `align_corners=True` (ends aligned)."""
    x = np.moveaxis(x, axis, -1)
    if x.shape[-1] == 1:
        out = np.repeat(x, size, axis=-1)
    else:
        i0, i1, w0, w1 = linear_weights(x.shape[-1], size, align_corners=True)
        out = w0 * x[..., i0] + w1 * x[..., i1]
    return np.moveaxis(out, -1, axis)


def upsample_base_latent(base: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Resize a base latent `(B, C, t, h, w)` to `(B, C, T, H, W)` (float32)."""
    T, H, W = size
    x = np.asarray(base, dtype=np.float32)
    _, _, t, h, w = x.shape
    if (h, w) != (H, W):
        x = resize_bilinear(x, (H, W))
    if t != T:
        x = resize_linear(x, T, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)
