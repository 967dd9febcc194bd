"""Streaming MSC attention with `MSCKVCache` equals the full forward over all frames.

A model that generates frame by frame caches the K/V of finished frames; processing the
next frames against the cache must give what the full forward gives for them, for any
chunking, with the High-Res cache bounded to the last v - 1 frames.
"""

from __future__ import annotations

import pytest
import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig
from msc_core.attention.natten_backend import natten_available

# NATTEN's CPU path (FlexAttention, forward only) builds a block mask per call: slow there
NATTEN = pytest.param(
    "natten",
    marks=[pytest.mark.skipif(not natten_available(), reason="NATTEN not installed (msc-core[natten])")]
    + ([] if torch.cuda.is_available() else [pytest.mark.slow]),
)

# (T, H, W, window, v, r, d)
CASES = [
    (6, 5, 7, 3, 3, 2, 4),
    (5, 4, 4, 5, 1, 3, 1),
    (7, 6, 5, 3, 4, 2, 3),
    (4, 3, 3, 3, 2, 1, 9),
]
CHUNKINGS = [[1] * 7, [2, 1, 3, 1], [3, 4]]


def build(case, backend: str) -> MSCAttention:
    T, H, W, w, v, r, d = case
    torch.manual_seed(0)
    module = MSCAttention(
        MSCAttentionConfig(
            dim=32, num_heads=4, window=w, temporal_window=v, pool=r, temporal_stride=d,
            tile_size=4, noise_embed_dim=16, backend=backend,
        )
    )
    torch.nn.init.normal_(module.gate.mlp[-1].weight, std=0.5)
    return module


@pytest.mark.parametrize("backend", ["tiled", "reference", NATTEN])
@pytest.mark.parametrize("case", CASES, ids=[f"v{c[4]}_d{c[6]}_r{c[5]}" for c in CASES])
@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["frame_by_frame", "mixed", "two_chunks"])
def test_streaming_with_cache_equals_full_forward(case, backend: str, chunks: list[int]) -> None:
    module = build(case, backend)
    T, H, W = case[:3]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, H, W, 32, generator=gen)
    noise = torch.randint(0, 1000, (2, T), generator=gen)
    with torch.no_grad():
        full = module(x, noise)
        cache = module.new_cache()
        outs, start = [], 0
        for size in chunks:
            size = min(size, T - start)
            if size <= 0:
                break
            frames = slice(start, start + size)
            outs.append(module(x[:, frames], noise[:, frames], cache=cache, update_cache=True))
            start += size
            assert cache.num_frames == start
            kept = 0 if cache.high_res_keys is None else cache.high_res_keys.shape[2]
            assert kept == min(start, module.config.temporal_window - 1)  # bounded High-Res cache
            assert cache.low_res_keys.shape[2] == start
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["tiled", "reference"])
def test_cache_without_update_is_reusable(backend: str) -> None:
    """Denoising the same new frames several times against a fixed cache (update_cache=False)."""
    module = build(CASES[0], backend)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 5, 7, 32, generator=gen)
    noise = torch.randint(0, 1000, (1, 6), generator=gen)
    with torch.no_grad():
        full = module(x, noise)
        cache = module.new_cache()
        module(x[:, :4], noise[:, :4], cache=cache, update_cache=True)
        first = module(x[:, 4:], noise[:, 4:], cache=cache)
        again = module(x[:, 4:], noise[:, 4:], cache=cache)
        assert cache.num_frames == 4
        other_noise = module(x[:, 4:], torch.zeros(1, 2), cache=cache)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, full[:, 4:], rtol=0, atol=1e-5)
    assert not torch.allclose(other_noise, first)  # new frames' noise levels still gate them


def test_cache_rejects_mismatched_frames() -> None:
    module = build(CASES[0], "tiled")
    cache = module.new_cache()
    with torch.no_grad():
        module(torch.randn(2, 2, 5, 7, 32), torch.zeros(2, 2), cache=cache, update_cache=True)
        with pytest.raises(ValueError, match=r"batch 2 with frames \(5, 7\)"):
            module(torch.randn(2, 1, 6, 7, 32), torch.zeros(2, 1), cache=cache)
        with pytest.raises(ValueError, match="batch 1"):
            module(torch.randn(1, 1, 5, 7, 32), torch.zeros(1, 1), cache=cache)
