"""msc_runtime: run msc's exported ONNX graphs with ONNX Runtime and numpy, without PyTorch.

- `VAEDecoder` / `VAEEncoder`: the CausalVAE3D decoder (chunked, explicit causal cache,
  streaming) and encoder;
- `ARVAEDecoder`: the AR-VAE decoder with its key/value cache;
- `CascadeRefiner`: the cascade decoder's refinement loop (DDIM in numpy over the exported
  step), `decode` of base latents and `upscale` of videos;
- `open_session`: an ONNX Runtime session of an msc graph, providers chosen from what the
  installed build has and the fallback reported; `graphs`: kinds, files, metadata.

Importing this package imports numpy only; ONNX Runtime is imported on first use (install
`msc-runtime[cpu]` or `msc-runtime[gpu]`, never both). torch, msc_core, onnx and pydantic
are never imported.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARVAEDecoder": "msc_runtime.arvae",
    "CascadeRefiner": "msc_runtime.cascade",
    "RefineSettings": "msc_runtime.cascade",
    "VAEDecoder": "msc_runtime.vae",
    "VAEEncoder": "msc_runtime.vae",
    "GraphSession": "msc_runtime.sessions",
    "open_session": "msc_runtime.sessions",
    "GraphRunner": "msc_runtime.binding",
    "OnnxModelError": "msc_runtime.graphs",
    "GraphInfo": "msc_runtime.graphs",
    "LatentSpec": "msc_runtime.graphs",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'msc_runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
