"""Torch-side ONNX export machinery shared by the msc exporters (msc_tokenizers, msc_cascade).

`export_graph` turns a module into one checked `.onnx` file that msc_runtime can read:

1. trace: `torch.export.export` first; when it fails, `torch.export.draft_export` (which
   records data-dependent checks as assumptions instead of failing) with a WARNING naming
   the reason, or `ExportFallbackError` with `strict=True`. A graph known to need
   draft_export passes `draft=True` (documented with its exporter, no warning);
2. convert: always `torch.onnx.export(program, ..., dynamo=True, opset_version=...)`;
3. rename the exporter's symbolic dimensions (`s17`, `4*s75`) to the contract's names
   (`batch`, `4*latent_frames`) in the inputs, outputs and value_info;
4. stamp: `msc.*` metadata_props, producer_name `msc`, the exporting package's version,
   model_version 1 and a description (doc_string);
5. check: no float64 anywhere (coefficient tables are float32 inside graphs), then
   `onnx.checker.check_model(full_check=True)` on the written file;
6. write atomically (temporary names in the target folder, then renames), with the
   weights in `<file>.data` (external data) when they exceed `external_data_threshold`
   (protobuf cannot serialise a model over 2 GB).

`check_parity` then runs the file in ONNX Runtime (CPU) at shapes unlike the export
example and compares every output with PyTorch (`OnnxParityError` beyond the tolerance).
The names of graph kinds and metadata keys are msc_runtime's (`msc_runtime.graphs`), the
one source of truth shared with the runners.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from msc_core.cli import CommandFailed

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MODEL_VERSION = 1
PRODUCER_NAME = "msc"
# protobuf refuses to serialise a message over 2 GiB; keep a margin for the graph itself
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
_SYMBOL = re.compile(r"\b[su]\d+\b")  # the exporter's symbols: s17 (backed), u0 (unbacked)
_DOUBLE = 11  # onnx.TensorProto.DOUBLE


class OnnxExportError(CommandFailed):
    """An export ran but produced a graph msc does not accept (the message says why)."""


class ExportFallbackError(OnnxExportError):
    """`strict=True` and `torch.export` cannot trace the graph (no draft_export fallback)."""


class OnnxParityError(CommandFailed):
    """ONNX Runtime output differs from PyTorch by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how it was checked."""

    path: Path
    graph: str
    exporter: str  # "torch.export" or "draft_export"
    opset: int
    parity_max_abs_err: float
    parity_shapes: dict[str, tuple[int, ...]]
    external_data: str | None = None  # the weights file beside `path`, when the graph uses one


def require_onnx() -> tuple[Any, Any]:
    """The `onnx` and `onnxruntime` modules, or a ModuleNotFoundError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ModuleNotFoundError(
            f"ONNX export needs the 'onnx' extra: pip install 'msc-tokenizers[onnx]' (or 'msc-cascade[onnx]') ({err})"
        ) from None
    return onnx, onnxruntime


def package_version(distribution: str) -> str:
    """The installed version of `distribution` (the exporting package), `0+unknown` when not installed."""
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def first_line(err: BaseException) -> str:
    """`Type: first non-empty line of the message` (at most 300 characters)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# -----------------------------------------------------------------------------
# trace and convert


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep the exporters' progress prints (stdout) and draft_export's report (a multi-page
    graph dump at WARNING) out of the caller's output; our own log says what happened."""
    noisy = [logging.getLogger(name) for name in (
        "torch.export._draft_export", "torch.fx.experimental.symbolic_shapes", "torch.onnx", "onnxscript", "onnx_ir",
        "torch._export", "torch.export")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)


def trace_program(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic_shapes: Any,
    graph: str,
    *,
    draft: bool = False,
    strict: bool = False,
) -> tuple[Any, str]:
    """`(ExportedProgram, exporter)` of `module(*args)`.

    `torch.export` first; if it fails, `torch.export.draft_export` with a WARNING naming the
    reason, or `ExportFallbackError` when `strict`. `draft=True` goes to draft_export at once
    (a graph documented to need it, e.g. the cascade step: no warning, allowed when strict).
    """
    module = module.eval()
    with quiet_exporter():
        if draft:
            return torch.export.draft_export(module, args, dynamic_shapes=dynamic_shapes), "draft_export"
        try:
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False), "torch.export"
        except Exception as err:  # noqa: BLE001 - any torch.export failure: fall back or refuse
            reason = first_line(err)
            if strict:
                raise ExportFallbackError(
                    f"torch.export cannot trace the {graph} graph ({reason}); strict export refuses the draft_export "
                    f"fallback (export without --strict / strict=False to accept a draft_export graph)"
                ) from None
            logger.warning(
                "torch.export cannot trace the %s graph (%s); falling back to torch.export.draft_export, which "
                "assumes what the example shows about data-dependent checks (strict=True / --strict makes this an "
                "error)", graph, reason,
            )
            return torch.export.draft_export(module, args, dynamic_shapes=dynamic_shapes), "draft_export"


def convert_program(
    program: Any, args: tuple[torch.Tensor, ...], input_names: Sequence[str], output_names: Sequence[str], opset: int
) -> Any:
    """The ONNX ModelProto of an ExportedProgram (the dynamo exporter, `opset`)."""
    with quiet_exporter():
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            verbose=False,
        )
    return onnx_program.model_proto


# -----------------------------------------------------------------------------
# graph edits and checks


def _value_infos(proto: Any) -> Iterator[Any]:
    yield from proto.graph.input
    yield from proto.graph.output
    yield from proto.graph.value_info


def rename_dims(proto: Any, names: Mapping[str, Mapping[int, str]]) -> dict[str, str]:
    """Give the exporter's symbolic dimensions the contract's names, everywhere in the graph.

    `names[value][axis]` names a dynamic axis of a graph input or output. A symbol found
    alone at such an axis (`s17`) takes that name; expressions elsewhere are rewritten with
    the same map (`4*s75` -> `4*latent_frames`); a named axis whose dimension is an
    expression (`4*s39 - 3`), or a size the exporter fixed from the example (a cache
    truncated to `min(n, context)`), takes its name outright. Returns the symbol map. Raises
    `OnnxExportError` if a symbol is left in an input or output.
    """
    symbols: dict[str, str] = {}
    by_name = {v.name: v for v in [*proto.graph.input, *proto.graph.output]}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise OnnxExportError(f"rename_dims: the graph has no input or output {', '.join(unknown)}")
    for value_name, axes in names.items():
        dims = by_name[value_name].type.tensor_type.shape.dim
        for axis, name in axes.items():
            param = dims[axis].dim_param
            if _SYMBOL.fullmatch(param) and symbols.setdefault(param, name) != name:
                raise OnnxExportError(
                    f"rename_dims: {value_name} axis {axis} is {param}, already named {symbols[param]!r}, not {name!r}"
                )

    def rewrite(text: str) -> str:
        return _SYMBOL.sub(lambda m: symbols.get(m.group(0), m.group(0)), text)

    io = [(v, names.get(v.name, {})) for v in by_name.values()]
    for value, axes in [*io, *((v, {}) for v in proto.graph.value_info)]:
        if not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in axes:
                dim.dim_param = axes[axis]  # also where the exporter fixed a size from the example (min(...))
            elif dim.HasField("dim_param"):
                dim.dim_param = rewrite(dim.dim_param)
    left = [f"{v.name}[{axis}] = {d.dim_param}" for v in by_name.values()
            for axis, d in enumerate(v.type.tensor_type.shape.dim) if _SYMBOL.search(d.dim_param)]
    if left:
        raise OnnxExportError(f"unnamed symbolic dimensions left in the graph's inputs/outputs: {', '.join(left)}")
    return symbols


def dim_params(proto: Any) -> dict[str, list[int | str]]:
    """Each graph input's and output's shape: ints for fixed axes, names for dynamic ones."""
    return {
        v.name: [d.dim_param if d.HasField("dim_param") else d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.output]
    }


def _nodes(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every node of `graph`, subgraphs (If / Loop bodies) included."""
    for node in graph.node:
        yield where, node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub, f"{where} > {node.op_type} {node.name}")


def float64_uses(proto: Any) -> list[str]:
    """Every place a graph holds or computes float64: initializers, Cast to double, double
    constants and attributes, inputs/outputs/value_info (functions and subgraphs included)."""
    found = [f"initializer {t.name}" for t in proto.graph.initializer if t.data_type == _DOUBLE]
    for value in _value_infos(proto):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == _DOUBLE:
            found.append(f"value {value.name}")
    nodes = list(_nodes(proto.graph, "graph"))
    for function in proto.functions:
        nodes += list(_nodes(function, f"function {function.name}"))
    for where, node in nodes:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _DOUBLE:
                found.append(f"{where}: Cast to double ({node.name or node.output[0]})")
            if attr.HasField("t") and attr.t.data_type == _DOUBLE:
                found.append(f"{where}: {node.op_type} with a double tensor ({node.name or node.output[0]})")
    return found


def stamp(
    proto: Any,
    graph: str,
    exporter: str,
    opset: int,
    metadata: Mapping[str, Any],
    description: str,
    producer_version: str,
) -> None:
    """Write the `msc.*` metadata (strings; JSON for structured values) and the model fields."""
    from msc_runtime import graphs

    entries = {graphs.GRAPH_KEY: graph, graphs.FORMAT_KEY: graphs.FORMAT, graphs.EXPORTER_KEY: exporter,
             graphs.OPSET_KEY: str(opset), **metadata}
    del proto.metadata_props[:]
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = PRODUCER_NAME
    proto.producer_version = producer_version
    proto.model_version = MODEL_VERSION
    proto.doc_string = description


def _model_bytes(proto: Any) -> int:
    """Bytes of the initializers' data (what external data would move out)."""
    onnx, _ = require_onnx()
    total = 0
    for t in proto.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


def external_data_path(path: str | Path) -> Path:
    """Where `write_model` puts the weights of a graph over the threshold: `<file>.data`."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def write_model(proto: Any, path: str | Path, external_data_threshold: int | None = None) -> Path | None:
    """Check and write `proto` to `path`; returns the external data file when one is used.

    Over `external_data_threshold` bytes of weights (default `EXTERNAL_DATA_THRESHOLD`) the
    tensors of 1 KB or more go to `<file>.data` beside it. Both files are written under temporary names in
    the target folder, checked there (`onnx.checker.check_model(full_check=True)`), then
    renamed: data first, graph last, so an interrupted export leaves the previous file
    whole. A stale `<file>.data` of an earlier export is removed when the new graph holds
    its weights inline.
    """
    onnx, _ = require_onnx()
    path = Path(path)
    threshold = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold
    data = external_data_path(path)
    external = _model_bytes(proto) > threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = staging / path.name
        if external:
            # tensors under 1 KB (shape constants) stay inline, where shape inference reads them
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            tmp.write_bytes(proto.SerializeToString())
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as err:  # noqa: BLE001 - checker and shape-inference errors have many types
            raise OnnxExportError(f"{path}: the exported graph fails onnx.checker ({first_line(err)})") from None
        if external:
            os.replace(staging / data.name, data)
        os.replace(tmp, path)
        if not external:
            data.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data if external else None


# -----------------------------------------------------------------------------
# the whole export


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    graph: str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any,
    dim_names: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, Any],
    description: str,
    producer_version: str,
    opset: int = DEFAULT_OPSET,
    draft: bool = False,
    strict: bool = False,
    external_data_threshold: int | None = None,
) -> tuple[str, Path | None]:
    """Trace, convert, rename dimensions, stamp, check and write one graph (see the module
    docstring); returns `(exporter, external data file or None)`."""
    require_onnx()
    program, exporter = trace_program(module, args, dynamic_shapes, graph, draft=draft, strict=strict)
    proto = convert_program(program, args, input_names, output_names, opset)
    rename_dims(proto, dim_names)
    stamp(proto, graph, exporter, opset, metadata, description, producer_version)
    doubles = float64_uses(proto)
    if doubles:
        shown = ", ".join(doubles[:5]) + (f" and {len(doubles) - 5} more" if len(doubles) > 5 else "")
        raise OnnxExportError(
            f"the {graph} graph computes in float64 ({shown}); msc graphs are float32 throughout (make coefficient "
            f"tables float32 in the exported module)"
        )
    return exporter, write_model(proto, path, external_data_threshold)


def check_parity(
    path: str | Path,
    graph: str,
    module: nn.Module,
    probes: Sequence[tuple[torch.Tensor, ...]],
    tolerance: float,
) -> float:
    """Max abs difference of every output of `path` in ONNX Runtime (CPU) vs `module(*probe)`
    over `probes` (shapes unlike the export example); `OnnxParityError` beyond `tolerance`.

    A graph of one of msc_runtime's kinds is opened the way its runner opens it
    (`msc_runtime.sessions.open_session`: metadata and signature validated), so a file the
    runners would refuse fails here, at export time."""
    _, ort = require_onnx()
    from msc_runtime import graphs, sessions

    path = Path(path)
    if graph in graphs.GRAPH_KINDS:
        session = sessions.open_session(path, graph, ["CPUExecutionProvider"]).session
    else:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for probe in probes:
        outputs = session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, probe)})
        with torch.no_grad():
            expected = module(*probe)
        expected = expected if isinstance(expected, tuple) else (expected,)
        if len(outputs) != len(expected):
            raise OnnxParityError(f"{path}: ONNX Runtime returns {len(outputs)} outputs, PyTorch {len(expected)} ({graph})")
        for o, e in zip(outputs, expected):
            if o.shape != tuple(e.shape):
                raise OnnxParityError(
                    f"{path}: ONNX Runtime output shape {o.shape} differs from PyTorch's {tuple(e.shape)} on {graph}"
                )
        err = max(float(np.abs(o - e.cpu().numpy()).max()) if o.size else 0.0 for o, e in zip(outputs, expected))
        if not err <= tolerance:
            shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(names, probe))
            raise OnnxParityError(
                f"{path}: ONNX Runtime differs from PyTorch by {err:.3g} (> {tolerance:g}) on {graph} at {shapes}"
            )
        worst = max(worst, err)
    return worst
