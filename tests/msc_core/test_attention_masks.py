"""The MSC masks (paper §3.2) against a direct, loop-by-loop reading of their rules.

The masks are the one semantics every backend is tested against, so they are checked
here against hand-written rules: NATTEN windows shifted (not shrunk) at the borders,
causal temporal windows, strided causal frames; plus the pooling the Low-Res branch uses.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from msc_core.attention.masks import (
    high_res_mask,
    low_res_frame_mask,
    low_res_mask,
    neighborhood_mask_1d,
)
from msc_core.attention.pooling import average_pool_frames, upsample_nearest_frames


def natten_window_1d(i: int, length: int, window: int) -> set[int]:
    """NATTEN: a centred window that is shifted inwards at the borders, clamped to the axis."""
    window = min(window, length)
    start = min(max(i - window // 2, 0), length - window)
    return set(range(start, start + window))


@pytest.mark.parametrize("length,window", [(1, 1), (5, 3), (7, 7), (9, 5), (4, 7), (6, 7), (10, 1)])
def test_neighborhood_mask_is_shifted_natten_window(length: int, window: int) -> None:
    mask = neighborhood_mask_1d(length, window)
    for i in range(length):
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == natten_window_1d(i, length, window)
        # a border query still sees a full window (shifted, not shrunk)
        assert int(mask[i].sum()) == min(window, length)


def test_border_query_window_examples() -> None:
    mask = neighborhood_mask_1d(8, 5)
    assert torch.nonzero(mask[0]).flatten().tolist() == [0, 1, 2, 3, 4]
    assert torch.nonzero(mask[7]).flatten().tolist() == [3, 4, 5, 6, 7]
    assert torch.nonzero(mask[4]).flatten().tolist() == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("Tq,Tk,v", [(5, 5, 3), (4, 4, 1), (3, 3, 5), (2, 6, 3)])
def test_high_res_mask_matches_rules(Tq: int, Tk: int, v: int) -> None:
    H, W, w = 4, 5, 3
    mask = high_res_mask(Tq, Tk, H, W, w, v).reshape(Tq, H, W, Tk, H, W)
    for t, i, j in itertools.product(range(Tq), range(H), range(W)):
        t_abs = Tk - Tq + t
        expected = torch.zeros(Tk, H, W, dtype=torch.bool)
        for tk in range(max(0, t_abs - v + 1), t_abs + 1):  # itself and v-1 earlier frames
            for ik, jk in itertools.product(natten_window_1d(i, H, w), natten_window_1d(j, W, w)):
                expected[tk, ik, jk] = True
        assert torch.equal(mask[t, i, j], expected), (t, i, j)


@pytest.mark.parametrize("Tq,Tk,d", [(7, 7, 3), (5, 5, 1), (3, 3, 9), (2, 8, 4)])
def test_low_res_frame_mask_is_strided_and_causal(Tq: int, Tk: int, d: int) -> None:
    mask = low_res_frame_mask(Tq, Tk, d)
    for t in range(Tq):
        t_abs = Tk - Tq + t
        expected = {t_abs - m * d for m in range(t_abs // d + 1)}  # t, t-d, ..., >= 0
        assert set(torch.nonzero(mask[t]).flatten().tolist()) == expected
    dense = low_res_mask(Tq, Tk, 3, d)
    assert torch.equal(dense, mask.repeat_interleave(3, 0).repeat_interleave(3, 1))


def test_average_pool_partial_cells_average_real_pixels() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7, 4, dtype=torch.float64)  # 5x7 is not divisible by 2
    pooled = average_pool_frames(x, 2)
    assert pooled.shape == (2, 3, 3, 4, 4)
    for a, b in itertools.product(range(3), range(4)):
        cell = x[:, :, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2]  # slicing clips at the edge
        torch.testing.assert_close(pooled[:, :, a, b], cell.mean(dim=(2, 3)))


def test_upsample_copies_each_pixel_its_cell() -> None:
    torch.manual_seed(0)
    pooled = torch.randn(1, 2, 3, 4, 5)
    up = upsample_nearest_frames(pooled, 2, 5, 7)
    assert up.shape == (1, 2, 5, 7, 5)
    for i, j in itertools.product(range(5), range(7)):
        assert torch.equal(up[:, :, i, j], pooled[:, :, i // 2, j // 2])
