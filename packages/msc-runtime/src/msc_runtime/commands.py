"""`msc-runtime decode|upscale` (also `msc runtime ...` when msc-core's dispatcher is installed).

    msc-runtime decode LATENTS.npy OUT.mp4 --model DIR_OR_FILE   # tokenizer latents (or cascade base latents) -> mp4
    msc-runtime upscale IN.mp4 OUT.mp4 --model DIR              # a video 4x larger (sr) or 4x smoother (fps)

`decode --model` names a decoder graph (`vae_decoder.onnx`, `arvae_decoder.onnx`, a pipeline
folder's `decoder.onnx`) or a folder holding one; a folder with `cascade_step.onnx` is a
cascade: the latents are BASE latents, refined and then decoded. LATENTS.npy holds one
clip's latents with or without the batch axis (`[C, T, h, w]` / `[1, C, T, h, w]` for the 3D
VAE, `[T, L, D]` / `[1, T, L, D]` for the AR-VAE), float16/32/64; `--normalized` reads
generated (normalised) latents and denormalises them with the graph's metadata. The VAE
and AR-VAE decode streams: `--chunk-frames` latent frames per call, frames written as they
are decoded.

`upscale` encodes the video with `vae_encoder.onnx`, refines with `cascade_step.onnx` and
decodes with `vae_decoder.onnx` (trailing frames beyond `1 + tc k` are dropped and frames
center-cropped to multiples of the VAE's spatial compression, both reported).

Relative paths are resolved where the command is typed. Errors a user can fix (a missing
file, a foreign graph, bad arguments, a missing extra) print one line and exit with code 2.
This module imports neither torch nor msc_core: `RUNTIME` has the attributes of
`msc_core.cli.Command`, which msc's dispatcher converts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from msc_runtime.graphs import (
    ARVAE_DECODER,
    CASCADE_STEP,
    GRAPH_FILES,
    PIPELINE_DECODER_FILE,
    VAE_DECODER,
)

DEFAULT_FPS = 25.0


# --------------------------------------------------------------------------- argument types


def resolved_path(text: str) -> Path:
    """A path as typed, made absolute against the directory the command runs in."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text).expanduser().absolute()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def example_epilog(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


# --------------------------------------------------------------------------- parsers


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--providers", help="ONNX Runtime providers in priority order, comma-separated "
                        "(e.g. cuda,cpu or CPUExecutionProvider; default: CUDA when this build has it, then CPU)")
    parser.add_argument("--threads", type=positive_int, help="intra-op CPU threads (default: ONNX Runtime's)")
    parser.add_argument("--fps", type=positive_float, help="frame rate of the output video")
    parser.add_argument("--lossless", action="store_true",
                        help="write lossless RGB H.264 (the exact frames; not every player shows it) instead of "
                             "yuv420p at --crf")
    parser.add_argument("--crf", type=non_negative_int, default=18, help="H.264 quality of the yuv420p output (default 18)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log the providers each graph runs on")


def _add_cascade_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the cascade's initial noise")
    parser.add_argument("--steps", type=positive_int, help="DDIM steps (default: the model's sample_steps)")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0,
                        help="initial noise scale: 1 samples detail, 0 decodes deterministically")
    parser.add_argument("--window-frames", type=positive_int, help="latent frames per temporal window (default: whole clip)")
    parser.add_argument("--window-overlap", type=non_negative_int, default=2,
                        help="latent frames two neighbouring windows share (default 2)")
    parser.add_argument("--tile", "--tile-size", dest="tile_size", type=positive_int,
                        help="latent rows/cols per spatial tile of the refinement (default: whole frame)")
    parser.add_argument("--tile-overlap", type=non_negative_int, default=2, help="latent rows/cols two tiles share (default 2)")
    parser.add_argument("--vae-chunk-frames", type=positive_int, default=2,
                        help="latent frames per causal VAE decoding chunk (default 2)")
    parser.add_argument("--vae-tile", "--vae-tile-size", dest="vae_tile_size", type=positive_int,
                        help="latent rows/cols per VAE decoder tile (default: whole frame)")
    parser.add_argument("--vae-tile-overlap", type=non_negative_int, default=1,
                        help="latent rows/cols two VAE decoder tiles share (default 1)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add `decode` and `upscale` to `parser` (`msc-runtime` or `msc runtime`)."""
    prog = parser.prog
    sub = parser.add_subparsers(dest="runtime_command", required=True, metavar="SUBCOMMAND")

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=example_epilog(f"{prog} {example}"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    decode = add("decode", "decode latents (.npy) to an mp4 with an exported decoder, or refine base latents "
                 "with an exported cascade and decode them",
                 "decode latents.npy clip.mp4 --model exported/vae_decoder.onnx --fps 24")
    decode.add_argument("latents", type=resolved_path, help="latents .npy, one clip (batch axis optional)")
    decode.add_argument("output", type=resolved_path, help="output .mp4 (H.264)")
    decode.add_argument("--model", type=resolved_path, required=True,
                        help="decoder .onnx file, or a folder holding vae_decoder.onnx / arvae_decoder.onnx / "
                             "decoder.onnx, or a cascade folder (cascade_step.onnx + vae_decoder.onnx)")
    decode.add_argument("--normalized", action="store_true",
                        help="the latents are generated (normalised): denormalise with the graph's metadata first")
    decode.add_argument("--chunk-frames", type=positive_int, default=1,
                        help="latent frames per decoder call when streaming (default 1)")
    _add_cascade_flags(decode)
    _add_runtime_flags(decode)
    decode.set_defaults(run=run_decode)

    upscale = add("upscale", "4x the resolution (sr) or the frame rate (fps) of a video with an exported cascade",
                  "upscale clip.mp4 clip-4x.mp4 --model exported/cascade-sr --steps 8 --seed 0")
    upscale.add_argument("input", type=resolved_path, help="input video (any format FFmpeg reads)")
    upscale.add_argument("output", type=resolved_path, help="output .mp4 (H.264)")
    upscale.add_argument("--model", type=resolved_path, required=True,
                         help="cascade folder: cascade_step.onnx, vae_encoder.onnx, vae_decoder.onnx (msc export cascade)")
    _add_cascade_flags(upscale)
    _add_runtime_flags(upscale)
    upscale.set_defaults(run=run_upscale)


# --------------------------------------------------------------------------- runners


def _setup(args: argparse.Namespace) -> None:
    import logging

    logger = logging.getLogger("msc_runtime")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("msc-runtime: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a directory; name an .mp4 file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")


def _settings(args: argparse.Namespace) -> Any:
    from msc_runtime.cascade import RefineSettings

    return RefineSettings(steps=args.steps, temperature=args.temperature, window_frames=args.window_frames,
                          window_overlap=args.window_overlap, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                          vae_chunk_frames=args.vae_chunk_frames, vae_tile_size=args.vae_tile_size,
                          vae_tile_overlap=args.vae_tile_overlap)


def load_latents(path: Path) -> np.ndarray:
    """An .npy of latents (no pickle), as float32 with the batch axis added when absent."""
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} not found")
    try:
        latents = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a .npy array file ({str(err).splitlines()[0] if str(err) else err})") from None
    if not isinstance(latents, np.ndarray):
        raise ValueError(f"{path} holds several arrays (.npz); save one clip's latents with np.save")
    if not np.issubdtype(latents.dtype, np.floating):
        raise ValueError(f"{path} holds {latents.dtype} values; latents are floating-point arrays")
    return latents


def find_decoder(model: Path) -> tuple[str, Path]:
    """(kind, path) of what `decode --model` names: a cascade folder, a decoder folder or file."""
    if model.is_file():
        return "file", model
    if not model.is_dir():
        raise FileNotFoundError(f"model {model} not found; name a decoder .onnx file or a folder holding one")
    if (model / GRAPH_FILES[CASCADE_STEP]).is_file():
        return CASCADE_STEP, model
    for name in (GRAPH_FILES[VAE_DECODER], GRAPH_FILES[ARVAE_DECODER], PIPELINE_DECODER_FILE):
        if (model / name).is_file():
            return "file", model / name
    names = ", ".join((GRAPH_FILES[CASCADE_STEP], GRAPH_FILES[VAE_DECODER], GRAPH_FILES[ARVAE_DECODER],
                       PIPELINE_DECODER_FILE))
    raise FileNotFoundError(f"{model} holds none of {names}; export one with msc export (vae, arvae or cascade)")


def _with_batch(latents: np.ndarray, rank: int, path: Path) -> np.ndarray:
    if latents.ndim == rank - 1:
        latents = latents[None]
    if latents.ndim != rank:
        raise ValueError(f"{path} holds an array of shape {latents.shape}; this decoder reads one clip of "
                         f"{rank - 1} axes (or {rank} with a batch axis of 1)")
    if latents.shape[0] != 1:
        raise ValueError(f"{path} holds a batch of {latents.shape[0]} clips; the command writes one video: "
                         "save one clip (e.g. latents[0])")
    return latents


def _frames(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    from msc_runtime.video import video_to_frames

    for block in blocks:
        yield video_to_frames(block[0])


def run_decode(args: argparse.Namespace) -> int:
    """Run `decode` (parsed arguments)."""
    _setup(args)
    _check_output(args.output)
    latents = load_latents(args.latents)
    kind, path = find_decoder(args.model)
    from msc_runtime.video import require_av, write_video

    require_av()  # before minutes of work
    fps = args.fps or DEFAULT_FPS
    frame_count = 0

    def counted(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal frame_count
        for frames in blocks:
            frame_count += len(frames)
            yield frames

    if kind == CASCADE_STEP:
        from msc_runtime.cascade import CascadeRefiner

        refiner = CascadeRefiner(path, _settings(args), args.providers, args.threads)
        base = _with_batch(latents, 5, args.latents)
        if args.normalized:
            base = refiner.vae_decoder.denormalize(base)
        video = refiner.decode(base, seed=args.seed)
        write_video(args.output, counted(_frames(iter([video]))), fps, args.crf, args.lossless)
        provider = refiner.step.provider
        what = f"cascade {refiner.mode} ({refiner.steps} steps, seed {args.seed})"
    else:
        from msc_runtime.sessions import open_session

        graph = open_session(path, (VAE_DECODER, ARVAE_DECODER), args.providers, args.threads)
        decoder = _decoder(graph)
        z = _with_batch(latents, 5 if graph.kind == VAE_DECODER else 4, args.latents)
        z = decoder.denormalize(z) if args.normalized else decoder.check_latents(z)
        axis = decoder.LATENT_FRAME_AXIS
        chunks = (np.take(z, range(s, min(s + args.chunk_frames, z.shape[axis])), axis=axis)
                  for s in range(0, z.shape[axis], args.chunk_frames))
        write_video(args.output, counted(_frames(decoder.stream(chunks))), fps, args.crf, args.lossless)
        provider = graph.provider
        what = graph.kind
    print(f"{args.latents} -> {args.output} ({frame_count} frames, {fps:g} fps; {what} on {provider})")
    return 0


def _decoder(graph: Any) -> Any:
    from msc_runtime.arvae import ARVAEDecoder
    from msc_runtime.vae import VAEDecoder

    return (VAEDecoder if graph.kind == VAE_DECODER else ARVAEDecoder)(graph)


def run_upscale(args: argparse.Namespace) -> int:
    """Run `upscale` (parsed arguments)."""
    _setup(args)
    _check_output(args.output)
    from msc_runtime.cascade import CascadeRefiner
    from msc_runtime.video import conform_frames, frames_to_video, read_video, require_av, write_video

    require_av()
    if not args.input.is_file():
        raise FileNotFoundError(f"input video {args.input} not found")
    refiner = CascadeRefiner(args.model, _settings(args), args.providers, args.threads)
    encoder = refiner.encoder  # a missing vae_encoder.onnx is reported before the video is read
    frames, fps = read_video(args.input)
    spec = encoder.latent_spec
    frames, notes = conform_frames(frames, spec.temporal_compression, spec.spatial_compression, spec.causal_first_frame)
    for note in notes:
        print(f"msc-runtime: {note}", file=sys.stderr)
    video = refiner.upscale(frames_to_video(frames), seed=args.seed)
    out_fps = args.fps or (fps * refiner.factor if refiner.mode == "fps" else fps)
    from msc_runtime.video import video_to_frames

    write_video(args.output, video_to_frames(video[0]), out_fps, args.crf, args.lossless)
    n, h, w = frames.shape[:3]
    print(f"{args.input} ({n} frames, {w}x{h}, {fps:g} fps) -> {args.output} ({video.shape[2]} frames, "
          f"{video.shape[4]}x{video.shape[3]}, {out_fps:g} fps; cascade {refiner.mode} on {refiner.step.provider})")
    return 0


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class RuntimeCommand:
    """The attributes of `msc_core.cli.Command` (msc's dispatcher converts it), without importing msc_core."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    example: str
    description: str | None = None


RUNTIME = RuntimeCommand(
    name="runtime",
    help="deploy exported decoders with ONNX Runtime (no PyTorch): decode latents, upscale a video",
    configure=configure,
    run=lambda args: None,  # a subcommand is required; each sets its own runner
    example="msc runtime upscale clip.mp4 clip-4x.mp4 --model exported/cascade-sr --steps 8",
    description="Run msc's exported ONNX graphs with ONNX Runtime and numpy: `decode` latents to an mp4 "
    "(3D VAE, AR-VAE or cascade), `upscale` a video with a cascade.",
)
