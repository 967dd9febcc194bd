"""`msc cascade upscale` and `msc export`: the subcommands msc-cascade adds to `msc`.

    msc cascade upscale IN.mp4 OUT.mp4 --model DIR [--mode sr|fps]   # also `msc-cascade upscale`
    msc export cascade --model DIR --out DIR     # cascade_step.onnx + vae_decoder.onnx + vae_encoder.onnx
    msc export vae --model DIR --out FILE.onnx   # CausalVAE3D decoder chunk (explicit causal cache)
    msc export vae-encoder --model DIR --out FILE.onnx  # CausalVAE3D encoder (the posterior mean)
    msc export arvae --model DIR --out FILE.onnx # ARVAE decoder (explicit key/value cache)
    msc export check FILE.onnx                   # what a file holds; exit 2 if it is not an msc graph

`upscale` is post-processing of a pixel video (CascadeV §3.4 ii, §4.4): the video is
encoded with the cascade's VAE, the latent is refined by the cascade DiT as the base
latent, and the VAE decodes a video 4x larger (sr) or with 4x the frame rate (fps):

- sr: `N x H x W` -> `N x 4H x 4W`, same frame rate;
- fps: `N` frames -> `1 + 4 (N - 1)` frames at 4x the frame rate.

The causal VAE needs `1 + tc k` frames and sides divisible by its spatial compression
`s`: trailing frames beyond the last valid count are dropped and frames are
center-cropped to multiples of `s` (both reported).

Each export is checked with `onnx.checker` and a parity run in ONNX Runtime at a batch
size and frame count different from the export example; the report is printed as JSON.
`--strict` refuses a graph that `torch.export` cannot trace instead of falling back to
`torch.export.draft_export` with a warning (the cascade step is traced with draft_export
by design; `msc_cascade.onnx_export`). `check` reads the graph kind from the file's
`msc.graph` metadata, validates the metadata and the signature against msc_runtime's
contract, and prints the kind, description, version, producer, metadata and every input
and output with its element type and named shape (JSON); `msc export` is also `msc-export`.
MODEL is a run folder, an exported `model/` folder or a `checkpoint_*` folder. Errors
print one line and exit with code 2. Registered under the `msc.commands` entry-point
group (msc_core.cli); torch and the models are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import numpy as np

    from msc_core.interfaces import LatentSpec

# --------------------------------------------------------------------------- msc cascade


def _configure_cascade(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cascade_command", required=True, metavar="SUBCOMMAND")
    up = add_subcommand(sub, "upscale", "4x the resolution (sr) or the frame rate (fps) of a video",
                        "msc cascade upscale clip.mp4 clip-4x.mp4 --model msc-runs/cascade-sr --steps 8")
    up.add_argument("input", type=Path, help="input video (any format FFmpeg reads)")
    up.add_argument("output", type=Path, help="output .mp4 (H.264)")
    add_model_argument(up, legacy=["--checkpoint"], help="the cascade: run folder, exported model/ folder or "
                       "checkpoint_* folder")
    up.add_argument("--mode", choices=("sr", "fps"), help="must match the model (default: the model's)")
    up.add_argument("--vae-path", type=Path, help="override the VAE directory recorded in the model")
    up.add_argument("--steps", type=positive_int, help="DDIM steps (default: the model's sample_steps)")
    up.add_argument("--seed", type=non_negative_int, default=0)
    up.add_argument("--temperature", type=non_negative_float, default=1.0,
                    help="initial noise scale: 1 samples detail, 0 decodes deterministically (closest to the mean)")
    up.add_argument("--window-frames", type=positive_int, help="latent frames per temporal window (default: whole clip)")
    up.add_argument("--tile-size", type=positive_int, help="latent rows/cols per spatial tile (default: whole frame)")
    up.add_argument("--vae-chunk-frames", type=positive_int, default=2, help="latent frames per VAE decoding chunk")
    add_device_flag(up)
    add_threads_flag(up, default=None)
    add_progress_flag(up)
    up.set_defaults(run=upscale)


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
    """Run `msc cascade upscale` (parsed arguments)."""
    set_threads(args.threads)
    import torch
    from tqdm import tqdm

    from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
    from msc_cascade.video_file import frames_to_tensor, read_video, tensor_to_frames, write_video

    if args.output.is_dir():
        raise IsADirectoryError(f"output {args.output} is a directory; name an .mp4 file")
    settings = CascadeDecodeSettings(
        steps=args.steps, window_frames=args.window_frames, tile_size=args.tile_size,
        vae_chunk_frames=args.vae_chunk_frames, temperature=args.temperature,
    )
    decoder = CascadeDecoder.from_pretrained(args.model, settings, vae_path=args.vae_path, device=args.device)
    config = decoder.config
    if args.mode is not None and args.mode != config.mode:
        raise ValueError(
            f"checkpoint {args.model} is a {config.mode!r} cascade; --mode {args.mode} needs a checkpoint "
            f"trained for {args.mode!r}"
        )
    frames, fps = read_video(args.input)
    frames, notes = conform_frames(frames, decoder.latent_spec)
    for note in notes:
        print(f"msc-cascade: {note}", file=sys.stderr)
    video = frames_to_tensor(frames)
    with torch.no_grad():  # scoped: the command also runs in-process (tests, notebooks)
        base = decoder.encode(video)
        with tqdm(total=decoder.work_units(base), desc=f"cascade {config.mode}", unit="step", file=sys.stderr,
                  disable=args.no_progress) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            out = decoder.decode(base, seed=args.seed, progress=progress)
    out_fps = fps * config.factor if config.mode == "fps" else fps
    write_video(args.output, tensor_to_frames(out[0]), out_fps)
    n, h, w = frames.shape[:3]
    print(f"{args.input} ({n} frames, {w}x{h}, {fps:g} fps) -> {args.output} "
          f"({out.shape[2]} frames, {out.shape[4]}x{out.shape[3]}, {out_fps:g} fps)")
    return 0


CASCADE = Command(
    name="cascade",
    help="cascade decoder (CascadeV) tools: upscale a video 4x in space (sr) or time (fps)",
    configure=_configure_cascade,
    run=lambda args: None,  # a subcommand is required; each sets its own runner
    example="msc cascade upscale clip.mp4 clip-4x.mp4 --model msc-runs/cascade-sr --steps 8",
)


# --------------------------------------------------------------------------- msc export


def _configure_export(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_command", required=True, metavar="SUBCOMMAND")
    cascade = add_subcommand(sub, "cascade", "cascade step + VAE decoder + VAE encoder, for OnnxCascadeDecoder and "
                             "msc runtime", "msc export cascade --model msc-runs/cascade-sr --out cascade-onnx")
    add_model_argument(cascade, legacy=["--checkpoint"], help="the cascade: run folder, exported model/ folder "
                       "or checkpoint_* folder")
    cascade.add_argument("--vae-path", type=Path, help="override the VAE directory recorded in the model")
    cascade.add_argument("--out", type=Path, required=True, help="output directory")
    for name, what, default in (("vae", "CausalVAE3D decoder", "vae_decoder.onnx"),
                                ("vae-encoder", "CausalVAE3D encoder", "vae_encoder.onnx"),
                                ("arvae", "ARVAE decoder", "arvae_decoder.onnx")):
        model = "vae3d" if name.startswith("vae") else name
        p = add_subcommand(sub, name, what, f"msc export {name} --model msc-runs/{model} --out {default}")
        add_model_argument(p, help=f"the {what.split()[0]}: run folder, exported model/ folder or checkpoint_* folder")
        p.add_argument("--out", type=Path, required=True, help=f"output .onnx file (e.g. {default})")
    for p in sub.choices.values():
        p.add_argument("--opset", type=positive_int, help="ONNX opset (default: msc_core.onnx_export.DEFAULT_OPSET)")
        p.add_argument("--strict", action="store_true",
                       help="fail when torch.export cannot trace a graph instead of falling back to draft_export "
                       "(the cascade step uses draft_export by design)")
        add_threads_flag(p, default=None)
        p.set_defaults(run=export)
    check = add_subcommand(sub, "check", "validate an ONNX file written by msc export and print its signature",
                           "msc export check vae_decoder.onnx")
    check.add_argument("file", type=Path)
    check.set_defaults(run=export, threads=None, opset=None, strict=False)


def _describe(report: Any) -> dict:
    out = asdict(report)
    out["path"] = str(report.path)
    return out


MIN_OPSET = 18  # torch.onnx's dynamo exporter writes opset 18 or newer


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter would not write (it writes 18 for 5, stamped 5)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"--opset {opset}: the exporter writes ONNX opsets {MIN_OPSET} to {newest}; use one of those")


_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64",
               16: "bfloat16"}


def describe_graph(path: Path) -> dict[str, Any]:
    """What `msc export check` prints: the kind (from `msc.graph`), description, version, producer,
    metadata, and each input/output with its element type and named shape.

    The metadata is read with `onnx` and validated first (`msc_runtime.graphs.validate_metadata`,
    any kind), then the file is opened the way its runner opens it
    (`msc_runtime.sessions.open_session`: the signature, and ONNX Runtime can load it): a
    corrupt or foreign file, or metadata / a signature that does not match the contract,
    raises one error naming the file and what was expected."""
    import onnx

    from msc_runtime.graphs import GRAPH_DESCRIPTIONS, GRAPH_KINDS, OnnxModelError, validate_metadata
    from msc_runtime.sessions import open_session

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf errors have many types
        detail = str(err).splitlines()[0] if str(err) else ""
        raise OnnxModelError(f"{path} is not a valid ONNX model ({type(err).__name__}: {detail}); expected "
                             f"{' or '.join(GRAPH_DESCRIPTIONS[k] for k in GRAPH_KINDS)}") from None
    info = validate_metadata(path, GRAPH_KINDS, {p.key: p.value for p in proto.metadata_props})
    graph = open_session(path, info.kind, providers=["CPUExecutionProvider"])

    def tensors(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
                     for d in t.shape.dim]
            out.append({"name": v.name, "type": _ELEM_TYPES.get(t.elem_type, str(t.elem_type)), "shape": shape})
        return out

    def value(text: str) -> Any:
        if text[:1] in "[{":
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text

    data = sorted({entry.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                   for entry in t.external_data if entry.key == "location"})
    return {
        "file": str(path),
        "graph": graph.kind,
        "description": proto.doc_string,
        "version": proto.model_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "format": graph.info.format,
        "exporter": graph.info.exporter,
        "opset": graph.info.opset,
        "external_data": ", ".join(data) or None,  # the weights file(s) beside the graph, if any
        "inputs": tensors(proto.graph.input),
        "outputs": tensors(proto.graph.output),
        "metadata": {key: value(text) for key, text in graph.metadata.items()},
    }


def export(args: argparse.Namespace) -> int:
    """Run `msc export ...` (parsed arguments)."""
    set_threads(args.threads)
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # what the user named is checked before the onnx extra is needed
    if args.export_command == "check" and not Path(args.file).is_file():
        raise FileNotFoundError(f"ONNX file not found: {args.file}")
    if args.export_command != "check":  # the model the user named, before the onnx extra is needed
        from msc_core.checkpoint import read_config_kind, resolve_pretrained

        kinds = {"cascade": "cascade", "vae": "vae3d", "vae-encoder": "vae3d", "arvae": "arvae"}
        names = {"cascade": "CascadeModel", "vae3d": "CausalVAE3D", "arvae": "ARVAE"}
        files = resolve_pretrained(args.model)
        found, wanted = read_config_kind(files.config), kinds[args.export_command]
        if found != wanted:
            raise ValueError(f"{files.config} holds a {found!r} model, not a {wanted!r} ({names[wanted]}): "
                             f"msc export {args.export_command} exports a {names[wanted]}")
    if args.export_command == "check":  # onnx and msc_runtime only: no torch import
        try:
            import onnx  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError(f"msc export check needs the 'onnx' extra: pip install 'msc-cascade[onnx]' ({err})") from None
        print(json.dumps(describe_graph(args.file), indent=2))
        return 0
    from msc_cascade.cascade_decoder import load_cascade
    from msc_cascade.onnx_export import (
        DEFAULT_OPSET,
        export_arvae_decoder,
        export_cascade,
        export_vae_decoder,
        export_vae_encoder,
    )
    from msc_core.checkpoint import from_pretrained
    from msc_tokenizers import ARVAE, CausalVAE3D

    opset = args.opset or DEFAULT_OPSET
    check_opset(opset)
    if args.export_command == "cascade":
        model = load_cascade(args.model, vae_path=args.vae_path)
        reports = export_cascade(model, args.out, opset, strict=args.strict)
        print(json.dumps({k: _describe(r) for k, r in reports.items()}, indent=2))
        return 0
    exporters = {"vae": (CausalVAE3D, export_vae_decoder), "vae-encoder": (CausalVAE3D, export_vae_encoder),
                 "arvae": (ARVAE, export_arvae_decoder)}
    model_class, export_graph = exporters[args.export_command]
    report = export_graph(from_pretrained(model_class, args.model), args.out, opset, strict=args.strict)
    print(json.dumps(_describe(report), indent=2))
    return 0


EXPORT = Command(
    name="export",
    help="export the tokenizers and the cascade step to ONNX (VAE decoder and encoder, AR-VAE decoder, cascade) and "
    "check ONNX files",
    configure=_configure_export,
    run=lambda args: None,  # a subcommand is required; each sets its own runner
    example="msc export vae --model msc-runs/vae3d --out vae_decoder.onnx",
)
