"""`reference` backend: the dense boolean masks of `masks.py` + `scaled_dot_product_attention`.

The oracle every other backend is tested against. It materialises `(Tq*H*W, Tk*H*W)`
masks, so it is for tests and small inputs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msc_core.attention.masks import high_res_mask, low_res_mask


def reference_high_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, temporal_window: int, growth: int = 0
) -> torch.Tensor:
    """q `(B, h, Tq, H, W, D)`, k/v `(B, h, Tk, H, W, D)` (queries = last Tq key frames)."""
    B, heads, Tq, H, W, D = q.shape
    Tk = k.shape[2]
    mask = high_res_mask(Tq, Tk, H, W, window, temporal_window, q.device, growth)
    out = F.scaled_dot_product_attention(
        q.reshape(B, heads, Tq * H * W, D),
        k.reshape(B, heads, Tk * H * W, D),
        v.reshape(B, heads, Tk * H * W, D),
        attn_mask=mask,
    )
    return out.reshape(B, heads, Tq, H, W, D)


def reference_low_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temporal_stride: int, anchored: bool = False
) -> torch.Tensor:
    """q `(B, h, Tq, P, D)`, k/v `(B, h, Tk, P, D)` over P pooled tokens per frame."""
    B, heads, Tq, P, D = q.shape
    Tk = k.shape[2]
    mask = low_res_mask(Tq, Tk, P, temporal_stride, q.device, anchored)
    out = F.scaled_dot_product_attention(
        q.reshape(B, heads, Tq * P, D),
        k.reshape(B, heads, Tk * P, D),
        v.reshape(B, heads, Tk * P, D),
        attn_mask=mask,
    )
    return out.reshape(B, heads, Tq, P, D)
