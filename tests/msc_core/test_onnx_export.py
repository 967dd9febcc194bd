"""msc_core.onnx_export: the draft_export fallback (warned, or refused when strict), named
dimensions, metadata, the float64 check and external data above a threshold."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.onnx
onnx = pytest.importorskip("onnx", reason="onnx is the msc-core[onnx] extra")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime comes with the msc-core[onnx] extra (msc-runtime)")

from msc_core import onnx_export  # noqa: E402 - after the extras check
from msc_core.onnx_export import ExportFallbackError, OnnxExportError, export_graph  # noqa: E402


class DataDependentBranch(nn.Module):
    """`torch.export` refuses a Python branch on a tensor's value; draft_export takes the example's branch."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.proj(x) * 2
        return self.proj(x) - 1


class Projection(nn.Module):
    """A plain module with 64 x 64 weights (16 KB), for the external-data threshold."""

    def __init__(self, coefficient_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 64, dtype=coefficient_dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.proj(x) * self.scale).to(x.dtype)


def export(module: nn.Module, x: torch.Tensor, path, **kwargs):
    batch = torch.export.Dim("batch", min=1, max=64)
    return export_graph(
        module, (x,), path, "test_graph", input_names=["x"], output_names=["y"], dynamic_shapes=({0: batch},),
        dim_names={"x": {0: "batch"}, "y": {0: "batch"}}, metadata={"msc.config": "{}", "msc.latent_spec": "{}"},
        description="a test graph", producer_version="0.0.0", **kwargs,
    )


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_a_draft_export_fallback_is_a_warning_naming_the_reason_and_strict_refuses_it(tmp_path, caplog):
    torch.manual_seed(0)
    module = DataDependentBranch().eval()
    x = torch.rand(3, 8) + 0.1  # positive sum: the example takes the first branch
    with caplog.at_level(logging.WARNING, logger="msc_core.onnx_export"):
        exporter, data = export(module, x, tmp_path / "fallback.onnx")
    assert exporter == "draft_export" and data is None
    warnings = [r for r in caplog.records if r.name == "msc_core.onnx_export" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "torch.export cannot trace the test_graph graph" in message and "draft_export" in message
    # the reason: the exception's type and the first line of its message
    assert re.search(r"graph \(\w+: [^)]*data-dependent", message) and "--strict makes this an error" in message
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "fallback.onnx")).metadata_props}
    assert metadata["msc.exporter"] == "draft_export"
    probe = np.random.default_rng(0).random((5, 8), dtype=np.float32) + 0.1  # another batch, same branch
    with torch.no_grad():
        assert np.abs(run(tmp_path / "fallback.onnx", probe) - module(torch.from_numpy(probe)).numpy()).max() <= 1e-5

    with pytest.raises(ExportFallbackError, match=r"torch\.export cannot trace the test_graph graph \(\w+(Error|Exception)?.*"
                                                   r"strict export refuses the draft_export fallback"):
        export(module, x, tmp_path / "strict.onnx", strict=True)
    assert not (tmp_path / "strict.onnx").exists()


def test_a_graph_known_to_need_draft_export_is_not_warned_about(tmp_path, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="msc_core.onnx_export"):
        exporter, _ = export(DataDependentBranch().eval(), torch.rand(3, 8) + 0.1, tmp_path / "g.onnx", draft=True,
                             strict=True)
    assert exporter == "draft_export"
    assert not [r for r in caplog.records if r.name == "msc_core.onnx_export"]


def test_dimensions_metadata_and_model_fields_follow_the_contract(tmp_path):
    torch.manual_seed(0)
    exporter, _ = export(Projection().eval(), torch.randn(2, 64), tmp_path / "p.onnx", strict=True)
    assert exporter == "torch.export"
    proto = onnx.load(str(tmp_path / "p.onnx"))
    assert onnx_export.dim_params(proto) == {"x": ["batch", 64], "y": ["batch", 64]}
    assert proto.producer_name == "msc" and proto.producer_version == "0.0.0"
    assert proto.model_version == 1 and proto.doc_string == "a test graph"
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata == {"msc.graph": "test_graph", "msc.format": "2", "msc.exporter": "torch.export",
                        "msc.opset": "18", "msc.config": "{}", "msc.latent_spec": "{}"}
    meta = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.version == 1 and meta.description == "a test graph" and meta.producer_name == "msc"


def test_a_float64_coefficient_table_is_refused(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(OnnxExportError, match=r"the test_graph graph computes in float64 \(.*float32 throughout"):
        export(Projection(torch.float64).eval(), torch.randn(2, 64), tmp_path / "double.onnx")
    assert not (tmp_path / "double.onnx").exists()


def test_weights_over_the_threshold_go_to_external_data_and_the_graph_still_loads(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = Projection().eval()
    path = tmp_path / "big.onnx"
    x = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)  # the module-level default, forced small
    _, data = export(module, torch.randn(2, 64), path)
    assert data == tmp_path / "big.onnx.data" and data.stat().st_size >= 64 * 64 * 4
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer if t.name.endswith("weight"))
    assert path.stat().st_size < 4096  # the graph alone
    assert np.abs(run(path, x) - expected).max() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # no temporary files left

    monkeypatch.undo()  # the default threshold (2 GB): weights inline, the stale data file removed
    _, data = export(module, torch.randn(2, 64), path, external_data_threshold=None)
    assert data is None and sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]
    assert np.abs(run(path, x) - expected).max() <= 1e-5
