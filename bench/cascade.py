"""Cascade decoder quality and ONNX Runtime speed on bundled real video (CPU).

    flock /tmp/msc-bench.lock .venv/bin/python bench/cascade.py --minutes 3

1. A tiny CausalVAE3D (4x temporal, 8x spatial, 8 latent channels) is trained for
   50% of `--minutes` on 5-frame clips (or loaded with `--vae DIR`), then frozen.
2. Two cascades (sr, fps) are trained for 25% of `--minutes` each (50% with `--vae`),
   including encoding a pool of `--pool` (sr) / `--pool / 4` (fps) clips once, on latents of random
   64x64 crops of `bigbuckbunny.mp4` and `bikes.mp4` (msc-data's sample videos, short side
   resized to each of `--train-scales` with area averaging; random horizontal flips and, unless
   `--no-augment`, time reversal, RGB shuffles and contrast / brightness jitter).
3. Held-out: consecutive clips of `carphone_pristine.mp4` (another source), center 64x64.
   - sr: ground truth `x` (5 frames, 64x64); base = VAE latent of `x` area-downsized 4x.
     cascade = `CascadeDecoder.decode(base)` with `--steps` DDIM steps (`cascade`: temperature 1,
     `cascade_t0`: temperature 0, the deterministic decode from zero noise), and with 1 step
     (`cascade_1step`: the x0 prediction from pure noise, the MSE-optimal estimate given
     the base, which favours PSNR); baseline = bicubic 4x upsampling of the
     VAE decode of the base latent (what one gets without the cascade).
   - fps: ground truth `x` (17 frames); base = VAE latent of frames 0, 4, ..., 16.
     cascade = decode to 17 frames; baselines = the decoded 5 frames repeated
     (sample-and-hold) and linearly blended between neighbours.
   - `vae_recon_*`: the VAE's own reconstruction of `x` (the ceiling for the cascade,
     which can only be as sharp as the VAE decoder).
   PSNR / SSIM from `msc_data.metrics` (per frame, averaged over frames and clips);
   `hf_ratio`: high-frequency spectral energy (above 1/4 Nyquist) over the ground truth's
   (1.0 = as much fine detail, < 1 blurrier) and `feature_distance`: Fréchet distance of
   hand-made frame statistics (sharpness, edges, texture) to the ground truth's frames
   (`msc_data.video_metrics`). CascadeV argues the cascade trades PSNR for detail: these
   two columns are the detail side.
4. ONNX: the VAE decoder and encoder, the AR-VAE decoder (tiny, untrained) and the sr
   cascade step are exported (`msc_cascade.onnx_export`); `onnx_parity_max_abs_err` is each export's
   parity check at a batch size / frame count different from the export, plus a full
   `OnnxCascadeDecoder.decode` vs `CascadeDecoder.decode`.
   `torch_ms` / `ort_ms`: median wall time on CPU, same thread count for both, of one
   VAE decode (17 frames, 64x64, batch 1) and one cascade step (5 x 8 x 8 latent, batch 1).
   Exporting the step (draft_export) takes several minutes for this DiT on 2 cores.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_cascade.cascade_model import CascadeConfig, CascadeModel, suggest_latent_scale
from msc_cascade.onnx_export import OnnxCascadeDecoder, OnnxVAEDecoder, export_arvae_decoder, export_cascade
from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_core.runtime import seed_everything
from msc_data import metrics
from msc_data.sample_videos import sample_video_paths
from msc_data.video_io import iter_video_frames
from msc_data.video_metrics import feature_distance, high_frequency_energy_ratio
from msc_data.video_tensor import frames_to_video
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig
from sample_clips import RandomClips  # bench/sample_clips.py

TRAIN_SOURCES = ("bigbuckbunny.mp4", "bikes.mp4")
HELDOUT_SOURCE = "carphone_pristine.mp4"
SIZE = 64
SR_FRAMES, FPS_FRAMES = 5, 17
CASCADE_ROWS = ("cascade", "cascade_t0", "cascade_1step")
DIT = dict(dim=64, depth=4, num_heads=4, window=4, chunk=2, timestep_frequency_dim=64)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# data


def load_frames(name: str, size: int = 96) -> np.ndarray:
    """All frames of a bundled sample video, short side resized to `size` (area averaging)."""
    (path,) = [p for p in sample_video_paths() if p.name == name]
    return np.stack(list(iter_video_frames(path, fps=None, size=size)))  # (T, size, >= size, 3)


def heldout_clips(frames: np.ndarray, num_frames: int, limit: int) -> torch.Tensor:
    top = (frames.shape[1] - SIZE) // 2
    frames = frames[:, top:top + SIZE, top:top + SIZE]
    n = min(limit, len(frames) // num_frames)
    return torch.stack([frames_to_video(frames[i * num_frames:(i + 1) * num_frames]) for i in range(n)])


# -----------------------------------------------------------------------------
# training


def train_for(step_fn, params: list[torch.Tensor], seconds: float, lr: float, name: str) -> int:
    """AdamW, short warm-up, cosine decay over a wall-clock budget; returns the step count."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, step, recent = time.perf_counter(), 0, []
    while (elapsed := time.perf_counter() - start) < seconds:
        scale = min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent.append(loss.item())
        step += 1
        if step % 50 == 0:
            log(f"[{name}] step {step} t={elapsed:.0f}s loss {sum(recent) / len(recent):.4f}")
            recent = []
    return step


def train_vae(clips: RandomClips, seconds: float) -> CausalVAE3D:
    vae = CausalVAE3D(CausalVAE3DConfig.preset("tiny", latent_channels=8)).train()
    steps = train_for(lambda: vae.training_losses({"video": clips.batch(4, 5)})["loss"],
                      list(vae.parameters()), seconds, 2e-3, "vae")
    log(f"[vae] {steps} steps")
    return vae.eval()


@torch.no_grad()
def latent_pool(model: CascadeModel, clips: RandomClips, num_frames: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    targets, bases = [], []
    for _ in range(count // 16):
        target, base = model.encode_pair(clips.batch(16, num_frames))
        targets.append(target)
        bases.append(base)
    return torch.cat(targets), torch.cat(bases)


def train_cascade(
    mode: str, vae_dir: Path, clips: RandomClips, seconds: float, steps: int, conditioning: str, pool: int
) -> tuple[CascadeModel, int]:
    frames = SR_FRAMES if mode == "sr" else FPS_FRAMES
    latent_channels = CausalVAE3DConfig.load(vae_dir / "config.json").latent_channels
    config = CascadeConfig(mode=mode, dit={**DIT, "latent_channels": latent_channels}, vae_path=str(vae_dir),
                           sample_steps=steps, conditioning=conditioning,
                           num_frames=frames, height=SIZE, width=SIZE)
    model = CascadeModel(config)
    start = time.perf_counter()
    targets, bases = latent_pool(model, clips, frames, pool)
    model = CascadeModel(config.replace(latent_scale=suggest_latent_scale(targets)))
    scale = model.config.latent_scale
    with torch.no_grad():  # the DiT's condition of every pooled clip, once (pixel: VAE decode + encode)
        conditions = torch.cat([model.condition(bases[i:i + 16]) / scale for i in range(0, len(bases), 16)])
    gen = torch.Generator().manual_seed(1)
    model.train()

    def step() -> torch.Tensor:
        idx = torch.randint(0, len(targets), (8,), generator=gen)
        batch = {"latents": targets[idx], "base_latents": bases[idx], "condition_latents": conditions[idx]}
        return model.training_losses(batch, generator=gen)["loss"]

    n = train_for(step, list(model.dit.parameters()), seconds - (time.perf_counter() - start), 1e-3, f"cascade-{mode}")
    log(f"[cascade-{mode}] {n} steps, latent_scale {model.config.latent_scale:.3f}")
    return model.eval(), n


# -----------------------------------------------------------------------------
# evaluation


def scores(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    pred = pred.clamp(-1, 1)
    return {"psnr": round(metrics.psnr(pred, truth).mean().item(), 3), "ssim": round(metrics.ssim(pred, truth).mean().item(), 4),
            "hf_ratio": round(high_frequency_energy_ratio(pred, truth), 4),
            "feature_distance": round(feature_distance(pred, truth), 4)}


def better(row: dict, baseline: dict, metric: str) -> bool:
    """hf_ratio: closer to the ground truth's 1.0; feature_distance: smaller."""
    if metric == "hf_ratio":
        return abs(math.log(row[metric])) < abs(math.log(baseline[metric]))
    return row[metric] < baseline[metric]


def repeat_frames(decoded: torch.Tensor, factor: int) -> torch.Tensor:
    """Frame repetition (sample-and-hold) of `t` frames -> `1 + factor (t - 1)`."""
    t = decoded.shape[2]
    index = (torch.arange(1 + factor * (t - 1)) // factor).clamp(max=t - 1)
    return decoded[:, :, index]


@torch.no_grad()
def evaluate(model: CascadeModel, clips: torch.Tensor) -> dict[str, dict[str, float]]:
    decoder = CascadeDecoder(model)
    cold = CascadeDecoder(model, CascadeDecodeSettings(temperature=0.0))  # deterministic, near the mean
    one_step = CascadeDecoder(model, CascadeDecodeSettings(steps=1))  # x0 from noise: the MMSE estimate
    vae = model.vae
    preds: dict[str, list[torch.Tensor]] = {}
    for i in range(len(clips)):
        x = clips[i:i + 1]
        _, base = model.encode_pair(x)
        out = {"cascade": decoder.decode(base, seed=i), "cascade_t0": cold.decode(base),
               "cascade_1step": one_step.decode(base, seed=i),
               "vae_recon": vae.decode(vae.encode(x))}
        decoded_base = vae.decode(base)
        # bicubic (sr) / linear blending (fps): the same upsampling pixel conditioning uses
        upsampled = model.upsample_base_video(decoded_base)
        if model.config.mode == "sr":
            out["bicubic"] = upsampled
        else:
            out["repeat"], out["blend"] = repeat_frames(decoded_base, model.config.factor), upsampled
        for key, value in out.items():
            preds.setdefault(key, []).append(value)
    return {key: scores(torch.cat(values), clips) for key, values in preds.items()}


# -----------------------------------------------------------------------------
# ONNX timing


def median_ms(fn, repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


@torch.no_grad()
def onnx_section(sr: CascadeModel, heldout_sr: torch.Tensor, directory: Path) -> dict:
    threads = torch.get_num_threads()
    vae = sr.vae
    channels = vae.config.latent_channels
    latents = torch.randn(1, channels, 5, SIZE // 8, SIZE // 8)
    x = torch.randn(1, channels, 5, SIZE // 8, SIZE // 8)
    t, t_next = torch.tensor([999]), torch.tensor([874])
    # PyTorch first, in a process that has not traced anything yet (eager timings measured
    # after draft_export came out several times slower)
    torch_ms = {"vae_decoder": median_ms(lambda: vae.decode(latents)),
                "cascade_step": median_ms(lambda: sr.denoise_step(x, x, t, t_next))}
    t0 = time.perf_counter()
    reports = export_cascade(sr, directory / "sr")
    arvae_report = export_arvae_decoder(ARVAE(ARVAEConfig.preset("tiny")).eval(), directory / "arvae.onnx")
    export_seconds = time.perf_counter() - t0
    parity = {name: r.parity_max_abs_err for name, r in reports.items()}
    parity["arvae_decoder"] = arvae_report.parity_max_abs_err
    runner = OnnxCascadeDecoder(directory / "sr", providers=["CPUExecutionProvider"], threads=threads)
    _, base = sr.encode_pair(heldout_sr[:1])
    parity["ort_vs_torch_decode"] = float((runner.decode(base, seed=0) - CascadeDecoder(sr).decode(base, seed=0)).abs().max())
    vae_onnx = OnnxVAEDecoder(directory / "sr" / "vae_decoder.onnx", ["CPUExecutionProvider"], threads=threads)
    ort_ms = {"vae_decoder": median_ms(lambda: vae_onnx.decode(latents)),
              "cascade_step": median_ms(lambda: runner.denoise_step(x, x, t, t_next))}
    torch_ms_after_export = {"vae_decoder": median_ms(lambda: vae.decode(latents)),
                             "cascade_step": median_ms(lambda: sr.denoise_step(x, x, t, t_next))}
    return {
        "onnx_parity_max_abs_err": {k: float(f"{v:.3g}") for k, v in parity.items()},
        "onnx_exporters": {**{k: r.exporter for k, r in reports.items()}, "arvae_decoder": arvae_report.exporter},
        "onnx_export_seconds": round(export_seconds, 1),
        "torch_ms": torch_ms,
        "torch_ms_after_export": torch_ms_after_export,
        "ort_ms": ort_ms,
        "ort_speedup": {k: round(torch_ms[k] / ort_ms[k], 2) for k in torch_ms},
        "threads": threads,
    }


# -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="training budget: VAE 50%%, each cascade 25%% (50%% each with --vae)")
    parser.add_argument("--vae", type=Path, help="a trained CausalVAE3D directory (e.g. runs/bench_tokenizers/vae3d from bench/tokenizers.py): skip VAE training")
    parser.add_argument("--steps", type=int, default=8, help="DDIM steps of the cascade")
    parser.add_argument("--pool", type=int, default=1024,
                        help="clips encoded once for the sr cascade (fps: a quarter); the DiT trains on these")
    parser.add_argument("--conditioning", choices=["latent", "pixel"], default="latent",
                        help="CascadeConfig.conditioning of both cascades")
    parser.add_argument("--train-scales", default="96,144,192",
                        help="short sides (pixels) the training videos are loaded at, comma-separated: "
                        "the 64x64 crops see each source at several zooms")
    parser.add_argument("--no-augment", action="store_true",
                        help="cascade training clips without time reversal and colour jitter (RandomClips.augment)")
    parser.add_argument("--eval-clips", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and timing (quality only)")
    args = parser.parse_args()
    seed_everything(args.seed)
    budget = args.minutes * 60
    started = time.perf_counter()

    scales = [int(size) for size in args.train_scales.split(",")]
    clips = RandomClips([load_frames(name, size) for name in TRAIN_SOURCES for size in scales], args.seed,
                        augment=not args.no_augment)
    held = load_frames(HELDOUT_SOURCE)
    heldout_sr = heldout_clips(held, SR_FRAMES, args.eval_clips)
    heldout_fps = heldout_clips(held, FPS_FRAMES, max(1, args.eval_clips // 2))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.vae is not None:
            vae_dir, vae_steps = args.vae, None
            from_pretrained(CausalVAE3D, vae_dir)  # fail early on a bad directory
        else:
            vae = train_vae(clips, 0.5 * budget)
            vae_dir, vae_steps = tmp / "vae", "trained"
            save_pretrained(vae, vae_dir)
        share = 0.25 if args.vae is None else 0.5
        sr, sr_steps = train_cascade("sr", vae_dir, clips, share * budget, args.steps, args.conditioning, args.pool)
        fps, fps_steps = train_cascade("fps", vae_dir, clips, share * budget, args.steps, args.conditioning,
                                       max(16, args.pool // 4))
        train_seconds = time.perf_counter() - started
        log("evaluating")
        result = {
            "minutes": args.minutes,
            "train_seconds": round(train_seconds, 1),
            "vae": "loaded" if vae_steps is None else "trained",
            "ddim_steps": args.steps,
            "conditioning": args.conditioning,
            "pool": args.pool,
            "train_scales": scales,
            "augment": not args.no_augment,
            "sr": {"train_steps": sr_steps, "heldout_clips": len(heldout_sr), **evaluate(sr, heldout_sr)},
            "fps": {"train_steps": fps_steps, "heldout_clips": len(heldout_fps), **evaluate(fps, heldout_fps)},
        }
        log(json.dumps(result))
        if not args.no_onnx:
            log("exporting to ONNX")
            onnx_model = sr
            if sr.config.conditioning != "latent":  # the ONNX Runtime runners refuse pixel conditioning: time the same DiT
                onnx_model = CascadeModel(sr.config.replace(conditioning="latent")).eval()
                onnx_model.dit.load_state_dict(sr.dit.state_dict())
                result["onnx_model"] = "the sr DiT with conditioning='latent' (the ONNX runners refuse pixel conditioning)"
            result.update(onnx_section(onnx_model, heldout_sr, tmp / "onnx"))
    sr_r, fps_r = result["sr"], result["fps"]
    result["sr_beats_bicubic"] = {
        f"{key}_{m}": sr_r[key][m] > sr_r["bicubic"][m] for key in CASCADE_ROWS for m in ("psnr", "ssim")
    }
    # detail: an hf_ratio nearer 1 and a smaller feature distance than the baseline's
    result["sr_detail_beats_bicubic"] = {
        f"{key}_{m}": better(sr_r[key], sr_r["bicubic"], m) for key in CASCADE_ROWS for m in ("hf_ratio", "feature_distance")
    }
    result["fps_detail_beats_blend"] = {
        f"{key}_{m}": better(fps_r[key], fps_r["blend"], m) for key in CASCADE_ROWS for m in ("hf_ratio", "feature_distance")
    }
    result["fps_beats_best_baseline"] = {
        f"{key}_{m}": fps_r[key][m] > max(fps_r["repeat"][m], fps_r["blend"][m])
        for key in CASCADE_ROWS for m in ("psnr", "ssim")
    }
    result["load_average"] = round(os.getloadavg()[0], 2)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
