"""The torch-side ONNX runners (`msc_cascade.onnx_export`: msc_runtime's runners with the torch
side's input contract) and `msc export`: the names kept from before the split, providers chosen
without torch, errors naming the file, `--strict`, and `msc export check` on each graph kind
through the console script. Export parity itself is tested in tests/msc_tokenizers."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msc_core.checkpoint import from_pretrained
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D

pytestmark = pytest.mark.onnx
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-cascade[onnx] extra")
onnx = pytest.importorskip("onnx", reason="onnx is the msc-cascade[onnx] extra")

from msc_cascade import onnx_export  # noqa: E402 - after the extras check
from msc_cascade.export_cli import main as export_main  # noqa: E402
from msc_cascade.onnx_export import OnnxARVAEDecoder, OnnxModelError, OnnxVAEDecoder, OnnxVAEEncoder  # noqa: E402
from msc_runtime import vae as runtime_vae  # noqa: E402

CPU = ["CPUExecutionProvider"]
MSC = Path(sys.executable).parent / "msc"


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return from_pretrained(CausalVAE3D, tiny_vae_dir)


@pytest.fixture(scope="module")
def vae_onnx(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "vae_decoder.onnx"
    report = onnx_export.export_vae_decoder(vae, path)  # the name kept from before the split
    return path, report


@pytest.fixture(scope="module")
def arvae_onnx(tmp_path_factory):
    torch.manual_seed(0)
    arvae = ARVAE(ARVAEConfig.preset("tiny", context_frames=2)).eval()
    path = tmp_path_factory.mktemp("onnx") / "arvae_decoder.onnx"
    onnx_export.export_arvae_decoder(arvae, path)
    return arvae, path


def msc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`msc ARGS` through the console script, in `cwd` (relative paths are relative to it)."""
    return subprocess.run([str(MSC), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_runners_keep_their_names_and_decode_torch_tensors_like_pytorch(vae, vae_onnx, arvae_onnx):
    path, report = vae_onnx
    assert report.exporter == "torch.export" and report.parity_max_abs_err <= 1e-4
    decoder = OnnxVAEDecoder(path, providers=CPU)
    assert isinstance(decoder, runtime_vae.VAEDecoder)  # msc_runtime's runner underneath
    latents = torch.randn(2, 4, 6, 2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vae.decode(latents).numpy()  # not clamped, as the runner by default
    whole = decoder.decode(latents)
    assert np.abs(whole - expected).max() <= 1e-4
    assert np.abs(decoder.decode(latents, chunk_latent_frames=2) - whole).max() <= 1e-5
    video, cache = decoder.decode_chunk(latents[:, :, :1].bfloat16())  # bfloat16 tensors are cast (numpy has none)
    assert video.shape == (2, 3, 1, 16, 24) and len(cache) == len(decoder.cache_spec)
    arvae, arvae_path = arvae_onnx
    tokens = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert np.abs(OnnxARVAEDecoder(arvae_path, providers=CPU).decode(tokens, chunk_frames=1)
                      - arvae.decode(tokens).numpy()).max() <= 1e-4


def test_providers_come_from_onnxruntime_not_torch(vae_onnx, monkeypatch, caplog):
    """onnxruntime-gpu beside a CPU build of torch: CUDA is kept (torch.cuda is not asked); a
    requested provider that cannot run gives one warning naming the file and what is available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_export.resolve_providers(None, "x.onnx") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING):
        decoder = OnnxVAEDecoder(vae_onnx[0], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert decoder.provider == "CPUExecutionProvider"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider" in warnings[0] and "vae_decoder.onnx" in warnings[0]
    assert "available providers: CPUExecutionProvider" in warnings[0]


def test_corrupt_foreign_and_mismatched_files_are_named(vae_onnx, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(vae_onnx[0].read_bytes()[: 2000])  # truncated
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx is not a valid ONNX model.*expected the CausalVAE3D decoder"):
        OnnxVAEDecoder(corrupt)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(OnnxModelError, match="garbage.onnx is not a valid ONNX model"):
        OnnxVAEDecoder(garbage)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX file that msc export did not write
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.randn(1, 2),), str(foreign), dynamo=True, opset_version=18)
    with pytest.raises(OnnxModelError, match="foreign.onnx has no 'msc.graph' metadata"):
        OnnxVAEDecoder(foreign)
    with pytest.raises(OnnxModelError, match=r"holds a 'vae3d_decoder' graph, expected 'arvae_decoder'"):
        OnnxARVAEDecoder(vae_onnx[0])
    with pytest.raises(OnnxModelError, match=r"holds a 'vae3d_decoder' graph, expected 'vae3d_encoder'"):
        OnnxVAEEncoder(vae_onnx[0])
    with pytest.raises(FileNotFoundError, match="missing.onnx not found"):
        OnnxVAEDecoder(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, T, h, w\]"):
        OnnxVAEDecoder(vae_onnx[0], providers=CPU).decode(torch.zeros(1, 3, 2, 2, 2))


def test_export_check_reads_the_kind_from_the_metadata_and_names_bad_files(vae_onnx, tmp_path, capsys):
    assert export_main(["check", str(vae_onnx[0])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["graph"] == "vae3d_decoder" and shown["metadata"]["msc.graph"] == "vae3d_decoder"
    assert shown["version"] == 1 and shown["producer"].startswith("msc ") and "drop them" in shown["description"]
    assert shown["inputs"][0] == {"name": "latents", "type": "float32",
                                  "shape": ["batch", 4, "latent_frames", "latent_height", "latent_width"]}
    assert shown["outputs"][0] == {"name": "video", "type": "float32", "shape": ["batch", 3, "frames", "height", "width"]}
    assert [i["name"] for i in shown["inputs"][1:]] == [f"cache_in_{i}" for i in range(len(shown["inputs"]) - 1)]
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.randn(1, 2),), str(foreign), dynamo=True, opset_version=18)
    for path, message in ((bad, "bad.onnx is not a valid ONNX model"),
                          (foreign, "foreign.onnx has no 'msc.graph' metadata, so it was not written by msc export; "
                                    "expected the CausalVAE3D decoder chunk graph")):
        assert export_main(["check", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert export_main(["vae", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    for command in ("cascade", "vae", "vae-encoder", "arvae"):
        assert export_main([command, "--help"]) == 0
        assert "--strict" in capsys.readouterr().out


def test_msc_export_runs_from_a_run_folder_with_relative_paths_and_check_prints_each_kind(
    vae, vae_onnx, arvae_onnx, tiny_vae_dir, tmp_path
):
    """`msc export vae-encoder --model RUN --out FILE --strict` and `msc export check FILE` through
    the console script, from another working directory, where RUN is a training run folder."""
    shutil.copytree(tiny_vae_dir, tmp_path / "runs" / "vae3d" / "model")
    result = msc("export", "vae-encoder", "--model", "runs/vae3d", "--out", "vae_encoder.onnx", "--strict", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["exporter"] == "torch.export"
    video = torch.rand(2, 3, 9, 16, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(video).numpy()
    assert np.abs(OnnxVAEEncoder(tmp_path / "vae_encoder.onnx", providers=CPU).encode(video) - expected).max() <= 1e-4

    (tmp_path / "graphs").mkdir()
    shutil.copy(vae_onnx[0], tmp_path / "graphs" / "vae_decoder.onnx")
    shutil.copy(arvae_onnx[1], tmp_path / "graphs" / "arvae_decoder.onnx")
    expected_io = {
        "vae_encoder.onnx": ("vae3d_encoder", {"video": ["batch", 3, "frames", "height", "width"]},
                             {"latents": ["batch", 4, "latent_frames", "latent_height", "latent_width"]}),
        "graphs/vae_decoder.onnx": ("vae3d_decoder", {"latents": ["batch", 4, "latent_frames", "latent_height",
                                                                  "latent_width"]},
                                    {"video": ["batch", 3, "frames", "height", "width"]}),
        "graphs/arvae_decoder.onnx": ("arvae_decoder", {"latents": ["batch", "frames", 4, 4],
                                                        "cache_in_0": ["batch", 2, "past_tokens", 16]},
                                      {"video": ["batch", 3, "frames", 16, 16],
                                       "cache_out_0": ["batch", 2, "cache_tokens", 16]}),
    }
    for relative, (kind, inputs, outputs) in expected_io.items():
        result = msc("export", "check", relative, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["file"] == relative and shown["graph"] == kind and shown["version"] == 1
        assert shown["description"] and shown["metadata"]["msc.format"] == "2"
        assert {i["name"]: i["shape"] for i in shown["inputs"] if i["name"] in inputs} == inputs
        assert {o["name"]: o["shape"] for o in shown["outputs"] if o["name"] in outputs} == outputs
        assert {i["type"] for i in shown["inputs"] + shown["outputs"]} == {"float32"}
    result = msc("export", "check", "graphs/missing.onnx", cwd=tmp_path)
    assert result.returncode == 2 and "graphs/missing.onnx" in result.stderr
