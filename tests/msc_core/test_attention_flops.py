"""`msc_core.flops` counts what the modules execute, and the paper's closed form as printed."""

from __future__ import annotations

import pytest

from msc_core.attention import MSCAttentionConfig
from msc_core.attention.tiled import axis_tiles
from msc_core.attention.masks import high_res_mask, low_res_frame_mask
from msc_core.flops import (
    dense_frame_causal_flops,
    exact_flops_estimate,
    high_res_halo_ratio,
    high_res_window_flops,
    msc_attention_flops,
    paper_flops_estimate,
)


def test_dense_counts_match_the_matmul_shapes() -> None:
    B, T, H, W, C = 2, 3, 4, 5, 16
    N = T * H * W
    flops = dense_frame_causal_flops(B, T, H, W, C, num_heads=4)
    assert flops["projection"] == 2 * B * N * C * 3 * C
    assert flops["attention"] == 2 * 2 * B * N * N * C  # QK^T and AV over the full masked matrix
    assert flops["output_projection"] == 2 * B * N * C * C
    assert flops["total"] == flops["projection"] + flops["attention"] + flops["output_projection"]


def test_msc_counts_match_the_tiled_op_shapes() -> None:
    B, T, H, W = 1, 5, 9, 7
    cfg = MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=3, pool=2, temporal_stride=2, tile_size=4)
    flops = msc_attention_flops(cfg, B, T, H, W)
    hd, h_hi, h_lo = cfg.head_dim, cfg.num_high_res_heads, cfg.num_low_res_heads
    rows, cols = axis_tiles(H, 3, 4), axis_tiles(W, 3, 4)
    tile_queries = rows.num_tiles * cols.num_tiles * rows.tile * cols.tile
    halo = rows.halo * cols.halo
    slots_per_frame = [min(t + 1, 3) for t in range(T)]  # the first frames have fewer key frames
    assert flops["high_res_attention"] == 4 * B * h_hi * hd * tile_queries * halo * sum(slots_per_frame)
    P, d = 5 * 4, 2  # 9x7 pooled by 2 -> 5x4; 5 frames in 2 groups padded to 3 rows each
    assert flops["low_res_attention"] == 4 * B * h_lo * hd * d * (3 * P) * (3 * P)
    assert flops["high_res_projection"] == 2 * B * T * H * W * 32 * 3 * h_hi * hd
    assert flops["low_res_projection"] == 2 * B * T * P * 32 * 3 * h_lo * hd


def test_msc_is_a_small_fraction_of_dense_at_the_bench_size() -> None:
    cfg = MSCAttentionConfig(dim=256, num_heads=8, window=7, temporal_window=3, pool=2, temporal_stride=4)
    msc = msc_attention_flops(cfg, 1, 16, 32, 32)["total"]
    dense = dense_frame_causal_flops(1, 16, 32, 32, 256, 8)["total"]
    assert msc < dense / 10
    paper = paper_flops_estimate(1, 16, 32, 32, 256, 7, 3, 2, 4)
    assert paper["msc_over_dense"] < 0.1


def test_paper_estimate_is_the_printed_formula() -> None:
    b, s, h, w, v, r, d = 1, 100, 8, 3, 2, 2, 4
    est = paper_flops_estimate(b, 1, 10, 10, h, w, v, r, d)
    assert est["dense"] == pytest.approx(8 * b * s * h**2 + 2 * b * s**2 * h)
    assert est["high_res"] == pytest.approx(2 * b * s * h**2 + b * s**2 * h / (2 * w**2 * v))
    assert est["low_res"] == pytest.approx(2 * b * s * h**2 / r**2 + b * s**2 * h / (2 * r**2 * d))


@pytest.mark.parametrize(
    "tile,expected",
    [(8, (8 + 6) ** 2 / 49), ((4, 4), 100 / 49), ((3, 4), 33 / 32 * (3 + 6) * (4 + 6) / 49)],
)
def test_halo_ratio_is_the_halo_over_the_window(tile, expected: float) -> None:
    """At 32x32 with w=7 every tile's halo is (rows + 6) x (cols + 6), borders included;
    3-row tiles need 11 tiles for 32 rows, whose 33rd query row is computed and dropped."""
    cfg = MSCAttentionConfig(dim=64, num_heads=4, window=7, temporal_window=3, tile_size=tile)
    assert high_res_halo_ratio(cfg, 1, 4, 32, 32) == pytest.approx(expected)


def test_window_flops_count_each_query_window() -> None:
    cfg = MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=2, tile_size=1)
    # tile 1: the halo of a single query is its window, so tiled == window FLOPs exactly
    assert msc_attention_flops(cfg, 2, 3, 5, 4)["high_res_attention"] == high_res_window_flops(cfg, 2, 3, 5, 4)
    hd, heads = cfg.head_dim, cfg.num_high_res_heads
    assert high_res_window_flops(cfg, 1, 1, 2, 2) == 4 * heads * hd * (2 * 2) * (2 * 2)  # window clamped to 2x2


@pytest.mark.parametrize("size", [(5, 9, 7), (16, 8, 8)])
def test_exact_estimate_counts_the_pairs_the_masks_allow(size) -> None:
    """The corrected closed form against a brute-force count of the reference masks, and
    its projection terms against the FLOPs the module runs."""
    T, H, W = size
    C, heads, w, v, r, d = 32, 4, 3, 2, 2, 3
    est = exact_flops_estimate(1, T, H, W, C, heads, w, v, r, d)
    cfg = MSCAttentionConfig(dim=C, num_heads=heads, window=w, temporal_window=v, pool=r, temporal_stride=d)
    c_hi = cfg.num_high_res_heads * cfg.head_dim
    c_lo = C - c_hi
    hi_pairs = int(high_res_mask(T, T, H, W, w, v).sum())
    P = -(-H // r) * -(-W // r)
    lo_pairs = int(low_res_frame_mask(T, T, d).sum()) * P * P
    assert est["high_res_attention"] == 4 * c_hi * hi_pairs
    assert est["low_res_attention"] == 4 * c_lo * lo_pairs
    assert est["high_res_attention"] == high_res_window_flops(cfg, 1, T, H, W)
    measured = msc_attention_flops(cfg, 1, T, H, W)
    for stage in ("high_res_projection", "low_res_projection", "output_projection"):
        assert est[stage] == measured[stage], stage
    causal = T * (T + 1) // 2 * (H * W) ** 2
    assert est["dense"] == dense_frame_causal_flops(1, T, H, W, C, heads)["total"] - 4 * C * (T * H * W) ** 2 + 4 * C * causal


def test_paper_and_exact_estimates_side_by_side_at_the_bench_size() -> None:
    """Written down in the README: at T=16, 32x32, C=256, w=7, v=3, r=2, d=4."""
    paper = paper_flops_estimate(1, 16, 32, 32, 256, 7, 3, 2, 4)
    exact = exact_flops_estimate(1, 16, 32, 32, 256, 8, 7, 3, 2, 4)
    assert exact["msc_over_dense"] == pytest.approx(0.0561, abs=5e-4)  # the README quotes these two
    assert paper["msc_over_dense"] == pytest.approx(0.0347, abs=5e-4)
