"""FLOP counts of MSC attention vs dense frame-causal attention (paper §3.2, complexity).

`msc_attention_flops` and `dense_frame_causal_flops` count the forward FLOPs of the real
modules from the shapes of the ops they actually run (`torch.utils.flop_counter` over
meta tensors: nothing is computed or allocated), so halo waste of the tiled backend
and the masked-out half of dense attention are counted as they are executed.
`paper_flops_estimate` is the closed form printed in §3.2, kept beside it for
comparison. Note its conventions: the projection terms count 2 FLOPs per
multiply-add (`6bsh^2` for QKV) while the attention terms `2bs^2h` count one per
multiply-add, and the High-Res term divides by `w^2 v` instead of multiplying by it;
so it is an order-of-magnitude guide, not a count. `exact_flops_estimate` is the
corrected closed form beside it (see its docstring for every deviation).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from msc_core.attention import MSCAttention, MSCAttentionConfig
from msc_core.attention.masks import light_cone_windows
from msc_core.frame_causal_attention import FrameCausalAttention, FrameCausalAttentionConfig


def _module_flops(counter: FlopCounterMode, name: str) -> int:
    return int(sum(counter.get_flop_counts().get(name, {}).values()))


def msc_attention_flops(
    config: MSCAttentionConfig, batch: int, frames: int, height: int, width: int, backend: str = "tiled"
) -> dict[str, int]:
    """Forward FLOPs of one `MSCAttention` layer per stage, with the given backend's op shapes."""
    if backend not in ("tiled", "reference"):
        raise ValueError(f"FLOPs are counted on meta tensors with backend 'tiled' or 'reference', got {backend!r}")
    with torch.device("meta"):
        module = MSCAttention(config.replace(backend=backend))
        x = torch.empty(batch, frames, height, width, config.dim)
        noise = torch.zeros(batch, frames)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x, noise)
    name = "MSCAttention"
    flops = {
        "high_res_projection": _module_flops(counter, f"{name}.high_res.qkv"),
        "low_res_projection": _module_flops(counter, f"{name}.low_res.qkv"),
        "gate": _module_flops(counter, f"{name}.gate"),
        "output_projection": _module_flops(counter, f"{name}.proj"),
    }
    flops["high_res_attention"] = _module_flops(counter, f"{name}.high_res") - flops["high_res_projection"]
    flops["low_res_attention"] = _module_flops(counter, f"{name}.low_res") - flops["low_res_projection"]
    flops["total"] = int(counter.get_total_flops())
    return flops


def high_res_window_flops(config: MSCAttentionConfig, batch: int, frames: int, height: int, width: int) -> int:
    """FLOPs of the High-Res attention if every query computed only its own window.

    Each query at frame t meets, in each of its `min(v, t + 1)` key frames at lag l,
    `min(w_l, H) * min(w_l, W)` keys (`w_l = w + 2 * growth * l`, the light cone; `w` without
    it): QK^T and AV cost `2 * 2 * head_dim` FLOPs per query-key pair per head.
    """
    pairs = _high_res_pairs(frames, height, width, config.window, config.temporal_window, config.light_cone_growth)
    return 4 * batch * config.num_high_res_heads * config.head_dim * pairs


def _high_res_pairs(T: int, H: int, W: int, window: int, temporal_window: int, growth: int) -> int:
    windows = light_cone_windows(window, temporal_window, growth)
    per_lag = [min(w_l, H) * min(w_l, W) for w_l in windows]
    return H * W * sum(sum(per_lag[: min(temporal_window, t + 1)]) for t in range(T))


def high_res_halo_ratio(config: MSCAttentionConfig, batch: int, frames: int, height: int, width: int) -> float:
    """FLOPs the tiled backend's High-Res attention runs over those of the window alone."""
    tiled = msc_attention_flops(config, batch, frames, height, width)["high_res_attention"]
    return tiled / high_res_window_flops(config, batch, frames, height, width)


def dense_frame_causal_flops(
    batch: int, frames: int, height: int, width: int, dim: int, num_heads: int
) -> dict[str, int]:
    """Forward FLOPs of dense frame-causal attention (`FrameCausalAttention`), per stage."""
    with torch.device("meta"):
        module = FrameCausalAttention(FrameCausalAttentionConfig(dim=dim, num_heads=num_heads))
        x = torch.empty(batch, frames, height, width, dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    name = "FrameCausalAttention"
    projection = _module_flops(counter, f"{name}.qkv")
    output = _module_flops(counter, f"{name}.proj")
    total = int(counter.get_total_flops())
    return {
        "projection": projection,
        "attention": total - projection - output,
        "output_projection": output,
        "total": total,
    }


def paper_flops_estimate(
    batch: int,
    frames: int,
    height: int,
    width: int,
    dim: int,
    window: int,
    temporal_window: int,
    pool: int,
    temporal_stride: int,
) -> dict[str, float]:
    """The §3.2 closed forms with b=batch, s=T*H*W, h=dim, heads split in halves."""
    b, s, h = batch, frames * height * width, dim
    w, v, r, d = window, temporal_window, pool, temporal_stride
    dense = 8 * b * s * h**2 + 2 * b * s**2 * h
    high = 2 * b * s * h**2 + b * s**2 * h / (2 * w**2 * v)
    low = 2 * b * s * h**2 / r**2 + b * s**2 * h / (2 * r**2 * d)
    return {"dense": float(dense), "high_res": high, "low_res": low, "msc": high + low, "msc_over_dense": (high + low) / dense}


def exact_flops_estimate(
    batch: int,
    frames: int,
    height: int,
    width: int,
    dim: int,
    num_heads: int,
    window: int,
    temporal_window: int,
    pool: int,
    temporal_stride: int,
    high_res_head_ratio: float = 0.5,
    light_cone_growth: int = 0,
    stride_anchor: str = "query",
) -> dict[str, float]:
    """Forward FLOPs of MSC attention and dense frame-causal attention if every query
    computed exactly the keys its mask allows (2 FLOPs per multiply-add throughout).

    Deviations from the paper's §3.2 closed form (`paper_flops_estimate`), written down:
    1. one convention: 2 FLOPs per multiply-add everywhere (the paper counts projections
       in FLOPs, `6bsh^2` for QKV, but attention in multiply-adds, `2bs^2h`);
    2. the branches are as wide as their heads (`C_hi = round(heads * ratio) * head_dim`,
       `C_lo` the rest), fed by the full `h`-channel input; the paper assumes each branch
       sees an `h/2`-wide input;
    3. High-Res attention multiplies by the window, `s * v * w^2` query-key pairs (borders
       clamp windows to the frame), where the paper divides `s^2` by `w^2 v`;
    4. Low-Res keys are pooled as well as queries, and frame t sees the
       `floor(t / d) + 1` frames `t, t-d, ...`: `P^2 * sum_t (floor(t/d) + 1)` pairs with
       `P = ceil(H/r) * ceil(W/r)`; the paper's total divides `s^2` by `r^2` once, which
       contradicts its own middle term (`s/r^2` queries against `s/r^2` keys); with the
       anchored stride frame t sees itself and the `ceil(t / d)` anchors before it;
    5. dense frame-causal attention counts its causal pairs `(HW)^2 T(T+1)/2`, not `s^2`;
    6. the output projection (`2 b s h^2`) is counted for both; the gates (an MLP on the
       noise embedding, per frame) are left out.
    """
    b, T, H, W, h = batch, frames, height, width, dim
    head_dim = h // num_heads
    c_hi = round(num_heads * high_res_head_ratio) * head_dim
    c_lo = h - c_hi
    s = T * H * W
    P = -(-H // pool) * -(-W // pool)
    hi_pairs = _high_res_pairs(T, H, W, window, temporal_window, light_cone_growth)
    if stride_anchor == "fixed":
        lo_pairs = P * P * sum(1 + -(-t // temporal_stride) for t in range(T))
    else:
        lo_pairs = P * P * sum(t // temporal_stride + 1 for t in range(T))
    out = {
        "high_res_projection": 2.0 * b * s * h * 3 * c_hi,
        "high_res_attention": 4.0 * b * c_hi * hi_pairs,
        "low_res_projection": 2.0 * b * T * P * h * 3 * c_lo,
        "low_res_attention": 4.0 * b * c_lo * lo_pairs,
        "output_projection": 2.0 * b * s * h * h,
    }
    out["msc"] = sum(out.values())
    dense_pairs = (H * W) ** 2 * T * (T + 1) / 2
    out["dense"] = 2.0 * b * s * h * 3 * h + 4.0 * b * h * dense_pairs + 2.0 * b * s * h * h
    out["msc_over_dense"] = out["msc"] / out["dense"]
    return out
