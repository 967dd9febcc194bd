"""The graphs msc exports and msc_runtime runs: kinds, file names, signatures, metadata keys.

One source of truth for both sides (the exporters in msc_core / msc_tokenizers / msc_cascade
import these constants; the runners validate against them). Pure Python: no numpy, no
ONNX Runtime, no torch.

| kind            | default file         | inputs                                              | outputs                         |
|-----------------|----------------------|-----------------------------------------------------|---------------------------------|
| `vae3d_decoder` | `vae_decoder.onnx`   | `latents [B, C, T, h, w]`, `cache_in_0..n-1`        | `video [B, 3, N, H, W]`, `cache_out_*` |
| `vae3d_encoder` | `vae_encoder.onnx`   | `video [B, 3, 1 + tc k, H, W]`                      | `latents [B, C, T, h, w]` (posterior mean) |
| `arvae_decoder` | `arvae_decoder.onnx` | `latents [B, T, L, D]`, `cache_in_0..2 depth - 1`   | `video [B, 3, T, H, W]`, `cache_out_*` |
| `cascade_step`  | `cascade_step.onnx`  | `x_t, base_up [B, C, T, H, W]`, `t, t_next [B]` int64 | `x_next`                      |

Metadata (`metadata_props`, string values, JSON where structured): every graph carries
`msc.graph` (its kind), `msc.format` (`"2"`), `msc.exporter`, `msc.opset`, `msc.config`,
`msc.latent_spec`; each kind adds the keys of `KIND_METADATA`. Files written before
`msc.format` existed (format 1) carry `msc.graph`, `msc.config`, `msc.latent_spec` and, for
the decoders, `msc.cache`; the runners read them too (the cascade settings then come from
`msc.config`).

`validate_metadata` turns a file's metadata into a `GraphInfo` or raises `OnnxModelError`
naming the file and what was expected; `validate_signature` checks the session's inputs
and outputs against the kind's signature and the metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

# --------------------------------------------------------------------------- kinds and files

VAE_DECODER = "vae3d_decoder"
VAE_ENCODER = "vae3d_encoder"
ARVAE_DECODER = "arvae_decoder"
CASCADE_STEP = "cascade_step"
GRAPH_KINDS: tuple[str, ...] = (VAE_DECODER, VAE_ENCODER, ARVAE_DECODER, CASCADE_STEP)

GRAPH_FILES: dict[str, str] = {
    VAE_DECODER: "vae_decoder.onnx",
    VAE_ENCODER: "vae_encoder.onnx",
    ARVAE_DECODER: "arvae_decoder.onnx",
    CASCADE_STEP: "cascade_step.onnx",
}
# a pipeline folder's tokenizer decoder (msc_core.pipeline.ONNX_DECODER_FILE): any decoder kind
PIPELINE_DECODER_FILE = "decoder.onnx"

GRAPH_DESCRIPTIONS: dict[str, str] = {
    VAE_DECODER: "the CausalVAE3D decoder chunk graph (msc export vae / cascade)",
    VAE_ENCODER: "the CausalVAE3D encoder graph (msc export vae-encoder / cascade)",
    ARVAE_DECODER: "the ARVAE decoder graph (msc export arvae)",
    CASCADE_STEP: "the cascade denoising step graph (msc export cascade)",
}

# --------------------------------------------------------------------------- signatures

# dim_param names of the dynamic axes (never torch's `s17`)
DIM_NAMES: tuple[str, ...] = (
    "batch", "latent_frames", "latent_height", "latent_width", "frames", "height", "width", "past_tokens",
    "cache_tokens",  # an AR-VAE cache_out with a context limit: min(past_tokens + frames L, context_frames L)
)


@dataclass(frozen=True)
class TensorSignature:
    """One graph input or output: name, element type and its axes (a dim name or a metadata-given size)."""

    name: str
    dtype: str  # ONNX Runtime's NodeArg.type, e.g. "tensor(float)"
    axes: tuple[str, ...]

    @property
    def rank(self) -> int:
        return len(self.axes)


FLOAT, INT64 = "tensor(float)", "tensor(int64)"
GRID_LATENT_AXES = ("batch", "channels", "latent_frames", "latent_height", "latent_width")
VIDEO_AXES = ("batch", "rgb", "frames", "height", "width")

# the fixed inputs/outputs of each kind; the decoders add `cache_in_i` / `cache_out_i` (`cache_names`)
SIGNATURES: dict[str, tuple[tuple[TensorSignature, ...], tuple[TensorSignature, ...]]] = {
    VAE_DECODER: ((TensorSignature("latents", FLOAT, GRID_LATENT_AXES),), (TensorSignature("video", FLOAT, VIDEO_AXES),)),
    VAE_ENCODER: ((TensorSignature("video", FLOAT, VIDEO_AXES),), (TensorSignature("latents", FLOAT, GRID_LATENT_AXES),)),
    ARVAE_DECODER: (
        (TensorSignature("latents", FLOAT, ("batch", "frames", "tokens", "channels")),),
        (TensorSignature("video", FLOAT, VIDEO_AXES),),
    ),
    CASCADE_STEP: (
        (
            TensorSignature("x_t", FLOAT, GRID_LATENT_AXES),
            TensorSignature("base_up", FLOAT, GRID_LATENT_AXES),
            TensorSignature("t", INT64, ("batch",)),
            TensorSignature("t_next", INT64, ("batch",)),
        ),
        (TensorSignature("x_next", FLOAT, GRID_LATENT_AXES),),
    ),
}


def cache_names(count: int) -> tuple[list[str], list[str]]:
    """Input and output names of a decoder's `count` cache tensors."""
    return [f"cache_in_{i}" for i in range(count)], [f"cache_out_{i}" for i in range(count)]


# --------------------------------------------------------------------------- metadata keys

FORMAT = "2"
GRAPH_KEY = "msc.graph"
FORMAT_KEY = "msc.format"
EXPORTER_KEY = "msc.exporter"
OPSET_KEY = "msc.opset"
CONFIG_KEY = "msc.config"
LATENT_SPEC_KEY = "msc.latent_spec"
CACHE_KEY = "msc.cache"
OUTPUT_RANGE_KEY = "msc.output_range"
INPUT_RANGE_KEY = "msc.input_range"
CHUNK_RULE_KEY = "msc.chunk_rule"
FRAMES_RULE_KEY = "msc.frames_rule"
LATENT_NORMALIZATION_KEY = "msc.latent_normalization"
LATENT_SCALE_KEY = "msc.latent_scale"
NUM_TIMESTEPS_KEY = "msc.num_timesteps"
SAMPLE_STEPS_KEY = "msc.sample_steps"
MODE_KEY = "msc.mode"
CONDITIONING_KEY = "msc.conditioning"
PATCH_SIZE_KEY = "msc.patch_size"
WINDOW_KEY = "msc.window"
CHUNK_KEY = "msc.chunk"

EXPORTERS: tuple[str, ...] = ("torch.export", "draft_export")
COMMON_METADATA: tuple[str, ...] = (GRAPH_KEY, FORMAT_KEY, EXPORTER_KEY, OPSET_KEY, CONFIG_KEY, LATENT_SPEC_KEY)
# keys each kind carries in format 2 besides COMMON_METADATA (LATENT_NORMALIZATION_KEY is optional)
KIND_METADATA: dict[str, tuple[str, ...]] = {
    VAE_DECODER: (CACHE_KEY, OUTPUT_RANGE_KEY, CHUNK_RULE_KEY),
    VAE_ENCODER: (INPUT_RANGE_KEY, FRAMES_RULE_KEY),
    ARVAE_DECODER: (CACHE_KEY, OUTPUT_RANGE_KEY),
    CASCADE_STEP: (LATENT_SCALE_KEY, NUM_TIMESTEPS_KEY, SAMPLE_STEPS_KEY, MODE_KEY, CONDITIONING_KEY, PATCH_SIZE_KEY,
                   WINDOW_KEY, CHUNK_KEY),
}
# what a format-1 file (no msc.format) must carry for its runner
LEGACY_METADATA: dict[str, tuple[str, ...]] = {
    VAE_DECODER: (LATENT_SPEC_KEY, CACHE_KEY),
    VAE_ENCODER: (LATENT_SPEC_KEY,),
    ARVAE_DECODER: (LATENT_SPEC_KEY, CACHE_KEY),
    CASCADE_STEP: (CONFIG_KEY, LATENT_SPEC_KEY),
}
VAE_CACHE_FIELDS = ("channels", "frames", "height_scale", "width_scale")
ARVAE_CACHE_FIELDS = ("layers", "heads", "head_dim", "tokens_per_frame")
PIXEL_RANGE = (-1.0, 1.0)


def required_metadata(kind: str) -> tuple[str, ...]:
    """Every key a format-2 graph of `kind` carries."""
    return COMMON_METADATA + KIND_METADATA[kind]


class OnnxModelError(ValueError):
    """An ONNX file is missing, corrupt, foreign or holds another graph than expected."""


# --------------------------------------------------------------------------- parsed metadata


@dataclass(frozen=True)
class LatentSpec:
    """The latent space of a graph (`msc_core.interfaces.LatentSpec`, read from `msc.latent_spec`)."""

    layout: str  # "grid": [B, C, T, h, w]; "tokens": [B, T, L, D]
    channels: int
    tokens_per_frame: int | None = None
    token_grid: tuple[int, int] | None = None
    temporal_compression: int = 1
    spatial_compression: int = 1
    causal_first_frame: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> "LatentSpec":
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        layout = data.get("layout")
        if layout not in ("grid", "tokens"):
            raise ValueError(f"layout must be 'grid' or 'tokens', got {layout!r}")
        channels = _int(data.get("channels"), "channels")
        tc = _int(data.get("temporal_compression", 1), "temporal_compression")
        sc = _int(data.get("spatial_compression", 1), "spatial_compression")
        tokens = data.get("tokens_per_frame")
        grid = data.get("token_grid")
        if layout == "tokens":
            tokens = _int(tokens, "tokens_per_frame")
        elif tokens is not None or grid is not None:
            raise ValueError("tokens_per_frame and token_grid only apply to layout='tokens'")
        if grid is not None:
            if not (isinstance(grid, (list, tuple)) and len(grid) == 2):
                raise ValueError(f"token_grid must be [rows, cols], got {grid!r}")
            grid = (_int(grid[0], "token_grid"), _int(grid[1], "token_grid"))
        causal = data.get("causal_first_frame", False)
        if not isinstance(causal, bool):
            raise ValueError(f"causal_first_frame must be true or false, got {causal!r}")
        return cls(layout, channels, tokens, grid, tc, sc, causal)

    def num_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames."""
        tc = self.temporal_compression
        return 1 + tc * (latent_frames - 1) if self.causal_first_frame else tc * latent_frames


def _int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class CascadeStepInfo:
    """What the refinement loop needs from a `cascade_step` graph."""

    mode: str  # "sr" (factor x rows and cols) or "fps" (factor x frame rate)
    factor: int
    latent_scale: float
    num_timesteps: int
    sample_steps: int
    conditioning: str
    patch_size: int
    window: int | None
    chunk: int | None


@dataclass(frozen=True)
class GraphInfo:
    """The validated metadata of one graph file."""

    path: Path
    kind: str
    format: str  # "1" (no msc.format) or "2"
    metadata: dict[str, str]
    latent_spec: LatentSpec
    config: dict[str, Any] | None = None
    vae_cache: tuple[dict[str, int], ...] = ()  # vae3d_decoder: one entry per cache tensor
    arvae_cache: dict[str, int] | None = None  # arvae_decoder
    cascade: CascadeStepInfo | None = None
    latent_normalization: dict[str, tuple[float, ...]] | None = None
    output_range: tuple[float, float] = PIXEL_RANGE
    input_range: tuple[float, float] = PIXEL_RANGE
    drop_first_frames: int = 0  # frames of a clip start's first chunk that repeat frame 0
    exporter: str | None = None
    opset: int | None = None

    @property
    def description(self) -> str:
        return GRAPH_DESCRIPTIONS[self.kind]

    @property
    def cache_count(self) -> int:
        if self.kind == VAE_DECODER:
            return len(self.vae_cache)
        if self.kind == ARVAE_DECODER and self.arvae_cache is not None:
            return 2 * self.arvae_cache["layers"]
        return 0

    def input_names(self) -> list[str]:
        names = [s.name for s in SIGNATURES[self.kind][0]]
        return names + cache_names(self.cache_count)[0]

    def output_names(self) -> list[str]:
        names = [s.name for s in SIGNATURES[self.kind][1]]
        return names + cache_names(self.cache_count)[1]


def _fail(path: Path, message: str) -> OnnxModelError:
    return OnnxModelError(f"{path}: {message}")


def _parse_json(path: Path, metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (ValueError, TypeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _fail(path, f"metadata {key!r} is not valid JSON ({detail})") from None


def _int_fields(path: Path, key: str, entry: Any, fields: Sequence[str], minimum: int = 1) -> dict[str, int]:
    if not isinstance(entry, dict):
        raise _fail(path, f"metadata {key!r} must hold objects with {', '.join(fields)}, got {entry!r}")
    missing = [f for f in fields if f not in entry]
    bad = [f for f in fields if f in entry and (isinstance(entry[f], bool) or not isinstance(entry[f], int)
                                                 or entry[f] < minimum)]
    if missing or bad:
        problem = f"lacks {', '.join(missing)}" if missing else f"has invalid {', '.join(f'{f}={entry[f]!r}' for f in bad)}"
        raise _fail(path, f"metadata {key!r} {problem} (integers >= {minimum}: {', '.join(fields)})")
    return {f: entry[f] for f in fields}


def _range(path: Path, metadata: Mapping[str, str], key: str) -> tuple[float, float]:
    if key not in metadata:
        return PIXEL_RANGE
    value = _parse_json(path, metadata, key)
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
            or not value[0] < value[1]):
        raise _fail(path, f"metadata {key!r} must be [low, high] with low < high, got {metadata[key]!r}")
    return float(value[0]), float(value[1])


def _normalization(path: Path, metadata: Mapping[str, str], channels: int) -> dict[str, tuple[float, ...]] | None:
    if LATENT_NORMALIZATION_KEY not in metadata:
        return None
    value = _parse_json(path, metadata, LATENT_NORMALIZATION_KEY)
    ok = isinstance(value, dict) and all(
        isinstance(value.get(k), list) and len(value[k]) == channels
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value[k])
        for k in ("shift", "scale")
    )
    if not ok or not all(v > 0 for v in value["scale"]):
        raise _fail(path, f"metadata {LATENT_NORMALIZATION_KEY!r} must be {{\"shift\": [...], \"scale\": [...]}} with "
                          f"{channels} finite values each (scale > 0), got {metadata[LATENT_NORMALIZATION_KEY]!r}")
    return {"shift": tuple(float(v) for v in value["shift"]), "scale": tuple(float(v) for v in value["scale"])}


def _cascade_info(path: Path, metadata: Mapping[str, str], config: dict[str, Any]) -> CascadeStepInfo:
    """The cascade settings: the explicit `msc.*` keys (format 2), else the model config (format 1)."""
    dit = config.get("dit") if isinstance(config.get("dit"), dict) else {}

    def value(key: str, from_config: Any, parse: Any) -> Any:
        raw = metadata.get(key)
        try:
            return parse(raw if raw is not None else from_config)
        except (ValueError, TypeError):
            source = (f"metadata {key!r} = {raw!r}" if raw is not None
                      else f"the {CONFIG_KEY!r} value for {key.removeprefix('msc.')!r} = {from_config!r}")
            raise _fail(path, f"{source} cannot be read as {getattr(parse, '__name__', 'a value')}") from None

    def positive_int(x: Any) -> int:
        number = int(x)
        if isinstance(x, float) or number < 1 or str(number) != str(x).strip():
            raise ValueError(x)
        return number

    def positive_float(x: Any) -> float:
        number = float(x)
        if not (math.isfinite(number) and number > 0):
            raise ValueError(x)
        return number

    def text(x: Any) -> str:
        if not isinstance(x, str) or not x:
            raise ValueError(x)
        return x

    mode = value(MODE_KEY, config.get("mode", "sr"), text)
    if mode not in ("sr", "fps"):
        raise _fail(path, f"cascade mode {mode!r} is neither 'sr' nor 'fps'")
    info = CascadeStepInfo(
        mode=mode,
        factor=value("factor", config.get("factor", 4), positive_int),  # only in msc.config
        latent_scale=value(LATENT_SCALE_KEY, config.get("latent_scale", 1.0), positive_float),
        num_timesteps=value(NUM_TIMESTEPS_KEY, config.get("num_timesteps", 1000), positive_int),
        sample_steps=value(SAMPLE_STEPS_KEY, config.get("sample_steps", 8), positive_int),
        conditioning=value(CONDITIONING_KEY, config.get("conditioning", "latent"), text),
        patch_size=value(PATCH_SIZE_KEY, dit.get("patch_size", 1), positive_int),
        window=value(WINDOW_KEY, dit.get("window"), positive_int) if WINDOW_KEY in metadata or "window" in dit else None,
        chunk=value(CHUNK_KEY, dit.get("chunk"), positive_int) if CHUNK_KEY in metadata or "chunk" in dit else None,
    )
    if info.sample_steps > info.num_timesteps:
        raise _fail(path, f"sample_steps={info.sample_steps} exceeds num_timesteps={info.num_timesteps}")
    return info


def validate_metadata(path: str | Path, expected: str | Sequence[str], metadata: Mapping[str, str]) -> GraphInfo:
    """`metadata` (a session's custom_metadata_map) of a graph of the `expected` kind(s), parsed.

    Raises `OnnxModelError` naming the file and what was expected when the file is no msc
    graph, holds another kind, comes from an unknown format, or lacks or garbles a key.
    """
    path = Path(path)
    kinds = (expected,) if isinstance(expected, str) else tuple(expected)
    unknown = [k for k in kinds if k not in GRAPH_KINDS]
    if unknown:
        raise ValueError(f"unknown graph kind(s) {unknown}; valid: {', '.join(GRAPH_KINDS)}")
    what = " or ".join(GRAPH_DESCRIPTIONS[k] for k in kinds)
    metadata = dict(metadata)
    found = metadata.get(GRAPH_KEY)
    if found is None:
        raise OnnxModelError(f"{path} has no '{GRAPH_KEY}' metadata, so it was not written by msc export; expected {what}")
    if found not in kinds:
        raise OnnxModelError(f"{path} holds a {found!r} graph, expected {' or '.join(repr(k) for k in kinds)}: {what}")
    kind = found
    fmt = metadata.get(FORMAT_KEY, "1")
    if fmt not in ("1", FORMAT):
        raise OnnxModelError(
            f"{path} is an msc graph of format {fmt!r}; this msc-runtime reads formats '1' and '{FORMAT}' "
            f"(upgrade msc-runtime or re-export {what})"
        )
    required = required_metadata(kind) if fmt == FORMAT else LEGACY_METADATA[kind]
    missing = [key for key in required if key not in metadata]
    if missing:
        raise OnnxModelError(
            f"{path} lacks the metadata {', '.join(repr(k) for k in missing)} that its runner needs "
            f"(found {', '.join(sorted(metadata))}); re-export {what}"
        )
    raw_spec = _parse_json(path, metadata, LATENT_SPEC_KEY)
    try:
        spec = LatentSpec.from_dict(raw_spec)
    except ValueError as err:
        raise _fail(path, f"metadata {LATENT_SPEC_KEY!r} cannot be read ({err})") from None
    config = _parse_json(path, metadata, CONFIG_KEY) if CONFIG_KEY in metadata else None
    if config is not None and not isinstance(config, dict):
        raise _fail(path, f"metadata {CONFIG_KEY!r} must be a JSON object, got {type(config).__name__}")
    exporter = metadata.get(EXPORTER_KEY)
    if fmt == FORMAT and exporter not in EXPORTERS:
        raise _fail(path, f"metadata {EXPORTER_KEY!r} must be one of {EXPORTERS}, got {exporter!r}")
    opset = None
    if OPSET_KEY in metadata:
        try:
            opset = int(metadata[OPSET_KEY])
        except ValueError:
            raise _fail(path, f"metadata {OPSET_KEY!r} must be an integer, got {metadata[OPSET_KEY]!r}") from None
    fields: dict[str, Any] = {}
    expected_layout = "tokens" if kind == ARVAE_DECODER else "grid"
    if spec.layout != expected_layout:
        raise _fail(path, f"metadata {LATENT_SPEC_KEY!r} describes {spec.layout} latents; {what} reads {expected_layout} latents")
    if kind == VAE_DECODER:
        entries = _parse_json(path, metadata, CACHE_KEY)
        if not isinstance(entries, list):
            raise _fail(path, f"metadata {CACHE_KEY!r} must be a list (one entry per cache tensor), got {entries!r}")
        fields["vae_cache"] = tuple(_int_fields(path, CACHE_KEY, e, VAE_CACHE_FIELDS, minimum=0) for e in entries)
        fields["output_range"] = _range(path, metadata, OUTPUT_RANGE_KEY)
        drop = spec.temporal_compression - 1 if spec.causal_first_frame else 0
        if CHUNK_RULE_KEY in metadata:
            rule = _parse_json(path, metadata, CHUNK_RULE_KEY)
            if not isinstance(rule, dict) or "drop_first_frames" not in rule:
                raise _fail(path, f"metadata {CHUNK_RULE_KEY!r} must be {{\"drop_first_frames\": n, ...}}, got {rule!r}")
            drop = _int_fields(path, CHUNK_RULE_KEY, rule, ("drop_first_frames",), minimum=0)["drop_first_frames"]
        fields["drop_first_frames"] = drop
    elif kind == ARVAE_DECODER:
        fields["arvae_cache"] = _int_fields(path, CACHE_KEY, _parse_json(path, metadata, CACHE_KEY), ARVAE_CACHE_FIELDS)
        fields["output_range"] = _range(path, metadata, OUTPUT_RANGE_KEY)
        if fields["arvae_cache"]["tokens_per_frame"] != spec.tokens_per_frame:
            raise _fail(path, f"metadata {CACHE_KEY!r} has tokens_per_frame={fields['arvae_cache']['tokens_per_frame']} "
                              f"but {LATENT_SPEC_KEY!r} has {spec.tokens_per_frame}")
    elif kind == VAE_ENCODER:
        fields["input_range"] = _range(path, metadata, INPUT_RANGE_KEY)
        if FRAMES_RULE_KEY in metadata:
            rule = _parse_json(path, metadata, FRAMES_RULE_KEY)
            tc = _int_fields(path, FRAMES_RULE_KEY, rule, ("temporal_compression",))["temporal_compression"]
            if tc != spec.temporal_compression:
                raise _fail(path, f"metadata {FRAMES_RULE_KEY!r} has temporal_compression={tc} but "
                                  f"{LATENT_SPEC_KEY!r} has {spec.temporal_compression}")
    elif kind == CASCADE_STEP:
        fields["cascade"] = _cascade_info(path, metadata, config or {})
    if kind in (VAE_DECODER, VAE_ENCODER, ARVAE_DECODER):
        fields["latent_normalization"] = _normalization(path, metadata, spec.channels)
    return GraphInfo(path=path, kind=kind, format=fmt, metadata=metadata, latent_spec=spec, config=config,
                     exporter=exporter, opset=opset, **fields)


# --------------------------------------------------------------------------- signature checks


def _fixed_sizes(info: GraphInfo, signature: TensorSignature) -> dict[int, int]:
    """Axes of `signature` whose size the metadata fixes (channels, RGB, tokens)."""
    spec = info.latent_spec
    sizes = {"channels": spec.channels, "rgb": 3}
    if spec.tokens_per_frame is not None:
        sizes["tokens"] = spec.tokens_per_frame
    return {axis: sizes[name] for axis, name in enumerate(signature.axes) if name in sizes}


def validate_signature(info: GraphInfo, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """Check a session's inputs/outputs (ONNX Runtime NodeArgs: `.name`, `.type`, `.shape`)
    against the kind's signature and the metadata; `OnnxModelError` naming the file otherwise."""
    path, kind = info.path, info.kind
    for role, args, names, fixed in (
        ("inputs", inputs, info.input_names(), SIGNATURES[kind][0]),
        ("outputs", outputs, info.output_names(), SIGNATURES[kind][1]),
    ):
        got = [a.name for a in args]
        if len(got) != len(names):
            detail = f"; its metadata {CACHE_KEY!r} describes {info.cache_count} cache tensors" if info.cache_count else ""
            raise OnnxModelError(
                f"{path} has {len(got)} {role} ({', '.join(got)}) but {info.description} has {len(names)} "
                f"({', '.join(names)}){detail}"
            )
        if got != names:
            raise OnnxModelError(f"{path} has {role} {got}, expected {names} ({info.description})")
        for arg, signature in zip(args, fixed):
            shape = list(arg.shape) if arg.shape is not None else None
            if arg.type != signature.dtype:
                raise OnnxModelError(f"{path}: {role[:-1]} {arg.name!r} is {arg.type}, expected {signature.dtype}")
            if shape is None:
                continue
            if len(shape) != signature.rank:
                raise OnnxModelError(
                    f"{path}: {role[:-1]} {arg.name!r} has {len(shape)} axes {shape}, expected "
                    f"[{', '.join(signature.axes)}] ({info.description})"
                )
            for axis, size in _fixed_sizes(info, signature).items():
                if isinstance(shape[axis], int) and shape[axis] != size:
                    raise OnnxModelError(
                        f"{path}: {role[:-1]} {arg.name!r} has shape {shape}, but its metadata "
                        f"{LATENT_SPEC_KEY!r} gives {signature.axes[axis]}={size} at axis {axis}"
                    )
