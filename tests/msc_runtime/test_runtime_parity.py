"""The runners on the committed graphs equal the PyTorch outputs stored beside them (<= 1e-4).

Decode (whole, chunked, `decode_chunk` loop, streaming), encode, the AR-VAE, the cascade
refinement (whole clip and windows x tiles) and a full `upscale`; IOBinding (forced on
the CPU session) gives the same numbers as plain `run`. No torch anywhere.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from msc_runtime import ARVAEDecoder, CascadeRefiner, RefineSettings, VAEDecoder, VAEEncoder
from msc_runtime.video import video_to_frames

CPU = ["CPUExecutionProvider"]
TOL = 1e-4


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def vae(fixtures):
    return VAEDecoder(fixtures / "vae_decoder.onnx", providers=CPU)


def test_vae_decode_whole_and_chunked_equal_pytorch(vae, expected):
    z = expected["vae_decode_latents"]
    raw = vae.decode(z, clamp=False)
    assert raw.shape == (1, 3, 1 + 4 * (z.shape[2] - 1), 16, 24)
    assert max_err(raw, expected["vae_decode_video"]) <= TOL
    assert max_err(vae.decode(z, chunk_latent_frames=1, clamp=False), expected["vae_decode_chunked_video"]) <= TOL
    # the runner clamps to the graph's output range; the graph does not
    clamped = vae.decode(z)
    assert max_err(clamped, np.clip(expected["vae_decode_video"], -1, 1)) <= TOL
    assert clamped.min() >= -1 and clamped.max() <= 1


def test_vae_decode_chunk_loop_and_streaming_equal_pytorch(vae, expected):
    z = expected["vae_decode_latents"]
    video, cache = vae.decode_chunk(z[:, :, :1], clamp=False)  # clip start: frame 0 only
    assert video.shape[2] == 1 and all(isinstance(c, np.ndarray) for c in cache)
    rest, _ = vae.decode_chunk(z[:, :, 1:], cache, clamp=False)
    assert max_err(np.concatenate([video, rest], axis=2), expected["vae_stream_video"]) <= TOL

    arrived = []

    def latents_arriving():  # a generator's latent frames, one chunk at a time
        for chunk in (z[:, :, :1], z[:, :, 1:3]):
            arrived.append(chunk.shape[2])
            yield chunk

    frames = []
    for block in vae.stream(latents_arriving(), clamp=False):
        frames.append(block)
        assert len(frames) == len(arrived)  # each block is yielded before the next latents are read
    assert [f.shape[2] for f in frames] == [1, 8]
    assert max_err(np.concatenate(frames, axis=2), expected["vae_stream_video"]) <= TOL


def test_vae_binding_path_equals_plain_run(fixtures, expected):
    z = expected["vae_decode_latents"]
    bound = VAEDecoder(fixtures / "vae_decoder.onnx", providers=CPU, binding=True)
    assert bound.runner.binding
    assert max_err(bound.decode(z, chunk_latent_frames=1, clamp=False), expected["vae_decode_chunked_video"]) <= TOL


def test_vae_encoder_equals_pytorch(fixtures, expected, need):
    need("vae_encode_video")
    encoder = VAEEncoder(fixtures / "vae_encoder.onnx", providers=CPU)
    latents = encoder.encode(expected["vae_encode_video"])
    assert max_err(latents, expected["vae_encode_latents"]) <= TOL


def test_arvae_decoder_whole_chunked_and_streamed_equal_pytorch(fixtures, expected):
    decoder = ARVAEDecoder(fixtures / "arvae_decoder.onnx", providers=CPU)
    z, want = expected["arvae_latents"], expected["arvae_video"]
    assert max_err(decoder.decode(z, clamp=False), want) <= TOL
    assert max_err(decoder.decode(z, chunk_frames=1, clamp=False), want) <= TOL
    streamed = np.concatenate(list(decoder.stream((z[:, i:i + 1] for i in range(z.shape[1])), clamp=False)), axis=2)
    assert max_err(streamed, want) <= TOL
    assert max_err(decoder.decode(z), np.clip(want, -1, 1)) <= TOL


def test_cascade_refine_equals_pytorch_whole_and_in_windows_and_tiles(fixtures, expected, manifest):
    base = expected["refine_base"]
    case = manifest["cases"]["refine"]
    refiner = CascadeRefiner(fixtures, RefineSettings(**case["settings"]), providers=CPU)
    assert max_err(refiner.refine(base, seed=case["seed"]), expected["refine_latents"]) <= TOL
    case = manifest["cases"]["pieces"]
    pieces = CascadeRefiner(fixtures, RefineSettings(**case["settings"]), providers=CPU)
    seen = []
    got = pieces.refine(base, seed=case["seed"], progress=lambda done, total: seen.append((done, total)))
    assert max_err(got, expected["pieces_latents"]) <= TOL
    total = pieces.work_units(base)
    assert seen == [(i + 1, total) for i in range(total - 1)]  # every DDIM step of every piece; the VAE tile in decode
    # another seed is another sample
    assert max_err(pieces.refine(base, seed=case["seed"] + 1), got) > 1e-3


def test_cascade_binding_path_equals_plain_run(fixtures, expected, manifest):
    case = manifest["cases"]["pieces"]
    bound = CascadeRefiner(fixtures, RefineSettings(**case["settings"]), providers=CPU, binding=True)
    assert bound.step_runner.binding
    assert max_err(bound.refine(expected["refine_base"], seed=case["seed"]), expected["pieces_latents"]) <= TOL


def _same_frames_up_to_rounding_ties(got: np.ndarray, reference_video: np.ndarray) -> None:
    """uint8 frames equal, except where the reference sits within TOL of a rounding boundary."""
    want = video_to_frames(reference_video)
    scaled = (np.clip(reference_video, -1, 1) + 1) * 127.5  # [3, N, H, W]
    tie = np.abs(scaled - np.floor(scaled) - 0.5) <= TOL * 127.5
    differs = (got != want).transpose(3, 0, 1, 2)
    assert not (differs & ~tie).any()


def test_upscale_end_to_end_equals_pytorch(fixtures, expected, manifest, need):
    need("upscale_video")
    case = manifest["cases"]["upscale"]
    refiner = CascadeRefiner(fixtures, RefineSettings(**case["settings"]), providers=CPU)
    video = expected["upscale_input"]
    base = refiner.encode(video)
    assert max_err(base, expected["upscale_base"]) <= TOL
    latents = refiner.refine(base, seed=case["seed"])
    assert max_err(latents, expected["upscale_latents"]) <= TOL
    out = refiner.upscale(video, seed=case["seed"])
    assert out.shape == expected["upscale_video"].shape == (1, 3, 5, 32, 32)
    assert max_err(out, expected["upscale_video"]) <= TOL
    # the frames handed to the writer are the PyTorch command's
    _same_frames_up_to_rounding_ties(video_to_frames(out[0]), expected["upscale_video"][0])


def test_torch_array_likes_and_other_float_dtypes_are_accepted(vae, expected):
    z = expected["vae_decode_latents"]
    want = vae.decode(z)
    assert max_err(vae.decode(z.astype(np.float64)), want) <= 1e-6
    assert max_err(vae.decode(z.tolist()), want) <= 1e-6  # anything np.asarray reads


def test_registered_onnx_decoders_are_the_runtime_runners():
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="msc.onnx_decoders")}
    assert found["vae3d"].load() is VAEDecoder
    assert found["arvae"].load() is ARVAEDecoder
    assert found["vae3d"].dist.name == "msc-runtime" and found["arvae"].dist.name == "msc-runtime"


LEGACY_KEYS = ("msc.graph", "msc.config", "msc.latent_spec", "msc.cache", "msc.exporter", "msc.opset")


def as_format_1(metadata: dict) -> None:
    """What the exporters wrote before `msc.format` (no range, chunk rule or cascade keys)."""
    for key in list(metadata):
        if key not in LEGACY_KEYS:
            del metadata[key]


def test_files_without_msc_format_still_run(edited, expected, manifest, tmp_path):
    vae = VAEDecoder(edited("vae_decoder.onnx", as_format_1), providers=CPU)
    assert vae.info.format == "1" and vae.info.drop_first_frames == 3  # tc - 1 from the latent spec
    assert max_err(vae.decode(expected["vae_decode_latents"], clamp=False), expected["vae_decode_video"]) <= TOL
    edited("cascade_step.onnx", as_format_1)
    case = manifest["cases"]["pieces"]
    refiner = CascadeRefiner(tmp_path, RefineSettings(**case["settings"]), providers=CPU)
    assert refiner.step.info.format == "1" and refiner.steps == 3  # sample_steps from msc.config
    assert max_err(refiner.refine(expected["refine_base"], seed=case["seed"]), expected["pieces_latents"]) <= TOL
