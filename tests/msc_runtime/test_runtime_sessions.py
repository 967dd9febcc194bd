"""Providers and the fallback warning; wrong, corrupt and mismatched files; bad inputs.

A CUDA provider requested where no GPU can run it gives exactly one warning that names
the provider and the available ones, and the session runs on the CPU; ONNX Runtime's own
native lines about it are silenced. Every file problem is one `OnnxModelError` naming the
file and what was expected. None of this depends on torch.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from msc_runtime import ARVAEDecoder, CascadeRefiner, OnnxModelError, RefineSettings, VAEDecoder, VAEEncoder
from msc_runtime.graphs import GRAPH_KINDS, SIGNATURES
from msc_runtime.sessions import open_session

CPU = ["CPUExecutionProvider"]


def runtime_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("msc_runtime")]


# --------------------------------------------------------------------------- providers


def test_cuda_requested_without_a_gpu_warns_once_and_runs_on_cpu(fixtures, caplog):
    available = ort.get_available_providers()
    with caplog.at_level(logging.INFO, logger="msc_runtime"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoder = VAEDecoder(fixtures / "vae_decoder.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if decoder.provider == "CUDAExecutionProvider":
        pytest.skip("a GPU is usable here: the fallback cannot happen")
    assert decoder.provider == "CPUExecutionProvider"
    (message,) = runtime_warnings(caplog)
    assert "vae_decoder.onnx" in message and "CUDAExecutionProvider" in message
    assert f"available providers: {', '.join(available)}" in message
    assert not caught  # no second warning from onnxruntime's Python layer
    assert any("running on CPUExecutionProvider" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


class FallbackSession:
    """onnxruntime-gpu's behaviour on a machine without a GPU: CUDA listed, the session on CPU."""

    def __init__(self, path, options=None, providers=None):
        self.inner = REAL_SESSION(path, options, providers=[p for p in providers if p == "CPUExecutionProvider"])

    def __getattr__(self, name):
        return getattr(self.inner, name)


REAL_SESSION = ort.InferenceSession


def test_gpu_build_without_a_gpu_warns_once_by_default(fixtures, caplog, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallbackSession)
    with caplog.at_level(logging.INFO, logger="msc_runtime"):
        decoder = VAEDecoder(fixtures / "vae_decoder.onnx")  # default: CUDA, then CPU
    assert decoder.provider == "CPUExecutionProvider"
    (message,) = runtime_warnings(caplog)
    assert "CUDAExecutionProvider requested but not active" in message
    assert "available providers: CUDAExecutionProvider, CPUExecutionProvider" in message
    assert "no usable GPU" in message


def test_cpu_build_by_default_runs_on_cpu_without_a_warning(fixtures, caplog, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="msc_runtime"):
        decoder = VAEDecoder(fixtures / "vae_decoder.onnx")
    assert decoder.provider == "CPUExecutionProvider"
    assert runtime_warnings(caplog) == []


def test_fallback_in_a_fresh_process_prints_exactly_one_line(fixtures):
    """What a user sees on the console: our warning, not ONNX Runtime's native lines as well."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "from msc_runtime.sessions import open_session\n"
        f"g = open_session({str(fixtures / 'vae_decoder.onnx')!r}, 'vae3d_decoder', providers='cuda,cpu')\n"
        "print(g.provider)\n"
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    if run.stdout.strip() == "CUDAExecutionProvider":
        pytest.skip("a GPU is usable here")
    assert run.stdout.strip() == "CPUExecutionProvider"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("WARNING vae_decoder.onnx: CUDAExecutionProvider"), run.stderr


def test_unknown_provider_and_bad_threads_are_refused(fixtures):
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider 'FPGA'.*CPUExecutionProvider"):
        VAEDecoder(fixtures / "vae_decoder.onnx", providers=["FPGA"])
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        VAEDecoder(fixtures / "vae_decoder.onnx", providers=CPU, threads=0)
    assert VAEDecoder(fixtures / "vae_decoder.onnx", providers="cpu", threads=1).provider == "CPUExecutionProvider"


# --------------------------------------------------------------------------- files


def test_wrong_kind_names_the_file_and_the_expected_graph(fixtures):
    with pytest.raises(OnnxModelError, match=r"vae_decoder\.onnx holds a 'vae3d_decoder' graph, expected 'arvae_decoder'"):
        ARVAEDecoder(fixtures / "vae_decoder.onnx", providers=CPU)
    with pytest.raises(OnnxModelError, match=r"cascade_step\.onnx holds a 'cascade_step' graph, expected 'vae3d_encoder'"):
        VAEEncoder(fixtures / "cascade_step.onnx", providers=CPU)


def test_missing_corrupt_and_foreign_files(fixtures, tmp_path, edited):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx not found; expected the CausalVAE3D decoder"):
        VAEDecoder(tmp_path / "nope.onnx", providers=CPU)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf \x00\xff" * 10)
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx is not a valid ONNX model .*expected the CausalVAE3D decoder"):
        VAEDecoder(corrupt, providers=CPU)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((fixtures / "vae_decoder.onnx").read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=r"truncated\.onnx is not a valid ONNX model"):
        VAEDecoder(truncated, providers=CPU)
    foreign = edited("vae_decoder.onnx", lambda m: m.clear(), "foreign.onnx")
    with pytest.raises(OnnxModelError, match=r"foreign\.onnx has no 'msc.graph' metadata, so it was not written by msc"):
        VAEDecoder(foreign, providers=CPU)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        VAEDecoder(fixtures, providers=CPU)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m.pop("msc.cache"), r"lacks the metadata 'msc.cache'"),
        (lambda m: m.update({"msc.cache": "[{"}), r"metadata 'msc.cache' is not valid JSON"),
        (lambda m: m.update({"msc.cache": json.dumps(json.loads(m["msc.cache"])[:1])}),
         r"has \d+ inputs \(latents, cache_in_0.*\) but the CausalVAE3D decoder .* has 2 .*describes 1 cache tensors"),
        (lambda m: m.update({"msc.latent_spec": m["msc.latent_spec"].replace('"channels": 4', '"channels": 8')}),
         r"input 'latents' has shape \['batch', 4, .*gives channels=8 at axis 1"),
        (lambda m: m.update({"msc.latent_spec": '{"layout": "grid"}'}), r"metadata 'msc.latent_spec' cannot be read"),
        (lambda m: m.update({"msc.format": "7"}), r"format '7'; this msc-runtime reads formats '1' and '2'"),
        (lambda m: m.update({"msc.graph": "arvae_decoder"}), r"holds a 'arvae_decoder' graph, expected 'vae3d_decoder'"),
    ],
    ids=["missing-key", "bad-json", "cache-count", "channels", "latent-spec", "format", "claims-other-kind"],
)
def test_mismatched_metadata_is_one_clear_error(edited, change, match):
    path = edited("vae_decoder.onnx", change, "edited.onnx")
    with pytest.raises(OnnxModelError, match=match) as err:
        VAEDecoder(path, providers=CPU)
    assert str(path) in str(err.value)


def test_a_vae_graph_stamped_as_an_arvae_graph_fails_on_its_signature(edited):
    arvae_meta = {}

    def as_arvae(m):
        arvae_meta.update(m)
        m["msc.graph"] = "arvae_decoder"
        m["msc.latent_spec"] = json.dumps({"layout": "tokens", "channels": 4, "tokens_per_frame": 4})
        m["msc.cache"] = json.dumps({"layers": 1, "heads": 2, "head_dim": 8, "tokens_per_frame": 4})
        m.pop("msc.chunk_rule", None)

    path = edited("vae_decoder.onnx", as_arvae, "stamped.onnx")
    with pytest.raises(OnnxModelError, match=r"stamped\.onnx has \d+ inputs .* but the ARVAE decoder graph .* has 3"):
        ARVAEDecoder(path, providers=CPU)


def test_cascade_folder_of_two_exports_is_refused(fixtures, tmp_path, edited):
    for name in ("cascade_step.onnx", "vae_encoder.onnx"):
        if (fixtures / name).exists():
            (tmp_path / name).write_bytes((fixtures / name).read_bytes())
    edited("vae_decoder.onnx", lambda m: m.update(
        {"msc.latent_spec": m["msc.latent_spec"].replace('"spatial_compression": 8', '"spatial_compression": 4')}))
    with pytest.raises(OnnxModelError, match=r"works in latent space .* but .*vae_decoder\.onnx has .*different exports"):
        CascadeRefiner(tmp_path, providers=CPU)
    with pytest.raises(NotADirectoryError, match="expected a folder holding cascade_step.onnx"):
        CascadeRefiner(tmp_path / "missing", providers=CPU)


def test_every_kind_has_a_signature():
    assert set(SIGNATURES) == set(GRAPH_KINDS)


# --------------------------------------------------------------------------- inputs


def test_bad_inputs_are_value_errors_naming_the_argument_and_the_file(fixtures, expected):
    decoder = VAEDecoder(fixtures / "vae_decoder.onnx", providers=CPU)
    z = expected["vae_decode_latents"]
    cases = [
        (z[:, :3], r"latents must be \[B, 4, T, h, w\]: axis 1 must be 4"),
        (z[0], r"latents must be \[B, 4, T, h, w\] \(5 dimensions\)"),
        (z.astype(np.int32), r"latents must be a floating-point array .*got int32"),
        (np.where(z > 0, np.nan, z), r"latents holds \d+ NaN or infinite value"),
        (z[:, :, :0], r"latents has shape .* with a zero-sized axis 2"),
        ("text", r"latents must be \[B, 4, T, h, w\] \(5 dimensions\)"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            decoder.decode(bad)
        assert "vae_decoder.onnx" in str(err.value)
    n = len(decoder.cache_spec)
    with pytest.raises(ValueError, match=rf"cache must be the {n} arrays a previous call returned, got 1 arrays"):
        decoder.decode_chunk(z, [np.zeros(1)])
    _, cache = decoder.decode_chunk(z[:, :, :1])
    with pytest.raises(ValueError, match=r"latent chunk 1 has shape .*chunks of a clip differ in frames only"):
        list(decoder.stream([z, z[:, :, :, :1]]))
    with pytest.raises(ValueError, match=r"cache\[0\] must be"):
        decoder.decode_chunk(z[:, :, :, :1], cache)


def test_encoder_checks_the_frame_rule_size_and_range(fixtures, need):
    need("vae_encode_video")
    encoder = VAEEncoder(fixtures / "vae_encoder.onnx", providers=CPU)
    video = np.zeros((1, 3, 5, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"video has 4 frames; the encoder reads 1 \+ 4 k frames, nearest valid: 1 or 5"):
        encoder.encode(video[:, :, :4])
    with pytest.raises(ValueError, match=r"sides divisible by 8"):
        encoder.encode(video[:, :, :, :12])
    with pytest.raises(ValueError, match=r"values span \[0, 255\]; videos are floats in \[-1, 1\]"):
        encoder.encode(video + np.linspace(0, 255, 16, dtype=np.float32))
    with pytest.raises(ValueError, match=r"map 0..255 pixels with video / 127.5 - 1"):
        encoder.encode(video.astype(np.uint8))


def test_refine_settings_are_checked(fixtures):
    with pytest.raises(ValueError, match="tile_overlap=4 must be smaller than tile_size=4"):
        RefineSettings(tile_size=4, tile_overlap=4)
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        RefineSettings(steps=0)
    with pytest.raises(ValueError, match=r"steps=5000 exceeds the model's num_timesteps=1000"):
        CascadeRefiner(fixtures, RefineSettings(steps=5000), providers=CPU)
    refiner = CascadeRefiner(fixtures, providers=CPU)
    with pytest.raises(ValueError, match=r"base_latents must be \[B, 4, t, h, w\].*cascade_step\.onnx"):
        refiner.refine(np.zeros((1, 3, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        refiner.refine(np.zeros((1, 4, 2, 2, 2), np.float32), seed=-1)


def test_missing_onnxruntime_names_both_extras(tmp_path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import msc_runtime\n"
        "from msc_runtime.sessions import open_session\n"
        "try:\n"
        "    open_session(sys.argv[1], 'vae3d_decoder')\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err)\n"
    )
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    run = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=60)
    assert "msc-runtime[cpu]" in run.stdout and "msc-runtime[gpu]" in run.stdout and "cannot share" in run.stdout, run


def test_missing_pyav_names_the_video_extra(monkeypatch, tmp_path):
    from msc_runtime import video

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ModuleNotFoundError, match=r"msc-runtime\[video\]"):
        video.read_video(tmp_path / "x.mp4")


def test_open_session_reports_the_graph(fixtures):
    graph = open_session(fixtures / "vae_decoder.onnx", None, providers=CPU)
    assert graph.kind == "vae3d_decoder" and graph.provider == "CPUExecutionProvider" and graph.device == "cpu"
    assert graph.input_names[0] == "latents" and graph.output_names[0] == "video"
    assert graph.info.latent_spec.channels == 4 and graph.info.drop_first_frames == 3
