"""The numpy ports in msc_runtime equal the PyTorch code they port (workspace environment only).

Upsampling of the base latent (`msc_cascade.dit.upsample_base_latent`), windows/tiles
(`msc_cascade.latent_windows`, `msc_tokenizers.spatial_tiling`), the DDIM timestep grid
(`msc_core.diffusion.ddim_timestep_grid`) and the decode noise; the runners accept CPU
torch tensors (bfloat16 and ones that require grad included).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch references live in the workspace environment")
latent_windows = pytest.importorskip("msc_cascade.latent_windows")

from msc_cascade.cascade_sampling import target_latent_size as torch_target_size  # noqa: E402
from msc_cascade.dit import upsample_base_latent as torch_upsample  # noqa: E402
from msc_core.diffusion import ddim_timestep_grid as torch_grid  # noqa: E402
from msc_runtime import VAEDecoder  # noqa: E402
from msc_runtime.cascade_sampling import ddim_timestep_grid, initial_noise, target_latent_size  # noqa: E402
from msc_runtime.latent_resampling import upsample_base_latent  # noqa: E402
from msc_runtime.latent_tiling import (  # noqa: E402
    blend_ramp,
    count_pieces,
    piece_spans,
    refine_in_pieces,
    tile_starts,
    tiled_map,
)
from msc_tokenizers import spatial_tiling  # noqa: E402


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 3, 2, 3, 5), (2, 12, 20)),  # sr 4x
        ((1, 4, 1, 7, 2), (1, 28, 8)),
        ((1, 2, 3, 4, 4), (9, 4, 4)),  # fps 4x: 1 + 4 (t - 1)
        ((1, 2, 1, 4, 4), (1, 4, 4)),  # one frame, nothing to do
        ((2, 2, 2, 5, 3), (5, 10, 7)),  # both, odd ratios
        ((1, 1, 1, 3, 3), (4, 3, 3)),  # one base frame repeated
    ],
)
def test_upsample_base_latent_equals_pytorch(shape, size):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    want = torch_upsample(x, size).numpy()
    got = upsample_base_latent(x.numpy(), size)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("T, S", [(1000, 8), (1000, 3), (1000, 1), (1000, 1000), (7, 3), (50, 16), (999, 7)])
def test_ddim_timestep_grid_equals_pytorch(T, S):
    assert np.array_equal(ddim_timestep_grid(T, S), torch_grid(T, S).numpy())
    with pytest.raises(ValueError, match="num_steps must be in"):
        ddim_timestep_grid(T, T + 1)


def test_target_size_and_decode_noise_follow_the_torch_side():
    for mode, factor, base in (("sr", 4, (2, 3, 5)), ("fps", 4, (3, 4, 4)), ("fps", 2, (1, 2, 2))):
        assert target_latent_size(mode, factor, base) == torch_target_size(mode, factor, base)
    from msc_cascade import cascade_sampling

    seeded = getattr(cascade_sampling, "seeded_noise", None)
    if seeded is None:
        pytest.skip("msc_cascade does not draw numpy decode noise yet")
    want = seeded((1, 4, 2, 3, 3), 11, torch.device("cpu"), torch.float32).numpy()
    assert np.array_equal(initial_noise((1, 4, 2, 3, 3), 11), want)


def test_tile_starts_ramps_and_spans_equal_pytorch():
    for size, tile, overlap in ((10, 4, 1), (4, 4, 0), (3, 4, 2), (17, 5, 4), (9, 3, 0)):
        assert tile_starts(size, tile, overlap) == spatial_tiling.tile_starts(size, tile, overlap)
        assert piece_spans(size, tile, overlap) == latent_windows.piece_spans(size, tile, overlap)
    for length, ramp, a, b in ((5, 2, True, True), (3, 5, True, False), (6, 0, True, True), (4, 3, False, True)):
        want = spatial_tiling.blend_ramp(length, ramp, a, b, torch.device("cpu")).numpy()
        assert np.array_equal(blend_ramp(length, ramp, a, b), want)
    assert count_pieces((5, 9, 7), 2, 1, 4, 2) == latent_windows.count_pieces((5, 9, 7), 2, 1, 4, 2)


@pytest.mark.parametrize("window, w_overlap, tile, t_overlap",
                         [(2, 1, 4, 2), (None, 2, 3, 1), (1, 0, None, 2), (3, 2, 5, 4), (None, 2, None, 2)])
def test_refine_in_pieces_equals_pytorch(window, w_overlap, tile, t_overlap):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 3, 5, 9, 7, generator=gen)
    noise = torch.randn(2, 3, 5, 9, 7, generator=gen)

    def piece_fn(b, n):  # a position-dependent function of the piece, as a DiT's would be
        return b * 0.5 + n * n.mean() + b.shape[-1]

    want = latent_windows.refine_in_pieces(piece_fn, base, noise, window, w_overlap, tile, t_overlap).numpy()
    got = refine_in_pieces(lambda b, n: piece_fn(b, n).astype(np.float32), base.numpy(), noise.numpy(),
                           window, w_overlap, tile, t_overlap)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("tile, overlap, scale", [(3, 1, 8), (2, 0, 4), (4, 2, Fraction(1, 2))])
def test_tiled_map_equals_pytorch(tile, overlap, scale):
    x = torch.randn(1, 2, 3, 7, 5, generator=torch.Generator().manual_seed(2))
    s = Fraction(scale)

    def fn(t):  # resize by `scale` with nearest neighbours, plus an offset depending on the tile's size
        idx_h = (torch.arange(int(t.shape[-2] * s)) / float(s)).long()
        idx_w = (torch.arange(int(t.shape[-1] * s)) / float(s)).long()
        return t[..., idx_h, :][..., idx_w] + t.shape[-1]

    def np_fn(t):
        return fn(torch.from_numpy(t)).numpy()

    want = spatial_tiling.tiled_map(fn, x, tile, overlap, s).numpy()
    got = tiled_map(np_fn, x.numpy(), tile, overlap, s)
    assert np.abs(got - want).max() <= 1e-5


def test_runners_accept_cpu_torch_tensors(fixtures):
    decoder = VAEDecoder(fixtures / "vae_decoder.onnx", providers=["CPUExecutionProvider"])
    z = torch.randn(1, 4, 2, 2, 3, generator=torch.Generator().manual_seed(3))
    want = decoder.decode(z.numpy())
    assert np.abs(decoder.decode(z.requires_grad_()) - want).max() == 0
    assert np.abs(decoder.decode(z.detach().bfloat16()) - want).max() < 0.1  # bfloat16 rounding of the input
    with pytest.raises(ValueError, match=r"latents must be a floating-point tensor, got torch.int64"):
        decoder.decode(z.long())
