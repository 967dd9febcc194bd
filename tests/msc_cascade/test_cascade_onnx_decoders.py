"""ONNX export of the tokenizer decoders: checker, parity at new shapes, chunked decoding, errors, providers."""

import logging

import numpy as np
import pytest
import torch

from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D

pytestmark = pytest.mark.onnx
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-cascade[onnx] extra")
onnx = pytest.importorskip("onnx", reason="onnx is the msc-cascade[onnx] extra")

from msc_cascade import onnx_export  # noqa: E402 - after the extras check
from msc_cascade.export_cli import main as export_main  # noqa: E402
from msc_cascade.onnx_export import OnnxARVAEDecoder, OnnxModelError, OnnxVAEDecoder  # noqa: E402


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return from_pretrained(CausalVAE3D, tiny_vae_dir)


@pytest.fixture(scope="module")
def vae_onnx(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "vae_decoder.onnx"
    report = onnx_export.export_vae_decoder(vae, path)  # example batch 2, 3 latent frames, 4 x 5
    return path, report


def test_vae_decoder_graph_passes_the_checker_and_matches_pytorch_at_new_shapes(vae, vae_onnx):
    path, report = vae_onnx
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert report.exporter == "torch.export" and report.parity_max_abs_err <= 1e-4
    decoder = OnnxVAEDecoder(path, providers=["CPUExecutionProvider"])
    latents = torch.randn(3, 4, 5, 3, 6, generator=torch.Generator().manual_seed(1))  # batch, frames, size all new
    cache = [torch.randn(c.shape, generator=torch.Generator().manual_seed(2)) for c in vae.init_decode_cache(latents)]
    video, new_cache = decoder.decode_step(latents.numpy(), [c.numpy() for c in cache])
    with torch.no_grad():
        ref_video, ref_cache = vae.decode_step(latents, cache)
    assert np.abs(video - ref_video.numpy()).max() <= 1e-4
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(new_cache, ref_cache)) <= 1e-4


def test_chunked_onnx_vae_decoding_equals_whole_decoding(vae, vae_onnx):
    decoder = OnnxVAEDecoder(vae_onnx[0], providers=["CPUExecutionProvider"])
    latents = torch.randn(2, 4, 6, 2, 3, generator=torch.Generator().manual_seed(3))
    whole = decoder.decode(latents)
    assert whole.shape == (2, 3, 1 + 4 * 5, 16, 24)
    for chunk in (1, 2, 4):
        assert np.abs(decoder.decode(latents, chunk_latent_frames=chunk) - whole).max() <= 1e-5
    with torch.no_grad():
        assert np.abs(whole - vae.decode(latents).numpy()).max() <= 1e-4


def test_arvae_decoder_streams_in_onnx_runtime_like_pytorch(tmp_path):
    torch.manual_seed(0)
    arvae = ARVAE(ARVAEConfig.preset("tiny", context_frames=2)).eval()
    report = onnx_export.export_arvae_decoder(arvae, tmp_path / "arvae.onnx")  # example: batch 2, 3 frames, 2 cached
    assert report.parity_max_abs_err <= 1e-4
    decoder = OnnxARVAEDecoder(tmp_path / "arvae.onnx", providers=["CPUExecutionProvider"])
    latents = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(4))  # batch 3, 5 frames
    with torch.no_grad():
        expected = arvae.decode(latents).numpy()
    assert np.abs(decoder.decode(latents) - expected).max() <= 1e-4  # whole clip, empty cache
    assert np.abs(decoder.decode(latents, chunk_frames=1) - expected).max() <= 1e-4  # frame by frame


def test_runner_falls_back_to_cpu_with_a_logged_message(vae_onnx, monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="msc_cascade.onnx_export"):
        decoder = OnnxVAEDecoder(vae_onnx[0])  # default: CUDA, then CPU
    assert decoder.provider == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider" in r.getMessage() and "vae_decoder.onnx" in r.getMessage() for r in caplog.records)


def test_corrupt_foreign_and_mismatched_files_are_named(vae_onnx, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(vae_onnx[0].read_bytes()[: 2000])  # truncated
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx is not a valid ONNX model.*expected the CausalVAE3D decoder"):
        OnnxVAEDecoder(corrupt)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(OnnxModelError, match="garbage.onnx is not a valid ONNX model"):
        OnnxVAEDecoder(garbage)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX file that msc-export did not write
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.randn(1, 2),), str(foreign), dynamo=True, opset_version=18)
    with pytest.raises(OnnxModelError, match="foreign.onnx has no 'msc.graph' metadata"):
        OnnxVAEDecoder(foreign)
    with pytest.raises(OnnxModelError, match=r"holds a 'vae3d_decoder' graph, expected 'arvae_decoder'"):
        OnnxARVAEDecoder(vae_onnx[0])
    with pytest.raises(FileNotFoundError, match="missing.onnx not found"):
        OnnxVAEDecoder(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, T, h, w\]"):
        OnnxVAEDecoder(vae_onnx[0], providers=["CPUExecutionProvider"]).decode(torch.zeros(1, 3, 2, 2, 2))


def test_export_cli_check_and_errors(vae_onnx, tiny_vae_dir, tmp_path, capsys):
    assert export_main(["check", str(vae_onnx[0])]) == 0
    assert '"msc.graph": "vae3d_decoder"' in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert export_main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.onnx is not a valid ONNX model" in err and "Traceback" not in err
    assert export_main(["vae", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_msc_export_takes_a_run_folder_and_relative_paths(vae, tiny_vae_dir, tmp_path):
    """`msc export vae --model RUN --out FILE` through the console script, from another
    working directory, where RUN is a training run folder (its exported `model/` is read)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copytree(tiny_vae_dir, tmp_path / "runs" / "vae3d" / "model")
    msc = Path(sys.executable).parent / "msc"
    result = subprocess.run([str(msc), "export", "vae", "--model", "runs/vae3d", "--out", "vae.onnx"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    decoder = OnnxVAEDecoder(tmp_path / "vae.onnx", providers=["CPUExecutionProvider"])
    latents = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert np.abs(decoder.decode(latents) - vae.decode(latents).numpy()).max() <= 1e-4
