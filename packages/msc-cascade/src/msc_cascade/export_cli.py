"""`msc-export`: write the decoders as ONNX graphs and check ONNX files.

    msc-export cascade --checkpoint DIR --out DIR   # cascade_step.onnx + vae_decoder.onnx
    msc-export vae --model DIR --out FILE.onnx      # CausalVAE3D decoder chunk (explicit causal cache)
    msc-export arvae --model DIR --out FILE.onnx    # ARVAE decoder (explicit key/value cache)
    msc-export check FILE.onnx                      # what a file holds; exit 2 if it is not an msc graph

Each export is checked with `onnx.checker` and a parity run in ONNX Runtime at a batch
size and frame count different from the export example; the report is printed as JSON.
Errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from msc_cascade.cascade_decoder import load_cascade
from msc_cascade.onnx_export import (
    DEFAULT_OPSET,
    GRAPH_KEY,
    GRAPH_KINDS,
    ExportReport,
    OnnxModelError,
    OnnxParityError,
    export_arvae_decoder,
    export_cascade,
    export_vae_decoder,
    read_graph_metadata,
)
from msc_core.checkpoint import from_pretrained
from msc_tokenizers import ARVAE, CausalVAE3D

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msc-export", description="Export msc decoders to ONNX.")
    sub = parser.add_subparsers(dest="command", required=True)
    cascade = sub.add_parser("cascade", help="cascade step + VAE decoder, for OnnxCascadeDecoder")
    cascade.add_argument("--checkpoint", type=Path, required=True, help="cascade save_pretrained directory")
    cascade.add_argument("--vae-path", type=Path, help="override the VAE directory recorded in the checkpoint")
    cascade.add_argument("--out", type=Path, required=True, help="output directory")
    for name, what in (("vae", "CausalVAE3D"), ("arvae", "ARVAE")):
        p = sub.add_parser(name, help=f"{what} decoder")
        p.add_argument("--model", type=Path, required=True, help=f"{what} save_pretrained directory")
        p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    for p in sub.choices.values():
        p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    check = sub.add_parser("check", help="validate an ONNX file written by msc-export")
    check.add_argument("file", type=Path)
    return parser


def _describe(report: ExportReport) -> dict:
    out = asdict(report)
    out["path"] = str(report.path)
    return out


def run(args: argparse.Namespace) -> int:
    if args.command == "cascade":
        model = load_cascade(args.checkpoint, vae_path=args.vae_path)
        reports = export_cascade(model, args.out, args.opset)
        print(json.dumps({k: _describe(r) for k, r in reports.items()}, indent=2))
    elif args.command == "vae":
        print(json.dumps(_describe(export_vae_decoder(from_pretrained(CausalVAE3D, args.model), args.out, args.opset)), indent=2))
    elif args.command == "arvae":
        print(json.dumps(_describe(export_arvae_decoder(from_pretrained(ARVAE, args.model), args.out, args.opset)), indent=2))
    elif args.command == "check":
        for kind in GRAPH_KINDS:  # the error of the first kind tells what is wrong with a foreign file
            try:
                metadata = read_graph_metadata(args.file, kind)
            except OnnxModelError as err:
                if "holds a" in str(err):
                    continue
                raise
            print(json.dumps({"file": str(args.file), **metadata}, indent=2))
            return 0
        raise OnnxModelError(f"{args.file} has a '{GRAPH_KEY}' that is none of {GRAPH_KINDS}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return run(args)
    except (OnnxModelError, OnnxParityError, FileNotFoundError, ValueError) as err:
        print(f"msc-export: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
