"""ONNX export of the tokenizers (msc_tokenizers.onnx_export), run by msc_runtime's runners:
encoder == `CausalVAE3D.encode` and decoders == PyTorch (whole, chunked, streamed) at shapes
unlike the export example; named dimensions, complete metadata, no float64, external data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from msc_core.latents import LatentNormalization
from msc_core.testing import perturb_parameters
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

pytestmark = pytest.mark.onnx
onnx = pytest.importorskip("onnx", reason="onnx is the msc-tokenizers[onnx] extra")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime comes with the msc-tokenizers[onnx] extra (msc-runtime)")

import msc_tokenizers  # noqa: E402 - after the extras check
from msc_core.onnx_export import dim_params, float64_uses  # noqa: E402
from msc_runtime import graphs  # noqa: E402
from msc_runtime.arvae import ARVAEDecoder  # noqa: E402
from msc_runtime.vae import VAEDecoder, VAEEncoder  # noqa: E402
from msc_tokenizers import onnx_export  # noqa: E402

SYMBOL = re.compile(r"^s\d+$")  # torch's symbolic dimension names, never in an msc graph
CPU = ["CPUExecutionProvider"]
NORMALIZATION = LatentNormalization(layout="grid", shift=(0.1, -0.2, 0.0, 0.3), scale=(1.5, 0.5, 1.0, 2.0))


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02).eval()


@pytest.fixture(scope="module")
def arvae():
    torch.manual_seed(0)
    return ARVAE(ARVAEConfig.preset("tiny", context_frames=2)).eval()


@pytest.fixture(scope="module")
def exported(vae, arvae, tmp_path_factory):
    """The three graphs (export examples: batch 2, 3 latent frames, 4 x 5 latents; AR-VAE: 3 frames,
    2 cached); the AR-VAE's weights forced into external data."""
    directory = tmp_path_factory.mktemp("tokenizer_onnx")
    return {
        graphs.VAE_DECODER: onnx_export.export_vae_decoder(vae, directory / "vae_decoder.onnx", strict=True,
                                                           latent_normalization=NORMALIZATION),
        graphs.VAE_ENCODER: onnx_export.export_vae_encoder(vae, directory / "vae_encoder.onnx", strict=True),
        graphs.ARVAE_DECODER: onnx_export.export_arvae_decoder(arvae, directory / "arvae_decoder.onnx", strict=True,
                                                               external_data_threshold=1024),
    }


def test_vae_decoder_graph_passes_the_checker_and_matches_pytorch_at_new_shapes(vae, exported):
    report = exported[graphs.VAE_DECODER]
    onnx.checker.check_model(onnx.load(str(report.path)), full_check=True)
    assert report.exporter == "torch.export" and report.parity_max_abs_err <= 1e-4
    decoder = VAEDecoder(report.path, providers=CPU)
    latents = torch.randn(3, 4, 5, 3, 6, generator=torch.Generator().manual_seed(1))  # batch, frames, size all new
    cache = [torch.randn(c.shape, generator=torch.Generator().manual_seed(2)) for c in vae.init_decode_cache(latents)]
    video, new_cache = decoder.decode_step(latents.numpy(), [c.numpy() for c in cache])
    with torch.no_grad():
        ref_video, ref_cache = vae.decode_step(latents, cache)
    assert np.abs(video - ref_video.numpy()).max() <= 1e-4
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(new_cache, ref_cache)) <= 1e-4


def test_chunked_and_streamed_vae_decoding_equal_the_whole_decode(vae, exported):
    decoder = VAEDecoder(exported[graphs.VAE_DECODER].path, providers=CPU)
    latents = torch.randn(2, 4, 6, 2, 3, generator=torch.Generator().manual_seed(3)).numpy()
    whole = decoder.decode(latents, clamp=False)
    assert whole.shape == (2, 3, 1 + 4 * 5, 16, 24)
    with torch.no_grad():
        expected = vae.decode(torch.from_numpy(latents)).numpy()
    assert np.abs(whole - expected).max() <= 1e-4
    for chunk in (1, 2, 4):
        assert np.abs(decoder.decode(latents, chunk, clamp=False) - whole).max() <= 1e-5
    streamed = np.concatenate(list(decoder.stream(np.split(latents, [1, 3], axis=2), clamp=False)), axis=2)
    assert np.abs(streamed - whole).max() <= 1e-5
    assert np.array_equal(decoder.decode(latents), np.clip(whole, -1, 1))  # clamped to msc.output_range by default


def test_vae_encoder_equals_encode_at_shapes_unlike_the_export(vae, exported):
    report = exported[graphs.VAE_ENCODER]
    assert report.exporter == "torch.export" and report.parity_max_abs_err <= 1e-4
    encoder = VAEEncoder(report.path, providers=CPU)
    gen = torch.Generator().manual_seed(4)
    # export example: batch 2, 9 frames, 32 x 40; here other batches, frame counts (one frame too) and sizes
    for shape in [(3, 3, 13, 24, 56), (1, 3, 1, 8, 8), (2, 3, 5, 48, 16)]:
        video = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            expected = vae.encode(video).numpy()
        got = encoder.encode(video.numpy())
        assert got.shape == expected.shape == vae.latent_spec.latent_shape(*[shape[0], *shape[2:]])
        assert np.abs(got - expected).max() <= 1e-4, shape


def test_arvae_decoder_streams_like_pytorch_from_external_data(arvae, exported):
    report = exported[graphs.ARVAE_DECODER]
    assert report.parity_max_abs_err <= 1e-4
    assert report.external_data is not None and report.external_data.endswith("arvae_decoder.onnx.data")
    proto = onnx.load(str(report.path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    decoder = ARVAEDecoder(report.path, providers=CPU)  # loads the weights from arvae_decoder.onnx.data
    latents = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(4))  # batch 3, 5 frames
    with torch.no_grad():
        expected = arvae.decode(latents).numpy()
    assert np.abs(decoder.decode(latents.numpy(), clamp=False) - expected).max() <= 1e-4  # whole clip, empty cache
    assert np.abs(decoder.decode(latents.numpy(), 1, clamp=False) - expected).max() <= 1e-4  # frame by frame


EXPECTED_DIMS = {
    graphs.VAE_DECODER: {
        "latents": ["batch", 4, "latent_frames", "latent_height", "latent_width"],
        "video": ["batch", 3, "frames", "height", "width"],
        "cache_in_0": ["batch", 4, 2, "latent_height", "latent_width"],
        "cache_out_4": ["batch", 16, 2, "2*latent_height", "2*latent_width"],
    },
    graphs.VAE_ENCODER: {
        "video": ["batch", 3, "frames", "height", "width"],
        "latents": ["batch", 4, "latent_frames", "latent_height", "latent_width"],
    },
    graphs.ARVAE_DECODER: {
        "latents": ["batch", "frames", 4, 4],
        "video": ["batch", 3, "frames", 16, 16],
        "cache_in_0": ["batch", 2, "past_tokens", 16],
        "cache_out_3": ["batch", 2, "cache_tokens", 16],  # min(past + 4 frames, 2 context frames x 4)
    },
}


def test_graphs_carry_named_dimensions_and_complete_metadata(exported):
    for kind, report in exported.items():
        proto = onnx.load(str(report.path), load_external_data=False)
        dims = dim_params(proto)
        assert not [d for shape in dims.values() for d in shape if isinstance(d, str) and SYMBOL.match(d)], dims
        assert not [d for shape in dims.values() for d in shape if isinstance(d, str) and re.search(r"\bs\d+", d)]
        for name, shape in EXPECTED_DIMS[kind].items():
            assert dims[name] == shape, (kind, name, dims[name])
        metadata = {p.key: p.value for p in proto.metadata_props}
        assert set(graphs.required_metadata(kind)) <= set(metadata), kind
        assert metadata["msc.graph"] == kind and metadata["msc.format"] == "2" and metadata["msc.opset"] == "18"
        assert metadata["msc.exporter"] == "torch.export"
        assert proto.producer_name == "msc" and proto.producer_version == msc_tokenizers.__version__
        assert proto.model_version == 1 and len(proto.doc_string) > 100
        meta = ort.InferenceSession(str(report.path), providers=CPU).get_modelmeta()
        assert meta.version == 1 and meta.description == proto.doc_string and meta.producer_name == "msc"
        info = graphs.validate_metadata(report.path, kind, metadata)
        assert info.format == "2" and info.exporter == "torch.export"
    decoder = {p.key: p.value for p in onnx.load(str(exported[graphs.VAE_DECODER].path)).metadata_props}
    assert json.loads(decoder["msc.output_range"]) == [-1, 1]
    assert json.loads(decoder["msc.chunk_rule"]) == {"drop_first_frames": 3, "when": "clip start (zero cache)"}
    assert json.loads(decoder["msc.latent_normalization"]) == {"shift": [0.1, -0.2, 0.0, 0.3], "scale": [1.5, 0.5, 1.0, 2.0]}
    assert "drop them" in onnx.load(str(exported[graphs.VAE_DECODER].path)).doc_string
    encoder = {p.key: p.value for p in onnx.load(str(exported[graphs.VAE_ENCODER].path)).metadata_props}
    assert json.loads(encoder["msc.input_range"]) == [-1, 1]
    assert json.loads(encoder["msc.frames_rule"]) == {"temporal_compression": 4}
    arvae = {p.key: p.value for p in onnx.load(str(exported[graphs.ARVAE_DECODER].path), load_external_data=False).metadata_props}
    assert json.loads(arvae["msc.output_range"]) == [-1, 1]
    assert json.loads(arvae["msc.cache"]) == {"layers": 2, "heads": 2, "head_dim": 16, "tokens_per_frame": 4}


def test_no_float64_anywhere_in_the_exported_graphs(exported):
    for kind, report in exported.items():
        proto = onnx.load(str(report.path))
        assert float64_uses(proto) == [], kind
        assert all(t.data_type != onnx.TensorProto.DOUBLE for t in proto.graph.initializer)
