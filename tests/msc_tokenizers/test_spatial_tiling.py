"""Blended spatial tiling: exact for local maps, full coverage, clear errors."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from msc_tokenizers.spatial_tiling import tile_starts, tiled_map


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (64, 64, 16), (65, 32, 31), (10, 32, 8)])
def test_tiles_cover_the_frame_with_the_overlap(size: int, tile: int, overlap: int) -> None:
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # consecutive tiles overlap by at least `overlap`


def test_blending_is_exact_for_pixelwise_maps() -> None:
    """A map whose output pixels depend on one input pixel (or one aligned block) has no
    border effects, so tiled == untiled: the blend weights only average equal values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 96, 72, generator=gen)

    def upsample(t: torch.Tensor) -> torch.Tensor:  # x8 in H and W, like a decoder
        return F.interpolate(t.flatten(0, 1), scale_factor=8, mode="nearest").view(*t.shape[:3], t.shape[3] * 8, -1) * 2 + 1

    def pool(t: torch.Tensor) -> torch.Tensor:  # /8 in H and W, like an encoder
        return F.avg_pool2d(t.flatten(0, 1), 8).view(*t.shape[:3], t.shape[3] // 8, -1)

    torch.testing.assert_close(tiled_map(upsample, x, 32, 16, Fraction(8)), upsample(x))
    torch.testing.assert_close(tiled_map(pool, x, 32, 16, Fraction(1, 8)), pool(x))


def test_tiling_errors_name_the_values() -> None:
    x = torch.zeros(1, 1, 1, 64, 64)
    with pytest.raises(ValueError, match=r"tile overlap must be in \[0, tile=32\), got 32"):
        tiled_map(lambda t: t, x, 32, 32, Fraction(1))
    with pytest.raises(ValueError, match="tile=30 times scale 1/8 is not a whole number"):
        tiled_map(lambda t: t, x, 30, 8, Fraction(1, 8))
