"""ONNX export of the decoders and an ONNX Runtime runner (DESIGN.md, "Cascade decoder").

Three graphs, each with dynamic batch and frames (and latent height/width for the
grid models), each stamped with `msc.*` metadata so a runner can tell what a file holds:

- `vae3d_decoder`: one causal chunk of `CausalVAE3D.decode_step`: `(latents, cache_in_*)
  -> (video, cache_out_*)`. The causal cache (the last `k_t - 1` frames of every causal
  convolution's input) is explicit, so chunked decoding works in ONNX Runtime; a clip
  start is the all-zero cache, and the first chunk's output starts with `tc - 1` copies
  of frame 0 that the runner drops (as `CausalVAE3D.decode_chunk` does).
- `arvae_decoder`: `ARVAE.forward_decoder`: `(latents, cache_in_*) -> (video, cache_out_*)`,
  the cache being per layer the keys/values of past frames' latent tokens (any length,
  zero at a clip start).
- `cascade_step`: one cascade denoising step, DiT forward + DDIM update
  (`cascade_sampling.cascade_ddim_step`): `(x_t, base_up, t, t_next) -> x_next`.

Exporter: always `torch.onnx.export(..., dynamo=True, opset_version=...)`. The two
tokenizer decoders go through `torch.export` as they are. The cascade step does not:
`msc_core.diffusion.ddim_step` validates its timesteps with data-dependent Python checks
(`bool((t_next > t).any())`), which `torch.export` refuses, and the grid attention's
padding arithmetic with symbolic frame counts produces guards it cannot prove. The step
is therefore traced with `torch.export.draft_export` (still the dynamo exporter; it
records those checks as assumptions instead of failing) and the resulting
ExportedProgram is converted with `dynamo=True`. `dynamo=False` (TorchScript tracing)
is not used: it would bake the frame count into the grid attention's partition.
Every export is checked with `onnx.checker.check_model` and a parity run in ONNX Runtime
at a batch size and frame count different from the export example.

Runner: `OnnxCascadeDecoder` reproduces `CascadeDecoder.decode` (same loop:
`cascade_decoder.CascadeDecodePipeline`) with providers CUDA then CPU, logs when CUDA
was requested but is not used, and with `verify=` checks parity against PyTorch before
it is used. A corrupt, foreign or mismatched file raises `OnnxModelError` naming the file
and what was expected; so does a file whose `msc.*` metadata lacks a key its runner
needs (`REQUIRED_METADATA`). Runner inputs follow `msc_core.validation`: floating (another
float dtype is cast to float32), finite, the graph's layout and no zero-sized axis, checked
before ONNX Runtime sees them (a `ValueError` naming the argument and the file).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from msc_cascade.cascade_decoder import CascadeDecodePipeline, CascadeDecoder, CascadeDecodeSettings, load_cascade
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_cascade.cascade_sampling import cascade_ddim_step
from msc_core.checkpoint import atomic_write_bytes
from msc_core.cli import CommandFailed
from msc_core.interfaces import LatentSpec
from msc_core.validation import check_finite, check_positive_int, check_tensor
from msc_tokenizers import ARVAE, CausalVAE3D

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
GRAPH_KEY = "msc.graph"
VAE_DECODER, ARVAE_DECODER, CASCADE_STEP = "vae3d_decoder", "arvae_decoder", "cascade_step"
GRAPH_KINDS = (VAE_DECODER, ARVAE_DECODER, CASCADE_STEP)
CASCADE_STEP_FILE, VAE_DECODER_FILE = "cascade_step.onnx", "vae_decoder.onnx"
GRAPH_DESCRIPTIONS = {
    VAE_DECODER: "the CausalVAE3D decoder chunk graph (msc export vae / cascade)",
    ARVAE_DECODER: "the ARVAE decoder graph (msc export arvae)",
    CASCADE_STEP: "the cascade denoising step graph (msc export cascade)",
}
# the `msc.*` metadata each runner reads (besides `msc.graph`)
REQUIRED_METADATA: dict[str, tuple[str, ...]] = {
    VAE_DECODER: ("msc.latent_spec", "msc.cache"),
    ARVAE_DECODER: ("msc.latent_spec", "msc.cache"),
    CASCADE_STEP: ("msc.config", "msc.latent_spec"),
}
VAE_CACHE_FIELDS = ("channels", "frames", "height_scale", "width_scale")
ARVAE_CACHE_FIELDS = ("layers", "heads", "head_dim", "tokens_per_frame")


class OnnxModelError(ValueError):
    """An ONNX file is missing, corrupt, foreign or holds another graph than expected."""


class OnnxParityError(CommandFailed):
    """ONNX Runtime output differs from PyTorch by more than the tolerance."""


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ModuleNotFoundError(
            f"ONNX export and runtime need the 'onnx' extra: pip install 'msc-cascade[onnx]' ({err})"
        ) from None
    return onnx, onnxruntime


# -----------------------------------------------------------------------------
# exportable modules


class VAEDecodeStep(nn.Module):
    """`CausalVAE3D.decode_step` with the cache as separate tensors: `(latents, *cache) -> (video, *cache)`."""

    def __init__(self, vae: CausalVAE3D) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        video, new_cache = self.vae.decode_step(latents, list(cache))
        return (video, *new_cache)


class ARVAEDecodeStep(nn.Module):
    """`ARVAE.forward_decoder` with the cache as separate tensors."""

    def __init__(self, arvae: ARVAE) -> None:
        super().__init__()
        self.arvae = arvae

    def forward(self, latents: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        video, new_cache = self.arvae.forward_decoder(latents, list(cache))
        return (video, *new_cache)


class CascadeDenoiseStep(nn.Module):
    """One cascade DDIM step: `(x_t, base_up, t [B], t_next [B]) -> x_next` (scaled latent space)."""

    def __init__(self, model: CascadeModel) -> None:
        super().__init__()
        self.dit = model.dit
        self.prediction, self.residual = model.config.prediction, model.config.residual
        self.register_buffer("alphas_cumprod", model.alphas_cumprod.clone(), persistent=False)

    def forward(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return cascade_ddim_step(self.dit, x_t, base_up, t, t_next, self.alphas_cumprod, self.prediction, self.residual)


# -----------------------------------------------------------------------------
# export


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how it was checked."""

    path: Path
    graph: str
    exporter: str  # "torch.export" or "draft_export"
    opset: int
    parity_max_abs_err: float
    parity_shapes: dict[str, tuple[int, ...]]


def _dims() -> dict[str, Any]:
    Dim = torch.export.Dim
    return {
        "batch": Dim("batch", min=1, max=1024),
        "frames": Dim("frames", min=1, max=4096),
        "height": Dim("height", min=1, max=1024),
        "width": Dim("width", min=1, max=1024),
    }


def _scaled(dim: Any, factor: int) -> Any:
    return dim if factor == 1 else factor * dim


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporters' progress prints (stdout) and draft_export's report (a multi-page
    graph dump at WARNING) out of the caller's output; our own log says what happened."""
    noisy = [logging.getLogger(name) for name in (
        "torch.export._draft_export", "torch.fx.experimental.symbolic_shapes", "torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)


def _export_and_stamp(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    graph: str,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    metadata: dict[str, Any],
    opset: int,
    draft: bool = False,
) -> str:
    """Export with the dynamo exporter, add `msc.*` metadata, check and write atomically.

    `draft=True` traces with `torch.export.draft_export` straight away (for graphs known
    to need it); otherwise `torch.export` is tried first and draft_export is the fallback.
    """
    onnx, _ = _require_onnx()
    module = module.eval()
    exporter = "torch.export"
    with _quiet_exporter():
        program = None
        if not draft:
            try:
                program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
            except Exception as err:  # noqa: BLE001 - any torch.export failure: fall back to draft_export
                logger.info("torch.export cannot trace %s (%s); using draft_export", graph, type(err).__name__)
        if program is None:
            program = torch.export.draft_export(module, args, dynamic_shapes=dynamic_shapes)
            exporter = "draft_export"
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
    proto = onnx_program.model_proto
    stamp = {GRAPH_KEY: graph, "msc.exporter": exporter, "msc.opset": str(opset), **metadata}
    for key, value in stamp.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return exporter


def _parity(path: Path, graph: str, module: nn.Module, args: tuple[torch.Tensor, ...], tolerance: float) -> float:
    """Max abs difference of every output of `path` in ONNX Runtime (CPU) vs `module(*args)`."""
    session, _ = open_session(path, graph, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    err = max(float(np.abs(o - e.cpu().numpy()).max()) if o.size else 0.0 for o, e in zip(outputs, expected))
    if not err <= tolerance:
        raise OnnxParityError(f"{path}: ONNX Runtime differs from PyTorch by {err:.3g} (> {tolerance:g}) on {graph}")
    return err


def export_vae_decoder(
    vae: CausalVAE3D,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    latent_size: tuple[int, int] = (4, 5),
) -> ExportReport:
    """Export one causal decoding chunk of `vae` (dynamic batch, latent frames, height, width)."""
    path = Path(path)
    vae = vae.eval()
    gen = torch.Generator().manual_seed(0)
    C = vae.config.latent_channels

    def example(batch: int, frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        z = torch.randn(batch, C, frames, *size, generator=gen)
        cache = [torch.randn(c.shape, generator=gen) for c in vae.init_decode_cache(z)]
        return (z, *cache)

    args = example(2, 3, latent_size)
    z, cache = args[0], args[1:]
    d = _dims()
    cache_spec, cache_shapes = [], []
    for c in cache:
        hs, ws = c.shape[3] // z.shape[3], c.shape[4] // z.shape[4]
        cache_spec.append({"channels": c.shape[1], "frames": c.shape[2], "height_scale": hs, "width_scale": ws})
        cache_shapes.append({0: d["batch"], 3: _scaled(d["height"], hs), 4: _scaled(d["width"], ws)})
    n = len(cache)
    inputs = ["latents"] + [f"cache_in_{i}" for i in range(n)]
    outputs = ["video"] + [f"cache_out_{i}" for i in range(n)]
    module = VAEDecodeStep(vae)
    metadata = {
        "msc.config": vae.config.to_json(),
        "msc.latent_spec": vae.latent_spec.to_json(),
        "msc.cache": cache_spec,
    }
    dynamic = ({0: d["batch"], 2: d["frames"], 3: d["height"], 4: d["width"]}, tuple(cache_shapes))
    exporter = _export_and_stamp(module, args, path, VAE_DECODER, inputs, outputs, dynamic, metadata, opset)
    probe = example(3, 5, (latent_size[0] + 2, latent_size[1] + 1))
    err = _parity(path, VAE_DECODER, module, probe, tolerance)
    return ExportReport(path, VAE_DECODER, exporter, opset, err, {"latents": tuple(probe[0].shape)})


def export_arvae_decoder(
    arvae: ARVAE, path: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = 1e-4
) -> ExportReport:
    """Export the AR-VAE decoder (dynamic batch, frames and cached past length)."""
    path = Path(path)
    arvae = arvae.eval()
    c = arvae.config
    gen = torch.Generator().manual_seed(0)
    head_dim = c.width // c.num_heads

    def example(batch: int, frames: int, past: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(batch, frames, c.num_latent_tokens, c.latent_dim, generator=gen)
        cache = [torch.randn(batch, c.num_heads, past * c.num_latent_tokens, head_dim, generator=gen)
                 for _ in range(2 * c.decoder_depth)]
        return (z, *cache)

    d = _dims()
    past = torch.export.Dim("past_tokens", min=0, max=1 << 20)
    n = 2 * c.decoder_depth
    inputs = ["latents"] + [f"cache_in_{i}" for i in range(n)]
    outputs = ["video"] + [f"cache_out_{i}" for i in range(n)]
    metadata = {
        "msc.config": c.to_json(),
        "msc.latent_spec": arvae.latent_spec.to_json(),
        "msc.cache": {"layers": c.decoder_depth, "heads": c.num_heads, "head_dim": head_dim,
                      "tokens_per_frame": c.num_latent_tokens},
    }
    dynamic = ({0: d["batch"], 1: d["frames"]}, tuple({0: d["batch"], 2: past} for _ in range(n)))
    module = ARVAEDecodeStep(arvae)
    exporter = _export_and_stamp(module, example(2, 3, 2), path, ARVAE_DECODER, inputs, outputs, dynamic, metadata, opset)
    probe = example(3, 4, 1)
    err = _parity(path, ARVAE_DECODER, module, probe, tolerance)
    return ExportReport(path, ARVAE_DECODER, exporter, opset, err, {"latents": tuple(probe[0].shape)})


def generic_step_sizes(window: int, chunk: int) -> tuple[int, int, int]:
    """Example (frames, rows, cols) in tokens for tracing the step: every axis needs padding
    and holds at least two groups, and no two axes are equal. draft_export assumes what
    the example shows about sizes it cannot reason about (e.g. "one spatial window"), so
    the example must be the general case."""
    rows, cols = 2 * window + 1, 2 * window + 3
    frames = 2 * chunk + 1
    while frames in (rows, cols):
        frames += chunk
    return frames, rows, cols


def export_cascade_step(
    model: CascadeModel,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export one cascade denoising step (dynamic batch, latent frames, height, width).

    Parity is checked at several sizes unlike the export example, including one frame,
    batch 1 and sizes that fit one grid group exactly.
    """
    path = Path(path)
    cfg = model.config
    p, window, chunk = cfg.dit.patch_size, cfg.dit.window, cfg.dit.chunk
    gen = torch.Generator().manual_seed(0)
    C = cfg.dit.latent_channels

    def example(batch: int, frames: int, rows: int, cols: int, t: int, t_next: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(batch, C, frames, rows * p, cols * p, generator=gen)
        base = torch.randn(batch, C, frames, rows * p, cols * p, generator=gen)
        return x, base, torch.full((batch,), t, dtype=torch.long), torch.full((batch,), t_next, dtype=torch.long)

    T = cfg.num_timesteps
    args = example(2, *generic_step_sizes(window, chunk), T // 2, T // 4)
    d = _dims()
    grid = {0: d["batch"], 2: d["frames"], 3: d["height"], 4: d["width"]}
    dynamic = (grid, grid, {0: d["batch"]}, {0: d["batch"]})
    module = CascadeDenoiseStep(model).eval()
    metadata = {"msc.config": cfg.to_json(), "msc.latent_spec": model.latent_spec.to_json()}
    # ddim_step's data-dependent timestep checks make torch.export fail: go to draft_export directly
    exporter = _export_and_stamp(
        module, args, path, CASCADE_STEP, ["x_t", "base_up", "t", "t_next"], ["x_next"], dynamic, metadata, opset,
        draft=True,
    )
    probes = [
        example(1, 1, window, window + 1, T - 1, -1),  # one frame, one window exactly, last step
        example(3, chunk, 1, 2 * window, T // 3, T // 5),  # one chunk exactly, one row
        example(2, 3 * chunk + 2, window + 2, 1, 1, -1),
    ]
    err = max(_parity(path, CASCADE_STEP, module, probe, tolerance) for probe in probes)
    return ExportReport(path, CASCADE_STEP, exporter, opset, err, {"x_t": tuple(probes[-1][0].shape)})


def export_cascade(model: CascadeModel, directory: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, ExportReport]:
    """Everything `OnnxCascadeDecoder` needs: `cascade_step.onnx` and `vae_decoder.onnx` in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        CASCADE_STEP: export_cascade_step(model, directory / CASCADE_STEP_FILE, opset),
        VAE_DECODER: export_vae_decoder(model.vae, directory / VAE_DECODER_FILE, opset),
    }


# -----------------------------------------------------------------------------
# loading and sessions


def read_graph_metadata(path: str | Path, expected: str) -> dict[str, str]:
    """The `msc.*` metadata of an ONNX file, after checking it is a readable `expected` graph."""
    onnx, _ = _require_onnx()
    path = Path(path)
    what = GRAPH_DESCRIPTIONS[expected]
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} not found; expected {what}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - protobuf / checker errors have many types
        raise OnnxModelError(
            f"{path} is not a valid ONNX model ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"expected {what}"
        ) from None
    metadata = {p.key: p.value for p in proto.metadata_props}
    found = metadata.get(GRAPH_KEY)
    if found is None:
        raise OnnxModelError(f"{path} has no '{GRAPH_KEY}' metadata, so it was not written by msc export; expected {what}")
    if found != expected:
        raise OnnxModelError(f"{path} holds a {found!r} graph, expected {expected!r}: {what}")
    missing = [key for key in REQUIRED_METADATA[expected] if key not in metadata]
    if missing:
        raise OnnxModelError(
            f"{path} lacks the metadata {', '.join(repr(k) for k in missing)} that its runner needs "
            f"(found {', '.join(sorted(metadata))}); re-export {what}"
        )
    return metadata


def parse_metadata(path: Path, metadata: dict[str, str], key: str, parse: Any) -> Any:
    """`parse(metadata[key])`, or an `OnnxModelError` naming the file and the key."""
    try:
        return parse(metadata[key])
    except (ValueError, TypeError, KeyError) as err:  # JSON and config errors are ValueErrors
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxModelError(f"{path}: metadata {key!r} cannot be read ({detail})") from None


def _int_fields(path: Path, key: str, entry: Any, fields: tuple[str, ...], minimum: int = 1) -> dict[str, int]:
    """`entry` as a dict of the integer `fields` (each >= minimum), or an `OnnxModelError`."""
    if not isinstance(entry, dict):
        raise OnnxModelError(f"{path}: metadata {key!r} must hold objects with {', '.join(fields)}, got {entry!r}")
    missing = [f for f in fields if f not in entry]
    bad = [f for f in fields if f in entry and (isinstance(entry[f], bool) or not isinstance(entry[f], int)
                                                 or entry[f] < minimum)]
    if missing or bad:
        problem = f"lacks {', '.join(missing)}" if missing else f"has invalid {', '.join(f'{f}={entry[f]!r}' for f in bad)}"
        raise OnnxModelError(f"{path}: metadata {key!r} {problem} (integers >= {minimum}: {', '.join(fields)})")
    return {f: entry[f] for f in fields}


def _runner_array(
    path: Path, name: str, x: Any, layout: str, shape: Sequence[int | None], allow_empty: bool = False
) -> np.ndarray:
    """A runner input as a C-contiguous float32 array, after the input contract of
    `msc_core.validation` (a floating, finite tensor or array of `shape`, no zero-sized axis);
    a `ValueError` naming `name` and the file otherwise."""
    try:
        if isinstance(x, torch.Tensor):
            check_tensor(name, x, allow_empty=True)  # floating, named as torch's dtype
            x = x.detach().float().cpu().numpy()  # numpy has no bfloat16
        elif not isinstance(x, np.ndarray):
            x = np.asarray(x)
        check_tensor(name, x, shape=shape, layout=layout, allow_empty=allow_empty)
        check_finite(name, x)
    except ValueError as err:
        raise ValueError(f"{err} (input of {path})") from None
    return np.ascontiguousarray(x, dtype=np.float32)


def _run(session: Any, path: Path, names: Sequence[str], feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`session.run` on checked inputs; an ONNX Runtime failure means the graph does not match
    its metadata, raised as an `OnnxModelError` naming the file and the input shapes."""
    try:
        return session.run(None, dict(zip(names, feeds)))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        shapes = ", ".join(f"{n} {tuple(f.shape)}" for n, f in zip(names, feeds))
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxModelError(f"ONNX Runtime cannot run {path} on {shapes} ({detail})") from None


def _check_input_count(path: Path, session: Any, expected: int, what: str) -> list[str]:
    names = [i.name for i in session.get_inputs()]
    if len(names) != expected:
        raise OnnxModelError(f"{path} has {len(names)} inputs but its metadata describes {expected} ({what})")
    return names


def resolve_providers(requested: Sequence[str] | None, what: str) -> list[str]:
    """Requested providers that can run here, in order; logs each one that cannot."""
    _, ort = _require_onnx()
    requested = list(requested or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    chosen = []
    for provider in requested:
        if provider not in available:
            logger.warning("%s: %s was requested but this onnxruntime build does not have it (available: %s)",
                           what, provider, ", ".join(available))
        elif provider in GPU_PROVIDERS and not torch.cuda.is_available():
            logger.warning("%s: %s was requested but no CUDA device is available", what, provider)
        else:
            chosen.append(provider)
    if not chosen:
        chosen = ["CPUExecutionProvider"]
    return chosen


def open_session(
    path: str | Path, expected: str, providers: Sequence[str] | None = None, threads: int | None = None
) -> tuple[Any, dict[str, str]]:
    """An `onnxruntime.InferenceSession` of an `expected` graph (CUDA -> CPU fallback logged)
    and the file's `msc.*` metadata."""
    _, ort = _require_onnx()
    path = Path(path)
    metadata = read_graph_metadata(path, expected)
    requested = list(providers or DEFAULT_PROVIDERS)
    chosen = resolve_providers(requested, path.name)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxModelError(f"ONNX Runtime cannot load {path} ({err}); expected {GRAPH_DESCRIPTIONS[expected]}") from None
    active = session.get_providers()
    wanted_gpu = [p for p in requested if p in GPU_PROVIDERS]
    if wanted_gpu and not any(p in active for p in wanted_gpu):
        logger.warning("%s: %s requested but unavailable; falling back to %s", path.name, " / ".join(wanted_gpu), active[0])
    logger.info("%s: running on %s", path.name, active[0])
    return session, metadata


# -----------------------------------------------------------------------------
# runners


class OnnxVAEDecoder:
    """The exported `CausalVAE3D` decoder in ONNX Runtime: chunked (causal cache) or whole decoding."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session, metadata = open_session(self.path, VAE_DECODER, providers, threads)
        self.latent_spec = parse_metadata(self.path, metadata, "msc.latent_spec", LatentSpec.from_json)
        spec = parse_metadata(self.path, metadata, "msc.cache", json.loads)
        if not isinstance(spec, list):
            raise OnnxModelError(f"{self.path}: metadata 'msc.cache' must be a list (one entry per cache tensor), got {spec!r}")
        self.cache_spec = [_int_fields(self.path, "msc.cache", entry, VAE_CACHE_FIELDS, minimum=0) for entry in spec]
        self.input_names = _check_input_count(
            self.path, self.session, 1 + len(self.cache_spec), "latents and one input per 'msc.cache' entry"
        )

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def _latents(self, latents: Any) -> np.ndarray:
        C = self.latent_spec.channels
        return _runner_array(self.path, "latents", latents, f"[B, {C}, T, h, w]", (None, C, None, None, None))

    def _cache(self, cache: Sequence[Any], latents: np.ndarray) -> list[np.ndarray]:
        """A cache from a previous call, checked against the metadata for these latents."""
        if not isinstance(cache, (list, tuple)) or len(cache) != len(self.cache_spec):
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {len(self.cache_spec)} arrays a previous call returned, got {got} "
                             f"(input of {self.path})")
        B, _, _, h, w = latents.shape
        checked = []
        for i, (state, c) in enumerate(zip(cache, self.cache_spec)):
            shape = (B, c["channels"], c["frames"], h * c["height_scale"], w * c["width_scale"])
            layout = f"{list(shape)} (for latents {list(latents.shape)})"
            checked.append(_runner_array(self.path, f"cache[{i}]", state, layout, shape, allow_empty=True))
        return checked

    def zero_cache(self, batch: int, height: int, width: int) -> list[np.ndarray]:
        """The cache of a clip start for latents of `height x width`."""
        return [
            np.zeros((batch, c["channels"], c["frames"], height * c["height_scale"], width * c["width_scale"]), np.float32)
            for c in self.cache_spec
        ]

    def decode_step(self, latents: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Raw chunk: `tc` frames per latent frame, and the next cache."""
        z = self._latents(latents)
        outputs = _run(self.session, self.path, self.input_names, [z, *self._cache(cache, z)])
        return outputs[0], outputs[1:]

    def decode_chunk(
        self, latents: np.ndarray, cache: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The next latent frames of a clip -> their video frames and the next cache; `cache=None`
        starts a clip (and drops the `tc - 1` repeated copies of frame 0), as
        `CausalVAE3D.decode_chunk`."""
        z = self._latents(latents)
        start = cache is None
        if start:
            cache = self.zero_cache(z.shape[0], z.shape[3], z.shape[4])
        video, cache = self.decode_step(z, cache)
        return (video[:, :, self.latent_spec.temporal_compression - 1:] if start else video), cache

    def decode(self, latents: torch.Tensor | np.ndarray, chunk_latent_frames: int | None = None) -> np.ndarray:
        """Latents `[B, C, T, h, w]` -> video `[B, 3, 1 + tc (T - 1), h s, w s]` (whole when no chunk size)."""
        z = self._latents(latents)
        B, _, T, h, w = z.shape
        chunk = check_positive_int("chunk_latent_frames", chunk_latent_frames) or T
        cache, pieces = self.zero_cache(B, h, w), []
        for start in range(0, T, chunk):
            video, cache = self.decode_step(np.ascontiguousarray(z[:, :, start:start + chunk]), cache)
            pieces.append(video)
        video = np.concatenate(pieces, axis=2)
        return video[:, :, self.latent_spec.temporal_compression - 1:]  # the clip start's repeated frame 0


class OnnxARVAEDecoder:
    """The exported AR-VAE decoder in ONNX Runtime, streaming frames with its key/value cache."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session, metadata = open_session(self.path, ARVAE_DECODER, providers, threads)
        self.latent_spec = parse_metadata(self.path, metadata, "msc.latent_spec", LatentSpec.from_json)
        if self.latent_spec.layout != "tokens":
            raise OnnxModelError(f"{self.path}: metadata 'msc.latent_spec' describes {self.latent_spec.layout} latents; "
                                 "the ARVAE decoder reads tokens")
        spec = parse_metadata(self.path, metadata, "msc.cache", json.loads)
        self.cache_spec = _int_fields(self.path, "msc.cache", spec, ARVAE_CACHE_FIELDS)
        self.input_names = _check_input_count(
            self.path, self.session, 1 + 2 * self.cache_spec["layers"], "latents and a key and a value per layer"
        )

    def _latents(self, latents: Any) -> np.ndarray:
        spec = self.latent_spec
        L, D = spec.tokens_per_frame, spec.channels
        return _runner_array(self.path, "latents", latents, f"[B, T, {L}, {D}]", (None, None, L, D))

    def decode_chunk(
        self, latents: np.ndarray, cache: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Next frames `[B, T, L, D]` of a clip -> video `[B, 3, T, H, W]` and the cache (None: clip start)."""
        c = self.cache_spec
        z = self._latents(latents)
        B, n = z.shape[0], 2 * c["layers"]
        if cache is None:
            cache = [np.zeros((B, c["heads"], 0, c["head_dim"]), np.float32)] * n
        elif not isinstance(cache, (list, tuple)) or len(cache) != n:
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {n} arrays a previous call returned, got {got} (input of {self.path})")
        else:
            shape = (B, c["heads"], None, c["head_dim"])
            layout = f"[B={B}, {c['heads']}, P*{c['tokens_per_frame']}, {c['head_dim']}] (P past frames)"
            checked: list[np.ndarray] = []
            for i, state in enumerate(cache):
                state = _runner_array(self.path, f"cache[{i}]", state, layout, shape, allow_empty=True)
                if state.shape[2] % c["tokens_per_frame"] or (checked and state.shape != checked[0].shape):
                    raise ValueError(
                        f"cache[{i}] must be {layout}, the same for every entry, got shape {state.shape} "
                        f"(input of {self.path})"
                    )
                checked.append(state)
            cache = checked
        outputs = _run(self.session, self.path, self.input_names, [z, *cache])
        return outputs[0], outputs[1:]

    def decode(self, latents: torch.Tensor | np.ndarray, chunk_frames: int | None = None) -> np.ndarray:
        z = self._latents(latents)
        chunk = check_positive_int("chunk_frames", chunk_frames) or z.shape[1]
        cache, pieces = None, []
        for start in range(0, z.shape[1], chunk):
            video, cache = self.decode_chunk(np.ascontiguousarray(z[:, start:start + chunk]), cache)
            pieces.append(video)
        return np.concatenate(pieces, axis=2)


class OnnxCascadeDecoder(CascadeDecodePipeline):
    """`CascadeDecoder.decode` in ONNX Runtime: the exported step and VAE decoder in the same loop.

    `directory` holds `cascade_step.onnx` and `vae_decoder.onnx` (`export_cascade`,
    `msc export cascade`). `verify` (a `CascadeModel` or its checkpoint directory) runs a
    parity probe against PyTorch at load and raises `OnnxParityError` beyond `tolerance`.
    """

    def __init__(
        self,
        directory: str | Path,
        settings: CascadeDecodeSettings | None = None,
        providers: Sequence[str] | None = None,
        verify: CascadeModel | str | Path | None = None,
        tolerance: float = 1e-3,
        threads: int | None = None,
    ) -> None:
        directory = Path(directory)
        step_path = directory / CASCADE_STEP_FILE
        self.step_session, metadata = open_session(step_path, CASCADE_STEP, providers, threads)
        config = parse_metadata(step_path, metadata, "msc.config", CascadeConfig.from_json)
        if config.conditioning != "latent":
            raise OnnxModelError(
                f"{step_path} is a cascade with conditioning={config.conditioning!r}, whose condition re-encodes "
                f"the upsampled base video with the VAE encoder, which is not exported: decode it with "
                f"CascadeDecoder (PyTorch), or export a cascade trained with conditioning='latent'"
            )
        self.vae_decoder = OnnxVAEDecoder(directory / VAE_DECODER_FILE, providers, threads)
        spec = parse_metadata(step_path, metadata, "msc.latent_spec", LatentSpec.from_json)
        if spec != self.vae_decoder.latent_spec:
            raise OnnxModelError(
                f"{step_path} works in latent space {spec.model_dump()} but {self.vae_decoder.path} decodes "
                f"{self.vae_decoder.latent_spec.model_dump()}: the two files come from different exports"
            )
        super().__init__(config, spec, settings)
        self.step_path = step_path
        self.step_inputs = _check_input_count(step_path, self.step_session, 4, "x_t, base_up, t, t_next")
        self.parity_max_abs_err: float | None = None
        if verify is not None:
            reference = verify if isinstance(verify, CascadeModel) else load_cascade(verify)
            self.parity_max_abs_err = self.verify_against(reference, tolerance)

    @property
    def providers(self) -> dict[str, str]:
        """Active provider of each graph."""
        return {CASCADE_STEP: self.step_session.get_providers()[0], VAE_DECODER: self.vae_decoder.provider}

    def denoise_step(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        feeds = [x_t.cpu().float().numpy(), base_up.cpu().float().numpy(),
                 t.cpu().numpy().astype(np.int64), t_next.cpu().numpy().astype(np.int64)]
        (x_next,) = _run(self.step_session, self.step_path, self.step_inputs, feeds)
        return torch.from_numpy(x_next).to(x_t.device)

    def decode_latent_tile(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.vae_decoder.decode(latents, self.settings.vae_chunk_frames))

    def verify_against(self, model: CascadeModel, tolerance: float = 1e-3) -> float:
        """Max abs error of one full decode of a random base latent, ONNX Runtime vs PyTorch."""
        if model.config.model_dump(exclude={"vae_path"}) != self.config.model_dump(exclude={"vae_path"}):
            raise OnnxModelError(f"{self.step_path} was exported from a different cascade config than the one to verify against")
        gen = torch.Generator().manual_seed(0)
        t = 2 if self.config.mode == "fps" else 1
        h = 2 * self.config.dit.patch_size
        base = torch.randn(1, self.latent_spec.channels, t, h, h, generator=gen)
        reference = CascadeDecoder(model, self.settings)
        with torch.no_grad():
            expected = reference.refine(base, seed=0)
            got = self.refine(base, seed=0)
            err = float((got - expected.cpu()).abs().max())
            video_err = float((self.decode_latents(expected.cpu()) - reference.decode_latents(expected).cpu()).abs().max())
        err = max(err, video_err)
        if not err <= tolerance:
            raise OnnxParityError(
                f"{self.step_path.parent}: ONNX Runtime decode differs from PyTorch by {err:.3g} (> {tolerance:g})"
            )
        return err
