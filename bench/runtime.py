"""msc-runtime: ONNX Runtime (numpy, no torch) vs PyTorch eager, environment sizes, IOBinding.
Last line: one JSON object.

    flock /tmp/msc-bench.lock .venv/bin/python bench/runtime.py              # workspace: ORT vs torch
    .venvs/msc-runtime/bin/python bench/runtime.py                          # torch-free: ORT only

- `vae_decode`: one decode of a clip with the tiny CausalVAE3D (`CausalVAE3DConfig.preset("tiny")`,
  4 latent channels, 4x temporal / 8x spatial, random weights): latents `[1, 4, 5, 8, 8]` ->
  video 17 x 64 x 64, in one call (`whole`) and one latent frame per call (`chunked`, the
  streaming decode). `torch_ms` = `CausalVAE3D.decode` / `decode_chunked`; `ort_ms` =
  `msc_runtime.VAEDecoder.decode`; `max_abs_err` between them.
- `cascade_refine`: one full `refine` (condition, noise, `--steps` DDIM steps over the
  exported step, / latent_scale) of a tiny sr cascade (DiT dim 32, depth 2, on that VAE) from
  a base latent `[1, 4, 2, 4, 4]` to `[1, 4, 2, 16, 16]`, and the whole `decode` (refine + VAE
  decode to 5 x 128 x 128). `torch_ms` = `CascadeDecoder`; `ort_ms` = `msc_runtime.CascadeRefiner`.
- Median wall time over `--repeats` runs after one warm-up, on CPU, `--threads` intra-op
  threads for both (default 1: a loaded 2-core machine; both libraries' defaults differ).
  Graphs are exported with msc's exporters into a temporary folder (minutes: draft_export of
  the step). Without torch (the msc-runtime environment) the ORT timings use the committed
  test fixtures instead (`tests/msc_runtime/fixtures`, smaller models) and torch is null.
- `env_bytes`: `du -sb` of `.venvs/msc-runtime` and `.venvs/msc-cascade` (CI's per-member
  environments: the dev group's pytest included) or null when absent; create them with
      UV_PROJECT_ENVIRONMENT=.venvs/msc-runtime python3 -m uv sync --locked --package msc-runtime --extra cpu --extra video
      UV_PROJECT_ENVIRONMENT=.venvs/msc-cascade python3 -m uv sync --locked --package msc-cascade --extra onnx
- `cuda`: only when ONNX Runtime runs on a GPU here: the cascade refine with IOBinding
  (condition bound once per window, x_t on the device between steps) vs plain `run`
  (host copies every step), on a 4x larger latent; null otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "msc_runtime" / "fixtures"
CPU = ["CPUExecutionProvider"]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (ORT's first run allocates and optimises)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def env_bytes() -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in ("msc-runtime", "msc-cascade"):
        path = ROOT / ".venvs" / name
        if not path.is_dir():
            out[name] = None
            continue
        du = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
        out[name] = int(du.stdout.split()[0])
    return out


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- with torch


def build_and_export(directory: Path, steps: int) -> tuple[Any, Any]:
    """The tiny VAE and sr cascade (random, nudged weights) and their graphs in `directory`."""
    import torch

    from msc_cascade.cascade_model import CascadeConfig, CascadeModel
    from msc_cascade.onnx_export import export_cascade
    from msc_core.checkpoint import save_pretrained
    from msc_core.testing import perturb_parameters
    from msc_tokenizers import CausalVAE3D, CausalVAE3DConfig

    torch.manual_seed(0)
    vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02).eval()
    save_pretrained(vae, directory / "vae")
    dit = dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32)
    config = CascadeConfig(mode="sr", dit=dit, vae_path=str(directory / "vae"), sample_steps=steps, num_frames=5,
                           height=64, width=64)
    model = CascadeModel(config)
    perturb_parameters(model.dit, seed=1, scale=0.2)
    model = model.eval()
    export_cascade(model, directory / "cascade")
    return vae, model


def bench_with_torch(repeats: int, threads: int, steps: int) -> dict[str, Any]:
    import torch

    from msc_cascade.cascade_decoder import CascadeDecoder
    from msc_runtime import CascadeRefiner, VAEDecoder

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        vae, model = build_and_export(directory, steps)
        out["export_s"] = round(time.perf_counter() - start, 1)
        graphs = directory / "cascade"
        z = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(2))
        ort_vae = VAEDecoder(graphs / "vae_decoder.onnx", providers=CPU, threads=threads)
        with torch.no_grad():
            ref_whole, ref_chunked = vae.decode(z).numpy(), vae.decode_chunked(z, 1).numpy()
            out["vae_decode"] = {
                "latents": list(z.shape), "video": list(ref_whole.shape),
                "whole": {"torch_ms": median_ms(lambda: vae.decode(z), repeats),
                          "ort_ms": median_ms(lambda: ort_vae.decode(z.numpy(), clamp=False), repeats)},
                "chunked": {"torch_ms": median_ms(lambda: vae.decode_chunked(z, 1), repeats),
                            "ort_ms": median_ms(lambda: ort_vae.decode(z.numpy(), 1, clamp=False), repeats)},
                "max_abs_err": float(max(np.abs(ort_vae.decode(z.numpy(), clamp=False) - ref_whole).max(),
                                         np.abs(ort_vae.decode(z.numpy(), 1, clamp=False) - ref_chunked).max())),
            }
            base = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(3))
            torch_dec = CascadeDecoder(model)
            ort_dec = CascadeRefiner(graphs, providers=CPU, threads=threads)
            ref_latents = torch_dec.refine(base, seed=0).numpy()
            ref_video = torch_dec.decode(base, seed=0).numpy()
            out["cascade_refine"] = {
                "base": list(base.shape), "target": list(ref_latents.shape), "steps": steps,
                "video": list(ref_video.shape),
                "refine": {"torch_ms": median_ms(lambda: torch_dec.refine(base, seed=0), repeats),
                           "ort_ms": median_ms(lambda: ort_dec.refine(base.numpy(), seed=0), repeats)},
                "decode": {"torch_ms": median_ms(lambda: torch_dec.decode(base, seed=0), repeats),
                           "ort_ms": median_ms(lambda: ort_dec.decode(base.numpy(), seed=0), repeats)},
                "latents_max_abs_err": float(np.abs(ort_dec.refine(base.numpy(), seed=0) - ref_latents).max()),
                "video_max_abs_err": float(np.abs(ort_dec.decode(base.numpy(), seed=0) - ref_video).max()),
            }
            out["cuda"] = bench_cuda(graphs, repeats)
    for section in (out["vae_decode"]["whole"], out["vae_decode"]["chunked"], out["cascade_refine"]["refine"],
                    out["cascade_refine"]["decode"]):
        section["speedup"] = round(section["torch_ms"] / section["ort_ms"], 2)
    return out


# --------------------------------------------------------------------------- without torch


def bench_fixtures(repeats: int, threads: int) -> dict[str, Any]:
    from msc_runtime import CascadeRefiner, VAEDecoder

    data = dict(np.load(FIXTURES / "expected.npz"))
    vae = VAEDecoder(FIXTURES / "vae_decoder.onnx", providers=CPU, threads=threads)
    z = data["vae_decode_latents"]
    refiner = CascadeRefiner(FIXTURES, providers=CPU, threads=threads)
    base = data["refine_base"]
    return {
        "models": "tests/msc_runtime/fixtures (torch absent: ORT only)",
        "vae_decode": {"latents": list(z.shape), "whole": {"ort_ms": median_ms(lambda: vae.decode(z), repeats),
                                                            "torch_ms": None},
                       "chunked": {"ort_ms": median_ms(lambda: vae.decode(z, 1), repeats), "torch_ms": None}},
        "cascade_refine": {"base": list(base.shape), "steps": refiner.steps,
                           "refine": {"ort_ms": median_ms(lambda: refiner.refine(base), repeats), "torch_ms": None},
                           "decode": {"ort_ms": median_ms(lambda: refiner.decode(base), repeats), "torch_ms": None}},
        "cuda": bench_cuda(FIXTURES, repeats),
    }


# --------------------------------------------------------------------------- CUDA


def bench_cuda(graphs: Path, repeats: int) -> dict[str, Any] | None:
    """IOBinding vs plain `run` for the cascade refine, when ONNX Runtime runs on a GPU here."""
    import onnxruntime as ort

    from msc_runtime import CascadeRefiner
    from msc_runtime.sessions import open_session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    import logging

    logging.getLogger("msc_runtime").setLevel(logging.ERROR)  # the CPU fallback on a GPU-less host is expected
    if open_session(graphs / "cascade_step.onnx", "cascade_step", providers=["CUDAExecutionProvider"]).device != "cuda":
        return None
    cuda = ["CUDAExecutionProvider"]
    bound = CascadeRefiner(graphs, providers=cuda, binding=True)
    plain = CascadeRefiner(graphs, providers=cuda, binding=False)
    base = np.random.default_rng(0).standard_normal((1, bound.latent_spec.channels, 3, 8, 8), dtype=np.float32)
    # parity of the CUDA provider with the CPU one on the same graphs (float32 both)
    on_cpu = CascadeRefiner(graphs, providers=CPU, binding=False)
    from msc_runtime import VAEDecoder

    latents = np.random.default_rng(1).standard_normal((1, bound.latent_spec.channels, 3, 8, 8), dtype=np.float32)
    vae_cuda = VAEDecoder(graphs / "vae_decoder.onnx", providers=cuda).decode(latents)
    vae_cpu = VAEDecoder(graphs / "vae_decoder.onnx", providers=CPU).decode(latents)
    refined = bound.refine(base)
    return {
        "base": list(base.shape), "steps": bound.steps,
        "iobinding_ms": median_ms(lambda: bound.refine(base), repeats),
        "run_ms": median_ms(lambda: plain.refine(base), repeats),
        "max_abs_err": float(np.abs(refined - plain.refine(base)).max()),
        "cascade_refine_max_abs_err_cuda_vs_cpu": float(np.abs(refined - on_cpu.refine(base)).max()),
        "vae_decode_max_abs_err_cuda_vs_cpu": float(np.abs(vae_cuda - vae_cpu).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of the cascade refine")
    args = parser.parse_args()
    import onnxruntime as ort

    result: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "onnxruntime": ort.__version__,
                              "providers_available": ort.get_available_providers()}
    if torch_available():
        import torch

        result["torch"] = torch.__version__
        result.update(bench_with_torch(args.repeats, args.threads, args.steps))
    else:
        result["torch"] = None
        result.update(bench_fixtures(args.repeats, args.threads))
    result["env_bytes"] = env_bytes()
    sizes = result["env_bytes"]
    result["env_size_ratio_cascade_over_runtime"] = (
        round(sizes["msc-cascade"] / sizes["msc-runtime"], 1) if sizes["msc-cascade"] and sizes["msc-runtime"] else None
    )
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
