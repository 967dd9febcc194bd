"""One training step of every model kind: throughput and peak memory, in a chosen precision.

For each kind (AR-Diffusion on pixels, NOVA, the 3D causal VAE, the AR-VAE, the cascade):
build the model at the size below, run `--warmup` AdamW steps, then time `--repeats`
steps (forward `training_losses`, backward, optimiser step). Reported per kind:
`step_ms` (median), `tokens_per_s` (batch * frames * tokens per frame / step time; for the
tokenizers a token is a pixel patch of the encoder's downsampling, for the cascade a latent
position of the target), `peak_mb` (CUDA: `max_memory_allocated` growth over the step;
CPU: `ru_maxrss` growth, a high-water mark, so only the first kind's number is meaningful
on CPU), the loss (finite is asserted) and the parameter count.

    python bench/train_step.py --device cuda --precision autocast      # bf16 autocast (default on CUDA)
    python bench/train_step.py --device cpu --quick                     # CPU, tiny sizes (CI's dry run)

`--precision`: `fp32`, `autocast` (bf16 autocast over fp32 parameters) or `bf16` (bf16
parameters; the diffusion state stays fp32, msc-core README "Precision and devices").
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_ar.nova import NOVA, NovaConfig
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.checkpoint import save_pretrained
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

KINDS = ("ardiffusion", "nova", "vae3d", "arvae", "cascade")


def build(kind: str, quick: bool, workdir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], int]:
    """(model, batch, tokens per batch) at the bench size (`quick`: tiny, for a CPU check)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def video(b: int, t: int, h: int, w: int) -> torch.Tensor:
        return torch.rand(b, 3, t, h, w, generator=gen) * 2 - 1

    if kind == "ardiffusion":
        cfg = ARDiffusionConfig.preset("tiny" if quick else "demo", data=dict(
            input_layout="grid", channels=3, num_frames=4 if quick else 16, height=16 if quick else 64,
            width=16 if quick else 64))
        model = ARDiffusion(cfg)
        b = 2 if quick else 8
        patch = cfg.transformer.patch_size
        tokens = b * cfg.data.num_frames * (cfg.data.height // patch) * (cfg.data.width // patch)
        return model, {"video": video(b, cfg.data.num_frames, cfg.data.height, cfg.data.width)}, tokens
    if kind == "nova":
        cfg = NovaConfig.tiny() if quick else NovaConfig.demo(num_frames=16, sample_size=(64, 64))
        b = 2 if quick else 8
        h, w = cfg.sample_size
        tokens = b * cfg.num_frames * (h // cfg.patch_size) * (w // cfg.patch_size)
        return NOVA(cfg), {"video": video(b, cfg.num_frames, h, w)}, tokens
    if kind == "vae3d":
        cfg = CausalVAE3DConfig.preset("tiny" if quick else "small")
        b, t, s = (1, 5, 32) if quick else (4, 17, 128)
        return CausalVAE3D(cfg), {"video": video(b, t, s, s)}, b * t * (s // 8) ** 2
    if kind == "arvae":
        cfg = ARVAEConfig.preset("tiny" if quick else "small")
        b, t, s = (1, 2, 16) if quick else (8, 8, 64)
        return ARVAE(cfg), {"video": video(b, t, s, s)}, b * t * cfg.num_latent_tokens
    vae_dir = save_pretrained(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), workdir / "vae")
    dim, depth = (32, 2) if quick else (256, 8)
    b, t, s = (1, 5, 32) if quick else (4, 17, 128)
    model = CascadeModel(CascadeConfig(
        mode="sr", vae_path=str(vae_dir), num_frames=t, height=s, width=s, conditioning="pixel",
        dit=dict(latent_channels=4, dim=dim, depth=depth, num_heads=4 if not quick else 2, window=2, chunk=2,
                 timestep_frequency_dim=32 if quick else 256),
    ))
    latent_frames = 1 + (t - 1) // 4
    return model, {"video": video(b, t, s, s)}, b * latent_frames * (s // 8) ** 2


def peak_reader(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        return lambda: (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def bench_kind(kind: str, device: torch.device, precision: str, quick: bool, warmup: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, tokens = build(kind, quick, Path(tmp))
        model = model.to(device)
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "autocast"
                    else contextlib.nullcontext())
        model.train()

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = model.training_losses(batch, generator=torch.Generator().manual_seed(1))["loss"] \
                    if kind in ("ardiffusion", "nova", "cascade") else model.training_losses(batch)["loss"]
            loss.backward()
            optimizer.step()
            return loss.item()

        for _ in range(warmup):
            step()
        read_peak = peak_reader(device)
        times, losses = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            losses.append(step())  # loss.item() syncs
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"{kind}: non-finite loss in {precision}: {losses}")
        return {
            "step_ms": round(step_s * 1000, 2),
            "tokens_per_step": tokens,
            "tokens_per_s": round(tokens / step_s, 1),
            "peak_mb": round(read_peak(), 1),
            "loss": losses[-1],
            "parameters": sum(p.numel() for p in model.parameters()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "autocast", "bf16"), default=None,
                        help="default: autocast on CUDA, fp32 on CPU")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check of the script)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("autocast" if device.type == "cuda" else "fp32")
    results = {}
    for kind in args.kinds:
        try:
            results[kind] = bench_kind(kind, device, precision, args.quick, args.warmup, args.repeats)
        except Exception as err:  # one kind failing (e.g. a GPU-only error) is reported, not fatal
            results[kind] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{kind}: {results[kind]}", file=sys.stderr, flush=True)
    print(json.dumps({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "quick": args.quick,
        "torch": torch.__version__,
        "kinds": results,
        "failed": sorted(k for k, v in results.items() if "error" in v),
    }))


if __name__ == "__main__":
    main()
