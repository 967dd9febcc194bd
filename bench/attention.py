"""Benchmark one MSC attention layer against dense frame-causal attention (paper §3.2).

Forward + backward of a single layer on `[B, T, H, W, C]` tokens:

- dense: `FrameCausalAttention`, every head full resolution, one boolean frame-causal
  block mask and `scaled_dot_product_attention` (the CPU kernel materialises the mask);
- msc: `MSCAttention` with `backend="auto"` (`tiled` on CPU, `natten` on CUDA when installed).

CPU default: T=16, H=W=32, C=256, 8 heads, w=7, v=3, r=2, d=4 (`--quick`: T=8, 16x16, C=128).
On CUDA the script also times T=16, 64x64 in bf16 against SDPA flash attention over all
tokens without a mask (flash has no frame-causal mask; this is the fastest dense kernel,
and a frame-causal one could at best halve its work).

Time: median of `--repeats` forward+backward steps after one warm step.
Peak memory (CPU): every variant runs in its own fresh subprocess; after building the
module and inputs and running a tiny warm-up step (thread pools, kernel caches), the
subprocess reads `ru_maxrss`, runs the full-size step, and reports the growth of
`ru_maxrss` (the resident-set high-water mark), i.e. the peak extra memory the step
needed on top of everything alive before it. CUDA uses `torch.cuda.max_memory_allocated`.
Accuracy: max abs error of each backend vs `reference` in fp32 (forward, and gradients
w.r.t. input and parameters) on a smaller input, since the reference is dense.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig, resolve_backend
from msc_core.attention.natten_backend import natten_available
from msc_core.flops import dense_frame_causal_flops, high_res_halo_ratio, msc_attention_flops, paper_flops_estimate
from msc_core.frame_causal_attention import FrameCausalAttention, FrameCausalAttentionConfig

FULL = {"frames": 16, "height": 32, "width": 32, "dim": 256}
QUICK = {"frames": 8, "height": 16, "width": 16, "dim": 128}
CUDA = {"frames": 16, "height": 64, "width": 64, "dim": 256}
LAYER = {"num_heads": 8, "window": 7, "temporal_window": 3, "pool": 2, "temporal_stride": 4}
ACCURACY = {"frames": 6, "height": 11, "width": 10, "dim": 64}  # borders, partial tiles, partial pool cells


TILE: list = [8]  # set by --tile


def msc_config(dim: int, backend: str = "auto") -> MSCAttentionConfig:
    tile = TILE[0] if len(TILE) == 1 else tuple(TILE)
    return MSCAttentionConfig(dim=dim, backend=backend, tile_size=tile, **LAYER)


def build(variant: str, size: dict, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    if variant == "msc":
        module = MSCAttention(msc_config(size["dim"]))
    else:
        module = FrameCausalAttention(FrameCausalAttentionConfig(dim=size["dim"], num_heads=LAYER["num_heads"]))
    module = module.to(device=device, dtype=dtype)
    shape = (1, size["frames"], size["height"], size["width"], size["dim"])
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    noise = torch.randint(0, 1000, (1, size["frames"]), device=device)
    grad = torch.randn(shape, device=device, dtype=dtype)
    return module, x, noise, grad


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(module, x, noise, grad) -> float:
    """One forward + backward; returns the forward time in seconds."""
    start = time.perf_counter()
    out = module(x, noise)
    sync(x.device)
    forward = time.perf_counter() - start
    out.backward(grad)
    return forward


def timing_worker(variant: str, size: dict, repeats: int, device_name: str) -> dict:
    """Runs inside a fresh subprocess: peak memory of one full step, then timed steps."""
    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":  # tiny warm-up so thread pools and kernel caches are not counted
        tiny = dict(size, frames=2, height=8, width=8)
        step(*build(variant, tiny, device, dtype))
    module, x, noise, grad = build(variant, size, device, dtype)
    if device.type == "cuda":
        step(*build(variant, dict(size, frames=2, height=8, width=8), device, dtype))
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sync(device)
    step(module, x, noise, grad)  # warm step, also the memory measurement
    sync(device)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    totals, forwards = [], []
    for _ in range(repeats):
        x.grad = None
        module.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        forwards.append(step(module, x, noise, grad))
        sync(device)
        totals.append(time.perf_counter() - start)
    backend = resolve_backend(module.config.backend, device, has_past_frames=False) if variant == "msc" else None
    return {
        "ms": 1000 * statistics.median(totals),
        "forward_ms": 1000 * statistics.median(forwards),
        "peak_mb": peak_mb,
        "backend": backend,
    }


def accuracy_worker(device_name: str) -> dict:
    """Max abs error of each backend vs reference, fp32: forward and all gradients."""
    device = torch.device(device_name)
    size = ACCURACY
    gen = torch.Generator().manual_seed(1)
    shape = (2, size["frames"], size["height"], size["width"], size["dim"])
    x = torch.randn(shape, generator=gen).to(device)
    noise = torch.randint(0, 1000, shape[:2], generator=gen).to(device)
    grad = torch.randn(shape, generator=gen).to(device)
    torch.manual_seed(0)
    reference = MSCAttention(msc_config(size["dim"], "reference").replace(tile_size=4)).to(device)
    torch.nn.init.normal_(reference.gate.mlp[-1].weight, std=0.5)

    def run(module, with_grad: bool):
        x_ = x.clone().requires_grad_(with_grad)
        if not with_grad:
            with torch.no_grad():
                return module(x_, noise), None
        out = module(x_, noise)
        out.backward(grad)
        return out.detach(), [x_.grad] + [p.grad for p in module.parameters()]

    backends = ["tiled"] + (["natten"] if natten_available() else [])
    errors = {}
    for backend in backends:
        module = MSCAttention(reference.config.replace(backend=backend)).to(device)
        module.load_state_dict(reference.state_dict())
        with_grad = backend != "natten" or device.type == "cuda"  # NATTEN's CPU path has no backward
        reference.zero_grad(set_to_none=True)
        out_ref, grads_ref = run(reference, with_grad)
        out, grads = run(module, with_grad)
        entry = {"forward": (out - out_ref).abs().max().item()}
        if with_grad:
            pairs = list(zip(grads, grads_ref))
            entry["backward"] = max((g - g_ref).abs().max().item() for g, g_ref in pairs)
            # parameter gradients sum over every token: judge them relative to their size too
            entry["backward_relative"] = max(
                ((g - g_ref).abs().max() / g_ref.abs().max().clamp(min=1e-30)).item() for g, g_ref in pairs
            )
        errors[backend] = entry
    return {"size": size, "errors": errors}


def in_subprocess(args: list[str], timeout: float) -> dict:
    """Run this script as a worker in a fresh process; a crash or OOM becomes an error entry."""
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def compare(size: dict, repeats: dict, device: str, timeout: float, threads: int | None) -> dict:
    results = {}
    for variant in ("dense", "msc"):
        results[variant] = in_subprocess(
            ["--worker", "timing", "--variant", variant, "--size", json.dumps(size),
             "--repeats", str(repeats[variant]), "--device", device, "--tile", *map(str, TILE),
             *(["--threads", str(threads)] if threads else [])],
            timeout,
        )
    dense, msc = results["dense"], results["msc"]
    ok = "error" not in dense and "error" not in msc
    return {
        "tokens": size["frames"] * size["height"] * size["width"],
        "size": size,
        "dense_ms": dense.get("ms"),
        "msc_ms": msc.get("ms"),
        "speedup": dense["ms"] / msc["ms"] if ok else None,
        "dense_forward_ms": dense.get("forward_ms"),
        "msc_forward_ms": msc.get("forward_ms"),
        "dense_peak_mb": dense.get("peak_mb"),
        "msc_peak_mb": msc.get("peak_mb"),
        "memory_ratio": msc["peak_mb"] / dense["peak_mb"] if ok else None,
        "msc_backend": msc.get("backend"),
        "errors": {k: v["error"] for k, v in results.items() if "error" in v} or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller CPU size (T=8, 16x16, C=128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in every worker (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--tile", type=int, nargs="+", default=[8],
                        help="tiled backend query tile: an edge, or rows cols (default 8)")
    parser.add_argument("--worker", choices=["timing", "accuracy"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["dense", "msc"], help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    TILE[:] = args.tile
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker == "timing":
        print(json.dumps(timing_worker(args.variant, json.loads(args.size), args.repeats, args.device)))
        return
    if args.worker == "accuracy":
        print(json.dumps(accuracy_worker(args.device)))
        return

    size = QUICK if args.quick else FULL
    repeats = {"dense": args.repeats or (3 if args.quick else 2), "msc": args.repeats or 5}
    result = compare(size, repeats, "cpu", timeout=1800, threads=args.threads)
    B, T, H, W, C = 1, size["frames"], size["height"], size["width"], size["dim"]
    msc_flops = msc_attention_flops(msc_config(C, "tiled"), B, T, H, W)
    dense_flops = dense_frame_causal_flops(B, T, H, W, C, LAYER["num_heads"])
    paper = paper_flops_estimate(B, T, H, W, C, LAYER["window"], LAYER["temporal_window"], LAYER["pool"],
                                 LAYER["temporal_stride"])
    accuracy = in_subprocess(["--worker", "accuracy", "--device", "cpu"], timeout=600)
    result.update(
        {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "layer": {**LAYER, "dim": C, "batch": B},
            "attention_flops_ratio": msc_flops["total"] / dense_flops["total"],
            "flop_ideal_speedup": dense_flops["total"] / msc_flops["total"],
            "tile_size": TILE,
            "high_res_halo_ratio": high_res_halo_ratio(msc_config(C, "tiled"), B, T, H, W),
            "flops": {"msc_forward": msc_flops, "dense_forward": dense_flops["total"],
                      "paper_msc_over_dense": paper["msc_over_dense"]},
            "max_abs_err_vs_reference": accuracy.get("errors", accuracy),
            "accuracy_size": accuracy.get("size"),
            "peak_memory_method": "fresh subprocess per variant; ru_maxrss growth over one full-size "
            "forward+backward after setup and a tiny warm-up",
        }
    )
    if torch.cuda.is_available():
        result["cuda"] = cuda_comparison(repeats=5)
    print(json.dumps(result))


def cuda_comparison(repeats: int) -> dict:
    """T=16, 64x64, bf16: MSC (auto backend) vs SDPA flash over all tokens (no mask)."""
    msc = in_subprocess(
        ["--worker", "timing", "--variant", "msc", "--size", json.dumps(CUDA), "--repeats", str(repeats),
         "--device", "cuda"],
        timeout=1800,
    )
    device = torch.device("cuda")
    tokens = CUDA["frames"] * CUDA["height"] * CUDA["width"]
    heads, head_dim = LAYER["num_heads"], CUDA["dim"] // LAYER["num_heads"]
    qkv = [torch.randn(1, heads, tokens, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3)]
    grad = torch.randn(1, heads, tokens, head_dim, device=device, dtype=torch.bfloat16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    times = []
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(*qkv).backward(grad)
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    flash_ms = 1000 * statistics.median(times)
    return {
        "size": CUDA,
        "dtype": "bfloat16",
        "msc": msc,
        "flash_attention_core_ms": flash_ms,
        "note": "flash times only the attention core of dense attention (no projections, no mask)",
        "speedup_vs_flash_core": flash_ms / msc["ms"] if "ms" in msc else None,
    }


if __name__ == "__main__":
    main()
