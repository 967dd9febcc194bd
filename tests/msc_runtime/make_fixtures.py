"""Regenerate tests/msc_runtime/fixtures/: tiny exported graphs and their PyTorch outputs.

The msc-runtime tests run without torch, so what they compare against is committed here
(<= 1 MB in all): four graphs exported by msc's exporters from tiny seeded models, and
`expected.npz` with the inputs and the PyTorch outputs of the same models:

- `vae_decoder.onnx` / `vae_encoder.onnx`: a tiny CausalVAE3D (4x temporal, 8x spatial,
  4 latent channels); `vae_decode_*`, `vae_stream_*`, `vae_encode_*`;
- `arvae_decoder.onnx`: a tiny AR-VAE (4 tokens of 4 dims per 16x16 frame); `arvae_*`;
- `cascade_step.onnx` (+ the VAE graphs: the folder is a cascade folder): a tiny sr cascade
  on that VAE; `refine_*` (whole clip), `pieces_*` (windows x tiles), and `upscale_*`: a
  full `CascadeDecoder.upscale` (encode -> refine in windows x tiles -> tiled, chunked
  decode) with its intermediate latents;
- `manifest.json`: the settings and seeds of each case, the exporters and graph formats
  used, and the package versions.

Run it in the workspace environment (torch and the exporters present), from anywhere:

    .venv/bin/python tests/msc_runtime/make_fixtures.py

It uses `msc_tokenizers.onnx_export` / `msc_cascade.onnx_export` (graph format "2") when
present, else the older exporters of `msc_cascade.onnx_export` (format "1", no encoder:
the encoder and upscale cases are then skipped). Rerun it after an exporter change.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.checkpoint import save_pretrained
from msc_core.testing import perturb_parameters
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX_BYTES = 1 << 20

VAE_CONFIG = dict(latent_channels=4, temporal_compression=4, spatial_compression=8, patch_size=4, channels=(4, 8),
                  blocks_per_stage=1, norm_groups=4)
DIT = dict(latent_channels=4, dim=16, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=16)
CASCADE = dict(mode="sr", sample_steps=3, latent_scale=0.8, num_frames=5, height=64, width=64)
# windows x tiles of the refinement and tiles x chunks of the VAE decode (target latent units)
PIECES = dict(window_frames=1, window_overlap=0, tile_size=6, tile_overlap=2)
UPSCALE = dict(steps=2, window_frames=1, window_overlap=0, tile_size=3, tile_overlap=1, vae_chunk_frames=1,
               vae_tile_size=3, vae_tile_overlap=1)


def exporters() -> dict:
    """The export functions: the split exporters (format 2) when installed, else the older ones."""
    cascade = importlib.import_module("msc_cascade.onnx_export")
    try:
        tokenizers = importlib.import_module("msc_tokenizers.onnx_export")
    except ImportError:
        tokenizers = None
    found = {
        "vae_decoder": getattr(tokenizers, "export_vae_decoder", None) or cascade.export_vae_decoder,
        "vae_encoder": getattr(tokenizers, "export_vae_encoder", None),  # TODO: none before the split exporters
        "arvae_decoder": getattr(tokenizers, "export_arvae_decoder", None) or cascade.export_arvae_decoder,
        "cascade_step": cascade.export_cascade_step,
    }
    return found


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (FX node, stack trace, name scopes: half of a
    tiny graph's bytes) so the fixtures stay small; the computation is untouched."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def graph_format(path: Path) -> str:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get("msc.format", "1")


def main() -> int:
    torch.manual_seed(0)
    export = exporters()
    work = Path(tempfile.mkdtemp(prefix="msc-runtime-fixtures-"))
    out = work / "fixtures"
    out.mkdir()
    arrays: dict[str, np.ndarray] = {}
    manifest: dict = {"cases": {}, "graphs": {}, "skipped": []}
    try:
        # --- the 3D VAE
        vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig(**VAE_CONFIG)), seed=0, scale=0.05).eval()
        vae_dir = work / "vae"
        save_pretrained(vae, vae_dir)
        export["vae_decoder"](vae, out / "vae_decoder.onnx")
        gen = torch.Generator().manual_seed(1)
        z = torch.randn(1, 4, 3, 2, 3, generator=gen)
        with torch.no_grad():
            arrays["vae_decode_latents"] = z.numpy()
            arrays["vae_decode_video"] = vae.decode(z).numpy()  # raw: not clamped
            arrays["vae_decode_chunked_video"] = vae.decode_chunked(z, 1).numpy()
            stream = [vae.decode_chunk(z[:, :, :1])]
            stream.append(vae.decode_chunk(z[:, :, 1:3], stream[-1][1]))
            arrays["vae_stream_video"] = torch.cat([v for v, _ in stream], dim=2).numpy()
        manifest["cases"]["vae_decode"] = {"chunked": 1, "stream_chunks": [1, 2]}

        if export["vae_encoder"] is not None:
            export["vae_encoder"](vae, out / "vae_encoder.onnx")
            video = torch.rand(1, 3, 5, 16, 24, generator=gen) * 2 - 1
            with torch.no_grad():
                arrays["vae_encode_video"] = video.numpy()
                arrays["vae_encode_latents"] = vae.encode(video).numpy()
        else:
            manifest["skipped"].append("vae_encoder: msc_tokenizers.onnx_export.export_vae_encoder does not exist yet")

        # --- the AR-VAE
        torch.manual_seed(2)
        arvae = ARVAE(ARVAEConfig.preset("tiny", context_frames=2, width=16)).eval()
        export["arvae_decoder"](arvae, out / "arvae_decoder.onnx")
        tokens = torch.randn(1, 3, 4, 4, generator=gen)
        with torch.no_grad():
            arrays["arvae_latents"] = tokens.numpy()
            arrays["arvae_video"] = arvae.decode(tokens).numpy()

        # --- the cascade (sr) on the VAE
        config = CascadeConfig(dit=DIT, vae_path=str(vae_dir), **CASCADE)
        torch.manual_seed(3)
        model = CascadeModel(config)
        perturb_parameters(model.dit, seed=3, scale=0.2)
        model = model.eval()
        export["cascade_step"](model, out / "cascade_step.onnx")
        base = torch.randn(1, 4, 2, 2, 2, generator=gen)
        arrays["refine_base"] = base.numpy()
        with torch.no_grad():
            arrays["refine_latents"] = CascadeDecoder(model).refine(base, seed=5).numpy()
            pieces = CascadeDecoder(model, CascadeDecodeSettings(**PIECES))
            arrays["pieces_latents"] = pieces.refine(base, seed=5).numpy()
        manifest["cases"]["refine"] = {"seed": 5, "settings": {}}
        manifest["cases"]["pieces"] = {"seed": 5, "settings": PIECES}
        if export["vae_encoder"] is not None:
            decoder = CascadeDecoder(model, CascadeDecodeSettings(**UPSCALE))
            video = torch.rand(1, 3, 5, 8, 8, generator=gen) * 2 - 1
            with torch.no_grad():
                encoded = decoder.encode(video)
                refined = decoder.refine(encoded, seed=7)
                arrays["upscale_input"] = video.numpy()
                arrays["upscale_base"] = encoded.numpy()
                arrays["upscale_latents"] = refined.numpy()
                arrays["upscale_video"] = decoder.upscale(video, seed=7).numpy()  # clamped to [-1, 1]
            manifest["cases"]["upscale"] = {"seed": 7, "settings": UPSCALE}
        else:
            manifest["skipped"].append("upscale: needs the VAE encoder graph")

        np.savez_compressed(out / "expected.npz", **arrays)
        for path in sorted(out.glob("*.onnx")):
            strip_debug_info(path)
            manifest["graphs"][path.name] = {"format": graph_format(path), "bytes": path.stat().st_size}
        manifest["versions"] = {name: importlib.metadata.version(name) for name in
                                ("torch", "onnx", "onnxruntime-gpu", "msc-core", "msc-tokenizers", "msc-cascade")
                                if _installed(name)}
        manifest["regenerate"] = ".venv/bin/python tests/msc_runtime/make_fixtures.py"
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        total = sum(p.stat().st_size for p in out.iterdir())
        if total > MAX_BYTES:
            sizes = {p.name: p.stat().st_size for p in out.iterdir()}
            raise SystemExit(f"fixtures take {total} bytes (> {MAX_BYTES}): shrink the models ({sizes})")
        shutil.rmtree(FIXTURES, ignore_errors=True)
        shutil.copytree(out, FIXTURES)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"fixtures": str(FIXTURES), "bytes": total, "graphs": manifest["graphs"],
                      "skipped": manifest["skipped"]}, indent=2))
    return 0


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
