"""The cascade denoising step in ONNX (DiT + DDIM update) and the ONNX Runtime cascade decoder.

Slow: exporting the step goes through `torch.export.draft_export` (see `onnx_export`),
about a minute for this tiny DiT on two shared cores.
"""

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

SCHEDULE = {"depth": 3, "grid_schedule": ["spatial", "temporal", "full"]}


@pytest.fixture(scope="module")
def exported(make_cascade, tmp_path_factory):
    model = make_cascade("fps", dit=SCHEDULE)
    directory = tmp_path_factory.mktemp("cascade_onnx")
    reports = onnx_export.export_cascade(model, directory)  # step example: batch 2, 5 frames, 4 x 5
    return model, directory, reports


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
    expected = CascadeDecoder(model, settings).decode(base, seed=5)
    got = runner.decode(base, seed=5)
    assert got.shape == expected.shape == (2, 3, 33, 16, 24)
    assert (got - expected).abs().max() <= 1e-4


def test_verify_refuses_a_different_model(exported, make_cascade):
    model, directory, _ = exported
    drifted = make_cascade("fps", dit=SCHEDULE)
    perturb_parameters(drifted.dit, seed=9, scale=0.05)  # same config, other weights
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"], verify=drifted)
    with pytest.raises(OnnxModelError, match="different cascade config"):
        OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"], verify=make_cascade("fps"))
