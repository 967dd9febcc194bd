"""`msc-cascade upscale IN.mp4 OUT.mp4 --checkpoint DIR [--mode sr|fps]`.

Post-processing of a pixel video (CascadeV §3.4 ii, §4.4): the video is encoded with the
cascade's VAE, the latent is refined by the cascade DiT as the base latent, and the VAE
decodes a video 4x larger (sr) or with 4x the frame rate (fps):

- sr: `N x H x W` -> `N x 4H x 4W`, same frame rate;
- fps: `N` frames -> `1 + 4 (N - 1)` frames at 4x the frame rate.

The causal VAE needs `1 + tc k` frames and sides divisible by its spatial compression
`s`: trailing frames beyond the last valid count are dropped and frames are
center-cropped to multiples of `s` (both reported). Errors (unreadable input, wrong
checkpoint or mode) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_cascade.video_file import VideoFileError, frames_to_tensor, read_video, tensor_to_frames, write_video
from msc_core.interfaces import LatentSpec

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msc-cascade", description="Cascade decoder (CascadeV) tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upscale", help="4x the resolution (sr) or the frame rate (fps) of a video")
    up.add_argument("input", type=Path, help="input video (any format FFmpeg reads)")
    up.add_argument("output", type=Path, help="output .mp4 (H.264)")
    up.add_argument("--checkpoint", type=Path, required=True, help="cascade save_pretrained directory")
    up.add_argument("--mode", choices=("sr", "fps"), help="must match the checkpoint (default: the checkpoint's)")
    up.add_argument("--vae-path", type=Path, help="override the VAE directory recorded in the checkpoint")
    up.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's sample_steps)")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--temperature", type=float, default=1.0,
                    help="initial noise scale: 1 samples detail, 0 decodes deterministically (closest to the mean)")
    up.add_argument("--window-frames", type=int, help="latent frames per temporal window (default: whole clip)")
    up.add_argument("--tile-size", type=int, help="latent rows/cols per spatial tile (default: whole frame)")
    up.add_argument("--vae-chunk-frames", type=int, default=2, help="latent frames per VAE decoding chunk")
    up.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    return parser


def conform_frames(frames: np.ndarray, spec: LatentSpec) -> tuple[np.ndarray, list[str]]:
    """Trim to `1 + tc k` frames and center-crop to multiples of `s`; returns notes of what changed."""
    notes = []
    n, h, w = frames.shape[:3]
    tc, s = spec.temporal_compression, spec.spatial_compression
    keep = 1 + (n - 1) // tc * tc
    if keep != n:
        notes.append(f"dropped the last {n - keep} frame(s): the VAE needs 1 + {tc}k frames ({keep} kept)")
    H, W = h // s * s, w // s * s
    if H == 0 or W == 0:
        raise ValueError(f"frames are {h}x{w}; the VAE needs at least {s}x{s} pixels")
    if (H, W) != (h, w):
        notes.append(f"center-cropped {h}x{w} to {H}x{W} (multiples of {s})")
    top, left = (h - H) // 2, (w - W) // 2
    return frames[:keep, top:top + H, left:left + W], notes


def upscale(args: argparse.Namespace) -> int:
    settings = CascadeDecodeSettings(
        steps=args.steps, window_frames=args.window_frames, tile_size=args.tile_size,
        vae_chunk_frames=args.vae_chunk_frames, temperature=args.temperature,
    )
    decoder = CascadeDecoder.from_pretrained(args.checkpoint, settings, vae_path=args.vae_path, device=args.device)
    config = decoder.config
    if args.mode is not None and args.mode != config.mode:
        raise ValueError(
            f"checkpoint {args.checkpoint} is a {config.mode!r} cascade; --mode {args.mode} needs a checkpoint "
            f"trained for {args.mode!r}"
        )
    frames, fps = read_video(args.input)
    frames, notes = conform_frames(frames, decoder.latent_spec)
    for note in notes:
        print(f"msc-cascade: {note}", file=sys.stderr)
    video = frames_to_tensor(frames)
    base = decoder.encode(video)
    with tqdm(total=decoder.work_units(base), desc=f"cascade {config.mode}", unit="step", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        out = decoder.decode(base, seed=args.seed, progress=progress)
    out_fps = fps * config.factor if config.mode == "fps" else fps
    write_video(args.output, tensor_to_frames(out[0]), out_fps)
    n, h, w = frames.shape[:3]
    print(f"{args.input} ({n} frames, {w}x{h}, {fps:g} fps) -> {args.output} "
          f"({out.shape[2]} frames, {out.shape[4]}x{out.shape[3]}, {out_fps:g} fps)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "upscale":
            with torch.no_grad():  # scoped: main() is also called in-process (tests, notebooks)
                return upscale(args)
    except (VideoFileError, FileNotFoundError, ValueError) as err:
        print(f"msc-cascade: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
