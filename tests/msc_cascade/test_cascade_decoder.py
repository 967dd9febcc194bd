"""CascadeDecoder: windows and tiles vs the unwindowed decode, cross-fades, shapes per mode, determinism."""

import pytest
import torch

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_cascade.cascade_sampling import ddim_refine, seeded_noise
from msc_cascade.dit import upsample_base_latent
from msc_cascade.latent_windows import piece_spans


def clip(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_single_window_and_tile_is_the_plain_refine(make_cascade):
    model = make_cascade("fps")
    base = torch.randn(2, 4, 3, 4, 4)
    plain = model.refine(base, noise=seeded_noise((2, 4, 9, 4, 4), 7, torch.device("cpu"), torch.float32))
    covering = CascadeDecoder(model, CascadeDecodeSettings(window_frames=9, tile_size=4))  # >= the 9 x 4 x 4 target
    assert torch.equal(covering.refine(base, seed=7), plain)
    assert torch.equal(CascadeDecoder(model).decode(base, seed=7), covering.decode(base, seed=7))


def test_windows_cross_fade_convexly_and_equal_each_window_where_alone(make_cascade):
    model = make_cascade("fps")
    base = torch.randn(1, 4, 2, 2, 2)  # target 5 latent frames; windows [0, 3) and [2, 5)
    assert piece_spans(5, 3, 1) == [(0, 3), (2, 5)]
    decoder = CascadeDecoder(model, CascadeDecodeSettings(window_frames=3, window_overlap=1))
    out = decoder.refine(base, seed=2)
    # each window refined alone (the DDIM loop), from the same slice of the clip's noise
    base_up = upsample_base_latent(base, (5, 2, 2))
    noise = seeded_noise(tuple(base_up.shape), 2, base_up.device, base_up.dtype)
    grid = model.timestep_grid()
    first = ddim_refine(model.denoise_step, base_up[:, :, 0:3], noise[:, :, 0:3], grid)
    second = ddim_refine(model.denoise_step, base_up[:, :, 2:5], noise[:, :, 2:5], grid)
    assert torch.equal(out[:, :, 0:2], first[:, :, 0:2])  # covered by the first window only
    assert torch.equal(out[:, :, 3:5], second[:, :, 1:3])  # covered by the second window only
    blend = out[:, :, 2]
    assert torch.allclose(blend, 0.5 * first[:, :, 2] + 0.5 * second[:, :, 0], atol=1e-6)  # linear fade, 1 frame
    assert not torch.allclose(first[:, :, 2], second[:, :, 0])  # the two windows did disagree there


def test_spatial_tiles_blend_convexly(make_cascade):
    model = make_cascade("sr")
    base = torch.randn(1, 4, 1, 2, 2)  # target 1 x 8 x 8; tiles of 6 with overlap 2: starts 0 and 2
    decoder = CascadeDecoder(model, CascadeDecodeSettings(tile_size=6, tile_overlap=2))
    out = decoder.refine(base, seed=0)
    base_up = upsample_base_latent(base, (1, 8, 8))
    noise = seeded_noise(tuple(base_up.shape), 0, base_up.device, base_up.dtype)
    grid = model.timestep_grid()
    pieces = {(h0, w0): ddim_refine(model.denoise_step, base_up[..., h0:h0 + 6, w0:w0 + 6], noise[..., h0:h0 + 6, w0:w0 + 6], grid)
              for h0 in (0, 2) for w0 in (0, 2)}
    assert torch.equal(out[..., :2, :2], pieces[(0, 0)][..., :2, :2])  # corner seen by one tile only
    stacked = torch.stack([torch.nn.functional.pad(p, (w0, 2 - w0, h0, 2 - h0)) for (h0, w0), p in pieces.items()])
    covered = torch.stack([torch.nn.functional.pad(torch.ones_like(p), (w0, 2 - w0, h0, 2 - h0)) for (h0, w0), p in pieces.items()]) > 0
    low = torch.where(covered, stacked, torch.inf).amin(0)
    high = torch.where(covered, stacked, -torch.inf).amax(0)
    assert bool(((out >= low - 1e-6) & (out <= high + 1e-6)).all())  # every value lies between the tiles' values


def test_chunked_and_tiled_vae_decode_match_the_whole_decode(make_cascade):
    model = make_cascade("fps")
    latents = torch.randn(1, 4, 5, 4, 4)
    whole = CascadeDecoder(model).decode_latents(latents)
    chunked = CascadeDecoder(model, CascadeDecodeSettings(vae_chunk_frames=2)).decode_latents(latents)
    assert torch.allclose(chunked, whole, atol=1e-5)
    tiled = CascadeDecoder(model, CascadeDecodeSettings(vae_tile_size=4)).decode_latents(latents)  # tile = frame
    assert torch.equal(tiled, whole)


def test_sr_is_4x_larger_and_fps_is_4x_more_frames(make_cascade):
    sr = CascadeDecoder(make_cascade("sr"))
    video = clip((1, 3, 5, 16, 24))  # 5 frames = 1 + 4 * 1
    assert sr.upscale(video).shape == (1, 3, 5, 64, 96)
    fps = CascadeDecoder(make_cascade("fps"))
    video = clip((1, 3, 9, 16, 16))  # 9 = 1 + 4 * 2 frames -> 3 latent frames -> 9 latent frames
    out = fps.upscale(video)
    assert out.shape == (1, 3, 33, 16, 16)  # 1 + 4 * (9 - 1) frames
    assert out.abs().max() <= 1.0


def test_decode_is_deterministic_by_seed_and_reports_progress(make_cascade):
    decoder = CascadeDecoder(make_cascade("fps"), CascadeDecodeSettings(window_frames=3, window_overlap=1, steps=2))
    base = torch.randn(1, 4, 2, 2, 2)
    seen = []
    a = decoder.decode(base, seed=4, progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(a, decoder.decode(base, seed=4))
    assert not torch.equal(a, decoder.decode(base, seed=5))
    total = decoder.work_units(base)
    assert total == 2 * 2 + 1 and seen[-1] == (total, total) and [d for d, _ in seen] == list(range(1, total + 1))


def test_upscale_decodes_the_refinement_of_the_videos_base_latents(make_cascade):
    model = make_cascade("sr")
    video = clip((1, 3, 1, 8, 8))
    decoder = CascadeDecoder(model, CascadeDecodeSettings(steps=2))
    out = decoder.upscale(video, seed=3)
    assert torch.equal(out, decoder.decode(model.vae.encode(video), seed=3)) and out.shape == (1, 3, 1, 32, 32)


def test_temperature_scales_the_initial_noise_and_zero_is_seed_independent(make_cascade):
    model = make_cascade("sr")
    base = torch.randn(1, 4, 2, 1, 1)
    for temperature in (0.5, 0.0):
        decoder = CascadeDecoder(model, CascadeDecodeSettings(temperature=temperature))
        noise = seeded_noise((1, 4, 2, 4, 4), 5, torch.device("cpu"), torch.float32)
        expected = model.refine(base, noise=temperature * noise)
        assert torch.equal(decoder.refine(base, seed=5), expected)
    cold = CascadeDecoder(model, CascadeDecodeSettings(temperature=0.0))
    assert torch.equal(cold.decode(base, seed=0), cold.decode(base, seed=1))  # deterministic decoding
    assert not torch.equal(CascadeDecoder(model).decode(base, seed=0), CascadeDecoder(model).decode(base, seed=1))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="temperature"):
        CascadeDecodeSettings(temperature=-0.5)
    with pytest.raises(ValueError, match="window_overlap=4 must be smaller than window_frames=4"):
        CascadeDecodeSettings(window_frames=4, window_overlap=4)
    with pytest.raises(ValueError, match="tile_overlap=3 must be smaller than tile_size=2"):
        CascadeDecodeSettings(tile_size=2, tile_overlap=3)
