"""The cascade denoising step in ONNX (DiT + DDIM update) and the ONNX Runtime cascade decoder:
step parity at new shapes, named dimensions, the loop's settings in the metadata, no float64,
decode and upscale equal to PyTorch (numpy noise per seed), `msc export check` on the step.

Slow: exporting the step goes through `torch.export.draft_export` (see `onnx_export`),
about a minute for this tiny DiT on two shared cores.
"""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_core.testing import perturb_parameters

pytestmark = [pytest.mark.onnx, pytest.mark.slow]
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-cascade[onnx] extra")
onnx = pytest.importorskip("onnx", reason="onnx is the msc-cascade[onnx] extra")

from msc_cascade import onnx_export  # noqa: E402 - after the extras check
from msc_cascade.onnx_export import OnnxCascadeDecoder, OnnxModelError, OnnxParityError  # noqa: E402
from msc_core.onnx_export import dim_params, float64_uses  # noqa: E402

SCHEDULE = {"depth": 3, "grid_schedule": ["spatial", "temporal", "full"]}
EXPORT_LOG: list[logging.LogRecord] = []  # what msc_core.onnx_export logged while `exported` ran


class Records(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        EXPORT_LOG.append(record)


@pytest.fixture(scope="module")
def exported(make_cascade, tmp_path_factory):
    model = make_cascade("fps", dit=SCHEDULE)
    directory = tmp_path_factory.mktemp("cascade_onnx")
    log, records = logging.getLogger("msc_core.onnx_export"), Records()
    log.addHandler(records)
    try:  # strict: the step's draft_export is by design, not a fallback
        reports = onnx_export.export_cascade(model, directory, strict=True)  # step example: batch 2, 5 frames, 4 x 5
    finally:
        log.removeHandler(records)
    return model, directory, reports


def test_export_writes_the_step_and_both_vae_graphs_without_a_fallback_warning(exported):
    _, directory, reports = exported
    assert sorted(p.name for p in directory.iterdir()) == ["cascade_step.onnx", "vae_decoder.onnx", "vae_encoder.onnx"]
    assert {k: r.exporter for k, r in reports.items()} == {
        "cascade_step": "draft_export", "vae3d_decoder": "torch.export", "vae3d_encoder": "torch.export"}
    assert not [r for r in EXPORT_LOG if r.levelno >= logging.WARNING]


def test_step_graph_is_float32_with_named_dimensions_and_the_loop_settings(exported):
    model, _, reports = exported
    proto = onnx.load(str(reports[onnx_export.CASCADE_STEP].path))
    assert float64_uses(proto) == []
    grid = ["batch", 4, "latent_frames", "latent_height", "latent_width"]
    assert dim_params(proto) == {"x_t": grid, "base_up": grid, "t": ["batch"], "t_next": ["batch"], "x_next": grid}
    assert {i.name: i.type.tensor_type.elem_type for i in proto.graph.input} == {
        "x_t": onnx.TensorProto.FLOAT, "base_up": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.INT64,
        "t_next": onnx.TensorProto.INT64}
    assert not [d for v in proto.graph.value_info for d in v.type.tensor_type.shape.dim
                if re.fullmatch(r"s\d+", d.dim_param)]
    metadata = {p.key: p.value for p in proto.metadata_props}
    cfg = model.config
    assert {k: metadata[k] for k in ("msc.graph", "msc.format", "msc.exporter", "msc.latent_scale", "msc.num_timesteps",
                                     "msc.sample_steps", "msc.mode", "msc.conditioning", "msc.patch_size",
                                     "msc.window", "msc.chunk")} == {
        "msc.graph": "cascade_step", "msc.format": "2", "msc.exporter": "draft_export",
        "msc.latent_scale": repr(cfg.latent_scale), "msc.num_timesteps": "1000", "msc.sample_steps": "3",
        "msc.mode": "fps", "msc.conditioning": "latent", "msc.patch_size": "1", "msc.window": "2", "msc.chunk": "2"}
    assert json.loads(metadata["msc.config"])["dit"]["depth"] == 3
    assert proto.model_version == 1 and proto.producer_name == "msc" and "ddim_timestep_grid(1000" in proto.doc_string


def test_step_graph_passes_the_checker_and_matches_pytorch_at_new_shapes(exported):
    model, directory, reports = exported
    report = reports[onnx_export.CASCADE_STEP]
    onnx.checker.check_model(onnx.load(str(report.path)), full_check=True)
    assert report.parity_max_abs_err <= 1e-4
    session, _ = onnx_export.open_session(report.path, onnx_export.CASCADE_STEP, ["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    # batch / frames / size differ from the export; padding in every grid kind; first and last DDIM steps
    for (B, T, H, W), (t, t_next) in [((1, 1, 2, 2), (999, 665)), ((3, 6, 5, 7), (332, -1)), ((2, 9, 4, 3), (500, 499))]:
        x, base = torch.randn(B, 4, T, H, W, generator=gen), torch.randn(B, 4, T, H, W, generator=gen)
        tt, tn = torch.full((B,), t), torch.full((B,), t_next)
        (out,) = session.run(None, {"x_t": x.numpy(), "base_up": base.numpy(), "t": tt.numpy(), "t_next": tn.numpy()})
        with torch.no_grad():
            expected = model.denoise_step(x, base, tt, tn)
        assert np.abs(out - expected.numpy()).max() <= 1e-4, (B, T, H, W)


def test_onnx_runtime_decoder_reproduces_the_pytorch_decode(exported):
    model, directory, _ = exported
    settings = CascadeDecodeSettings(window_frames=4, window_overlap=1, vae_chunk_frames=2, steps=3)
    runner = OnnxCascadeDecoder(directory, settings, providers=["CPUExecutionProvider"], verify=model)
    assert runner.parity_max_abs_err <= 1e-4
    assert set(runner.providers.values()) == {"CPUExecutionProvider"}
    base = torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    reference = CascadeDecoder(model, settings)
    expected = reference.decode(base, seed=5)
    got = runner.decode(base, seed=5)
    assert got.shape == expected.shape == (2, 3, 33, 16, 24)
    assert (got - expected).abs().max() <= 1e-4
    # the noise is numpy's default_rng(seed): deterministic per seed, in both backends
    assert torch.equal(runner.refine(base, seed=5), runner.refine(base, seed=5))
    assert torch.equal(reference.refine(base, seed=5), reference.refine(base, seed=5))
    assert (runner.refine(base, seed=6) - reference.refine(base, seed=6)).abs().max() <= 1e-4
    assert not torch.allclose(runner.refine(base, seed=6), runner.refine(base, seed=5))


def test_upscale_runs_in_onnx_runtime_like_pytorch(exported):
    """encode (vae_encoder.onnx) -> refine -> decode: the torch-side runner and msc_runtime's
    torch-free CascadeRefiner both equal `CascadeDecoder.upscale`."""
    from msc_runtime.cascade import CascadeRefiner, RefineSettings

    model, directory, _ = exported
    settings = CascadeDecodeSettings(steps=2, vae_chunk_frames=1)
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1  # 3 latent frames
    reference = CascadeDecoder(model, settings)
    runner = OnnxCascadeDecoder(directory, settings, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        base = reference.encode(video)
        assert (runner.encode(video) - base).abs().max() <= 1e-4
        assert (runner.refine(base, seed=3) - reference.refine(base, seed=3)).abs().max() <= 1e-4
        expected = reference.upscale(video, seed=3)
    got = runner.upscale(video, seed=3)
    assert got.shape == expected.shape == (1, 3, 33, 16, 16) and (got - expected).abs().max() <= 1e-4
    assert runner.providers == {"cascade_step": "CPUExecutionProvider", "vae3d_decoder": "CPUExecutionProvider",
                                "vae3d_encoder": "CPUExecutionProvider"}
    refiner = CascadeRefiner(directory, RefineSettings(steps=2, vae_chunk_frames=1), providers=["CPUExecutionProvider"])
    assert np.abs(refiner.refine(base.numpy(), seed=3) - reference.refine(base, seed=3).numpy()).max() <= 1e-4
    assert np.abs(refiner.upscale(video.numpy(), seed=3) - expected.numpy()).max() <= 1e-4


def test_msc_export_check_prints_the_step_signature_from_a_relative_path(exported):
    _, directory, _ = exported
    result = subprocess.run([str(Path(sys.executable).parent / "msc"), "export", "check", "cascade_step.onnx"],
                            cwd=directory, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    grid = ["batch", 4, "latent_frames", "latent_height", "latent_width"]
    assert shown["graph"] == "cascade_step" and shown["exporter"] == "draft_export" and shown["version"] == 1
    assert shown["inputs"] == [{"name": "x_t", "type": "float32", "shape": grid},
                               {"name": "base_up", "type": "float32", "shape": grid},
                               {"name": "t", "type": "int64", "shape": ["batch"]},
                               {"name": "t_next", "type": "int64", "shape": ["batch"]}]
    assert shown["outputs"] == [{"name": "x_next", "type": "float32", "shape": grid}]
    assert shown["metadata"]["msc.mode"] == "fps" and shown["metadata"]["msc.config"]["mode"] == "fps"


def test_verify_refuses_a_different_model(exported, make_cascade):
    model, directory, _ = exported
    drifted = make_cascade("fps", dit=SCHEDULE)
    perturb_parameters(drifted.dit, seed=9, scale=0.05)  # same config, other weights
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"], verify=drifted)
    with pytest.raises(OnnxModelError, match="different cascade config"):
        OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"], verify=make_cascade("fps"))
