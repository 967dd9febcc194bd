"""`msc-data` command line: build clip shards, encode latent shards, inspect manifests.

    msc-data build SRC OUT [--frames 17 --stride 8 --size 64 --fps 8 --shard-size 256MB --workers N]
    msc-data build moving-mnist OUT --num-clips 1000 --frames 16 --size 64 --digits 2
    msc-data encode SHARDS OUT --tokenizer DIR [--tokenizer-class module:Class]
    msc-data info SHARDS

User errors (missing paths, unreadable inputs, missing extras, bad settings) print one
`msc-data: error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from msc_core.config import ConfigError
from msc_data.clip_format import CLIP_FORMATS
from msc_data.motion import MOTION_METHODS

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """`"256MB"` -> 256000000 bytes (kB/MB/GB are powers of 10, KiB/MiB/GiB powers of 2)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use e.g. 256MB, 1GiB or a number of bytes")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte, got {text!r}")
    return value


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msc-data", description="Video data pipelines for msc.")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="decode videos into webdataset clip shards")
    build.add_argument("src", help="folder of videos, a video file, or 'moving-mnist' / 'sample-videos'")
    build.add_argument("out", help="output directory (re-run to resume)")
    build.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    build.add_argument("--stride", type=int, default=8, help="frames between clip starts (default 8)")
    build.add_argument("--size", type=int, default=64, help="clip side after resize + center crop (default 64)")
    build.add_argument("--fps", type=float, default=8.0, help="target frame rate; 0 keeps the native rate (default 8)")
    build.add_argument("--shard-size", type=parse_size, default=parse_size("256MB"), help="max shard size (256MB)")
    build.add_argument("--clips-per-shard", type=int, default=100_000, help="max clips per shard")
    build.add_argument("--workers", type=int, default=_default_workers(), help="decoding processes")
    build.add_argument("--format", dest="clip_format", choices=CLIP_FORMATS, default="npy.gz",
                       help="clip storage (default npy.gz; see README for the size/speed trade-off)")
    build.add_argument("--crf", type=int, default=18, help="H.264 quality for --format mp4 (default 18)")
    build.add_argument("--motion", choices=MOTION_METHODS, default="farneback", help="optical flow for the motion score")
    build.add_argument("--max-clips-per-video", type=int, default=None)
    mm = build.add_argument_group("moving-mnist source")
    mm.add_argument("--num-clips", type=int, default=1000)
    mm.add_argument("--seed", type=int, default=0)
    mm.add_argument("--digits", type=int, default=2, help="digits per clip")
    mm.add_argument("--speed-min", type=float, default=2.0, help="pixels per frame")
    mm.add_argument("--speed-max", type=float, default=4.0, help="pixels per frame")
    mm.add_argument("--split", choices=("train", "test"), default="train", help="digit ids 0-4499 or held-out 4500-4999")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    encode = commands.add_parser("encode", help="encode clip shards into latent shards with a tokenizer")
    encode.add_argument("shards", help="clip shard set: directory or manifest.json (or a brace pattern)")
    encode.add_argument("out", help="output directory (re-run to resume)")
    encode.add_argument("--tokenizer", required=True, help="directory written by save_pretrained")
    encode.add_argument("--tokenizer-class", default=None, help="module:Class, overrides the config's kind")
    encode.add_argument("--batch-size", type=int, default=8)
    encode.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    encode.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored latent dtype")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", help="summarise a shard set's manifest")
    info.add_argument("shards", help="directory or manifest.json")
    return parser


def _build(args: argparse.Namespace) -> str:
    from msc_data.manifest import ClipBuildConfig
    from msc_data.moving_mnist import MovingMNISTConfig
    from msc_data.shard_writer import build_shards

    fps = args.fps if args.fps > 0 else None
    moving_mnist = None
    if args.src == "moving-mnist":
        moving_mnist = MovingMNISTConfig.from_dict(dict(
            frames=args.frames, size=args.size, num_digits=args.digits, speed_min=args.speed_min,
            speed_max=args.speed_max, split=args.split, fps=fps or MovingMNISTConfig().fps,
        ))
    config = ClipBuildConfig.from_dict(dict(
        frames=args.frames, stride=args.stride, size=args.size, fps=fps, clip_format=args.clip_format,
        mp4_crf=args.crf, motion_method=args.motion, shard_max_bytes=args.shard_size,
        shard_max_clips=args.clips_per_shard, max_clips_per_video=args.max_clips_per_video,
        num_clips=args.num_clips, seed=args.seed, moving_mnist=moving_mnist,
    ))
    manifest = build_shards(args.src, args.out, config, workers=args.workers, progress=not args.quiet)
    lines = [f"{manifest.num_clips} clips in {len(manifest.shards)} shards -> {args.out}"]
    lines += [f"skipped {s.path}: {s.reason}" for s in manifest.skipped]
    return "\n".join(lines)


def _encode(args: argparse.Namespace) -> str:
    from msc_data.latent_cache import encode_shards

    manifest = encode_shards(
        args.shards, args.out, args.tokenizer, tokenizer_class=args.tokenizer_class, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, progress=not args.quiet,
    )
    skipped = f", skipped {manifest.skipped}" if manifest.skipped else ""
    return f"{manifest.num_samples} latents in {len(manifest.shards)} shards -> {args.out}{skipped}"


def _info(args: argparse.Namespace) -> str:
    from msc_data.manifest import ClipManifest, load_manifest

    m = load_manifest(args.shards)
    state = "complete" if m.complete else "INCOMPLETE (re-run the same command to resume)"
    if isinstance(m, ClipManifest):
        return (f"clips: {m.num_clips} x {m.frames}x{m.height}x{m.width} ({m.clip_format}) at {m.build.fps or 'native'} fps "
                f"in {len(m.shards)} shards, {len(m.sources)} sources, {len(m.skipped)} skipped files; {state}")
    return (f"latents: {m.num_samples} from {m.tokenizer_kind} ({m.latent_spec.layout}) in {len(m.shards)} shards, "
            f"skipped {m.skipped or 'none'}; {state}")


def main(argv: Sequence[str] | None = None) -> int:
    from msc_data.package_data import MissingExtraError

    args = _parser().parse_args(argv)
    run = {"build": _build, "encode": _encode, "info": _info}[args.command]
    try:
        print(run(args))
    except (ValueError, FileNotFoundError, MissingExtraError, ConfigError) as err:
        print(f"msc-data: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
