"""The `tiled` MSC attention backend exports to ONNX and matches PyTorch in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig

pytestmark = pytest.mark.onnx


# the paper options (light cone, anchored stride, key-aware gates) export as well
OPTIONS = {"default": {}, "paper_options": dict(light_cone_growth=1, stride_anchor="fixed", gate_keys=True)}


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_tiled_backend_exports_and_matches_onnx_runtime(tmp_path, options: dict) -> None:
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-core[onnx] extra")
    torch.manual_seed(0)
    module = MSCAttention(
        MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=3, pool=2, temporal_stride=2,
                           tile_size=4, noise_embed_dim=16, backend="tiled", **options)
    ).eval()
    torch.nn.init.normal_(module.gate.mlp[-1].weight, std=0.5)  # noise-dependent gates
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 9, 7, 32, generator=gen)  # borders, partial tiles and pool cells
    noise = torch.randint(0, 1000, (1, 5), generator=gen).float()

    path = tmp_path / "msc_attention.onnx"
    # the dynamo exporter handles the tiled backend: index_select gathers + masked SDPA
    torch.onnx.export(module, (x, noise), str(path), dynamo=True, opset_version=18,
                      input_names=["x", "noise"], output_names=["out"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy(), "noise": noise.numpy()})
    with torch.no_grad():
        expected = module(x, noise).numpy()
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-4
