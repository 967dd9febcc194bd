"""`msc data` (also `msc-data`): build clip shards, encode latent shards, inspect manifests.

    msc data build SRC OUT [--frames 17 --stride 8 --size 64 --fps 8 --shard-size 256MB --workers N]
    msc data build moving-mnist OUT --num-clips 1000 --frames 16 --size 64 --digits 2
    msc data encode SHARDS OUT --model DIR [--tokenizer-class module:Class]
    msc data info SHARDS

Registered under the `msc.commands` entry-point group (msc_core.cli); cheap to import,
the pipelines are imported when a subcommand runs. User errors (missing paths,
unreadable inputs, missing extras, bad settings) print one `msc: error: ...` line
(`msc-data: error: ...` under the old name) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re

from msc_core.cli import (
    Command,
    add_device_flag,
    add_model_argument,
    add_progress_flag,
    add_subcommand,
    add_threads_flag,
    non_negative_float,
    non_negative_int,
    positive_int,
    set_threads,
)

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


def _configure(parser: argparse.ArgumentParser) -> None:
    from msc_data.clip_format import CLIP_FORMATS
    from msc_data.motion import MOTION_METHODS

    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    build = add_subcommand(commands, "build", "decode videos into webdataset clip shards",
                           "msc data build moving-mnist clips --num-clips 64 --frames 9 --size 64 --no-progress")
    build.add_argument("src", help="folder of videos, a video file, or 'moving-mnist' / 'sample-videos'")
    build.add_argument("out", help="output directory (re-run to resume)")
    build.add_argument("--frames", type=positive_int, default=17, help="frames per clip (default 17)")
    build.add_argument("--stride", type=positive_int, default=8, help="frames between clip starts (default 8)")
    build.add_argument("--size", type=positive_int, default=64, help="clip side after resize + center crop (default 64)")
    build.add_argument("--fps", type=non_negative_float, default=8.0,
                       help="target frame rate; 0 keeps the native rate (default 8)")
    build.add_argument("--shard-size", type=parse_size, default=parse_size("256MB"), help="max shard size (256MB)")
    build.add_argument("--clips-per-shard", type=positive_int, default=100_000, help="max clips per shard")
    build.add_argument("--workers", type=positive_int, default=_default_workers(), help="decoding processes")
    build.add_argument("--format", dest="clip_format", choices=CLIP_FORMATS, default="npy.gz",
                       help="clip storage (default npy.gz; see README for the size/speed trade-off)")
    build.add_argument("--crf", type=int, default=18, help="H.264 quality for --format mp4 (default 18)")
    build.add_argument("--motion", choices=MOTION_METHODS, default="farneback", help="optical flow for the motion score")
    build.add_argument("--max-clips-per-video", type=positive_int, default=None)
    mm = build.add_argument_group("moving-mnist source")
    mm.add_argument("--num-clips", type=positive_int, default=1000)
    mm.add_argument("--seed", type=non_negative_int, default=0)
    mm.add_argument("--digits", type=positive_int, default=2, help="digits per clip")
    mm.add_argument("--speed-min", type=float, default=2.0, help="pixels per frame")
    mm.add_argument("--speed-max", type=float, default=4.0, help="pixels per frame")
    mm.add_argument("--split", choices=("train", "test"), default="train", help="the 4,500 training digits or the 500 held-out ones (the last 50 of each class)")
    add_progress_flag(build, legacy=["--quiet"])
    build.set_defaults(run=_build)

    encode = add_subcommand(commands, "encode", "encode clip shards into latent shards with a tokenizer",
                            "msc data encode clips latents --model msc-runs/vae3d --no-progress")
    encode.add_argument("shards", help="clip shard set: directory or manifest.json (or a brace pattern)")
    encode.add_argument("out", help="output directory (re-run to resume)")
    add_model_argument(encode, legacy=["--tokenizer"],
                       help="the tokenizer: run folder, exported model/ folder or checkpoint_* folder")
    encode.add_argument("--tokenizer-class", default=None, help="module:Class, overrides the config's kind")
    encode.add_argument("--batch-size", type=positive_int, default=8)
    add_device_flag(encode)
    encode.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored latent dtype")
    add_threads_flag(encode, default=None)
    add_progress_flag(encode, legacy=["--quiet"])
    encode.set_defaults(run=_encode)

    info = add_subcommand(commands, "info", "summarise a shard set's manifest", "msc data info clips")
    info.add_argument("shards", help="directory or manifest.json")
    info.set_defaults(run=_info)


def _build(args: argparse.Namespace) -> None:
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"output {args.out} is a file; msc data build writes shards into a directory")
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
    manifest = build_shards(args.src, args.out, config, workers=args.workers, progress=not args.no_progress)
    lines = [f"{manifest.num_clips} clips in {len(manifest.shards)} shards -> {args.out}"]
    lines += [f"skipped {s.path}: {s.reason}" for s in manifest.skipped]
    print("\n".join(lines))


def _encode(args: argparse.Namespace) -> None:
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"output {args.out} is a file; msc data encode writes latent shards into a directory")
    set_threads(args.threads)
    from msc_data.latent_cache import encode_shards

    manifest = encode_shards(
        args.shards, args.out, args.model, tokenizer_class=args.tokenizer_class, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, progress=not args.no_progress,
    )
    skipped = f", skipped {manifest.skipped}" if manifest.skipped else ""
    print(f"{manifest.num_samples} latents in {len(manifest.shards)} shards -> {args.out}{skipped}")


def _info(args: argparse.Namespace) -> None:
    from msc_data.manifest import ClipManifest, load_manifest

    m = load_manifest(args.shards)
    state = "complete" if m.complete else "INCOMPLETE (re-run the same command to resume)"
    if isinstance(m, ClipManifest):
        print(f"clips: {m.num_clips} x {m.frames}x{m.height}x{m.width} ({m.clip_format}) at {m.build.fps or 'native'} fps "
              f"in {len(m.shards)} shards, {len(m.sources)} sources, {len(m.skipped)} skipped files; {state}")
        return
    print(f"latents: {m.num_samples} from {m.tokenizer_kind} ({m.latent_spec.layout}) in {len(m.shards)} shards, "
          f"skipped {m.skipped or 'none'}; {state}")


DATA = Command(
    name="data",
    help="build clip shards from videos, encode latent shards, inspect shard sets",
    description="Video data pipelines: webdataset clip shards from your videos or the bundled sources, latent "
    "shards written with a tokenizer, and shard-set summaries.",
    configure=_configure,
    run=lambda args: None,  # a subcommand is required; each sets its own runner
    example="msc data build moving-mnist clips --num-clips 64 --frames 9 --size 64",
)
