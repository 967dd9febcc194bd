"""VideoPipeline benchmarks: streaming latency, flat memory, stream == call, ONNX decode.
Last line: one JSON object.

The pipeline is the paper's pairing at the sizes of the shipped latent jobs: AR-Diffusion
(the MSC transformer, `jobs/latent-ardiffusion-arvae.yaml`'s width and depth) on AR-VAE
tokens (`arvae.yaml`'s `small` AR-VAE: 32 tokens of 16 dims per 64x64 frame, on an 8x4
region grid), with random weights: latency and memory do not depend on what the weights
learned. AD scheduler with S = 10 DDIM steps per frame and its default offset.

- `first_frame_s`: time from the call to the first decoded frame of `pipeline.stream`
  for 32 frames; `full_call_s`: time of `pipeline(request)` for the same 32 frames;
  `first_frame_ratio` = first_frame_s / full_call_s (target <= 0.25).
- `stream_peak_mb` at 16 and 64 frames: the peak resident memory of a fresh process
  while it streams (frames handed to a consumer that drops them, as a writer would),
  above the memory after the models are loaded and warmed up; `stream_peak_ratio_64_16`
  (target: within 10%, i.e. <= 1.10). Measured per fresh subprocess with one thread and
  a fixed malloc mmap threshold, so RSS follows live memory (as bench/tokenizers.py).
  The AR-VAE's decoder attends to every past frame (its key/value cache grows by one
  frame's tokens per frame, AR-Diffusion §3.1: a temporally causal decoder), so this
  pairing's memory grows with the video by design. `vae3d_stream_peak_mb` at 17 and 65
  frames (5 and 17 latent frames): AR-Diffusion on the `small` CausalVAE3D, whose causal
  chunk cache has a fixed size; `vae3d_stream_peak_ratio_65_17` (target <= 1.10). Both
  generators keep a sliding window of their training length.
- `stream_vs_full_max_err`: max |streamed frame - whole-call frame| (same seed).
- `onnx_vs_torch_decode_max_err`: the exported AR-VAE decoder in ONNX Runtime against
  the PyTorch decoder on the same generated latents (needs msc-cascade[onnx]); also
  for the 3D VAE (`vae3d_onnx_vs_torch_decode_max_err`).

    flock /tmp/msc-bench.lock .venv/bin/python bench/pipeline.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_core.interfaces import GenerationRequest, SchedulerParams
from msc_core.latents import LatentNormalization
from msc_core.pipeline import VideoPipeline
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

STEPS = 10


def build_vae3d_pipeline(seed: int = 0) -> VideoPipeline:
    """AR-Diffusion on the `small` CausalVAE3D's latents (16 channels, 8x8 per 64x64 frame,
    4x temporal compression), as jobs/latent-nova-vae.yaml pairs NOVA with it."""
    torch.manual_seed(seed)
    tokenizer = CausalVAE3D(CausalVAE3DConfig.preset("small")).eval()
    config = ARDiffusionConfig.preset(
        "tiny",
        data=dict(input_layout="grid", channels=16, num_frames=3, height=8, width=8),
        transformer=dict(patch_size=2, dim=96, depth=4, num_heads=4, window=3, temporal_window=3,
                         temporal_stride=2, pool=2, max_pool=None),
        tokenizer_path="bench",
    )
    generator = ARDiffusion(config).eval()
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
    norm = LatentNormalization(layout="grid", shift=(0.0,) * 16, scale=(1.0,) * 16)
    return VideoPipeline(generator, tokenizer, norm)


def build_pipeline(seed: int = 0, pairing: str = "arvae") -> VideoPipeline:
    if pairing == "vae3d":
        return build_vae3d_pipeline(seed)
    torch.manual_seed(seed)
    tokenizer = ARVAE(ARVAEConfig.preset("small")).eval()
    spec = tokenizer.latent_spec
    config = ARDiffusionConfig.preset(
        "tiny",
        data=dict(input_layout="tokens", channels=spec.channels, num_frames=8, tokens_per_frame=spec.tokens_per_frame,
                  latent_grid=spec.token_grid),
        transformer=dict(patch_size=1, dim=96, depth=4, num_heads=4, window=3, temporal_window=3,
                         temporal_stride=4, pool=2, max_pool=None),
        tokenizer_path="bench",
    )
    generator = ARDiffusion(config).eval()
    with torch.no_grad():  # off DiT's zero init, so the frames are not all the same
        for p in generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
    norm = LatentNormalization(layout="tokens", shift=(0.0,) * spec.channels, scale=(1.0,) * spec.channels)
    return VideoPipeline(generator, tokenizer, norm)


def request(frames: int) -> GenerationRequest:
    return GenerationRequest(num_frames=frames, seed=0, num_steps=STEPS, scheduler=SchedulerParams())


def timing(pipeline: VideoPipeline, frames: int) -> dict[str, float]:
    pipeline(request(2))  # warm-up: kernels and caches
    started = time.perf_counter()
    first = None
    streamed = []
    for frame in pipeline.stream(request(frames)):
        if first is None:
            first = time.perf_counter() - started
        streamed.append(frame)
    started = time.perf_counter()
    whole = pipeline(request(frames))
    full = time.perf_counter() - started
    error = (torch.stack(streamed, dim=2) - whole).abs().max().item()
    return {"first_frame_s": round(first, 3), "full_call_s": round(full, 3),
            "first_frame_ratio": round(first / full, 4), "stream_vs_full_max_err": error}


# -----------------------------------------------------------------------------
# memory probe (a fresh subprocess per measurement)


def proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(frames: int, pairing: str = "arvae") -> dict[str, float]:
    torch.set_num_threads(1)
    pipeline = build_pipeline(pairing=pairing)
    for _ in pipeline.stream(request(5 if pairing == "vae3d" else 2)):  # warm-up: one-off kernel and cache costs
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = proc_status_mb("VmRSS")
    count = 0
    for _ in pipeline.stream(request(frames)):
        count += 1
    assert count == frames
    peak = proc_status_mb("VmHWM")
    return {"peak_mb": peak - before}


def measure_memory(frames_list: tuple[int, ...], pairing: str = "arvae") -> dict[str, float]:
    out = {}
    for frames in frames_list:
        result = subprocess.run(
            [sys.executable, __file__, "--memory-probe", str(frames), "--pairing", pairing],
            capture_output=True, text=True, check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        out[str(frames)] = round(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"], 2)
    return out


# -----------------------------------------------------------------------------
# ONNX decode


def onnx_errors(pipeline: VideoPipeline) -> dict[str, float | str]:
    try:
        from msc_cascade.onnx_export import export_arvae_decoder, export_vae_decoder
    except ImportError as err:  # pragma: no cover - without the onnx extra
        return {"onnx": f"skipped: {err}"}
    out: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = pipeline.save_pretrained(Path(tmp) / "pipe")
        export_arvae_decoder(pipeline.tokenizer, directory / "tokenizer" / "decoder.onnx")
        onnx = VideoPipeline.from_pretrained(directory, decoder="onnx")
        torch_pipeline = VideoPipeline.from_pretrained(directory)
        latents = torch_pipeline.generator.generate(torch_pipeline.latent_request(request(8)))
        out["onnx_vs_torch_decode_max_err"] = (onnx.decode(latents) - torch_pipeline.decode(latents)).abs().max().item()
        torch.manual_seed(0)
        vae = CausalVAE3D(CausalVAE3DConfig.preset("small")).eval()
        export_vae_decoder(vae, Path(tmp) / "vae.onnx")
        from msc_cascade.onnx_export import OnnxVAEDecoder

        runner = OnnxVAEDecoder(Path(tmp) / "vae.onnx")
        z = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(1))
        cache_t = cache_o = None
        errors = []
        for frame in z.split(1, dim=2):  # the chunked path both pipelines decode through
            with torch.no_grad():
                a, cache_t = vae.decode_chunk(frame, cache_t)
            b, cache_o = runner.decode_chunk(frame.numpy(), cache_o)
            errors.append((a - torch.from_numpy(b)).abs().max().item())
        out["vae3d_onnx_vs_torch_decode_max_err"] = max(errors)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pairing", choices=("arvae", "vae3d"), default="arvae", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.pairing)))
        return
    pipeline = build_pipeline()
    result: dict[str, object] = {"frames": args.frames, "ddim_steps": STEPS, "threads": torch.get_num_threads()}
    result.update(timing(pipeline, args.frames))
    memory = measure_memory((16, 64))
    result["stream_peak_mb"] = memory
    result["stream_peak_ratio_64_16"] = round(memory["64"] / memory["16"], 3) if memory["16"] > 0 else None
    vae3d = measure_memory((17, 65), pairing="vae3d")  # 1 + 4k video frames: 5 and 17 latent frames
    result["vae3d_stream_peak_mb"] = vae3d
    result["vae3d_stream_peak_ratio_65_17"] = round(vae3d["65"] / vae3d["17"], 3) if vae3d["17"] > 0 else None
    result.update(onnx_errors(pipeline))
    result["first_frame_ratio_ok"] = result["first_frame_ratio"] <= 0.25
    result["memory_flat_ok"] = result["stream_peak_ratio_64_16"] is not None and result["stream_peak_ratio_64_16"] <= 1.10
    ratio = result["vae3d_stream_peak_ratio_65_17"]
    result["vae3d_memory_flat_ok"] = ratio is not None and ratio <= 1.10
    print(json.dumps(result))


if __name__ == "__main__":
    main()
