"""ONNX export of the cascade step, and the ONNX Runtime cascade decoder (DESIGN.md, "Cascade decoder").

`export_cascade(model, directory)` writes what deploying a cascade needs, with the file
names of `msc_runtime.graphs`:

- `cascade_step.onnx` (`cascade_step`): one cascade denoising step, DiT forward + DDIM
  update (`cascade_sampling.cascade_ddim_step`): `x_t, base_up [batch, C, latent_frames,
  latent_height, latent_width], t, t_next [batch] int64 -> x_next`, in the scaled latent
  space, with the settings of the refinement loop in its metadata (`msc.latent_scale`,
  `msc.num_timesteps`, `msc.sample_steps`, `msc.mode`, `msc.conditioning`, `msc.patch_size`,
  `msc.window`, `msc.chunk`);
- `vae_decoder.onnx` and `vae_encoder.onnx`: the cascade's VAE
  (`msc_tokenizers.onnx_export`), so decoding and `upscale` (encode, refine, decode) run in
  ONNX Runtime.

The machinery (dynamo exporter, named dimensions, metadata, float32 check, external
data, parity) is `msc_core.onnx_export`. The step does not go through `torch.export`:
`msc_core.diffusion.ddim_step` validates its timesteps with data-dependent Python checks
(`bool((t_next > t).any())`), which `torch.export` refuses, and the grid attention's
padding arithmetic with symbolic frame counts produces guards it cannot prove. It is
traced with `torch.export.draft_export` by design (`draft=True`: no fallback warning,
allowed with `strict=True`; it records those checks as assumptions instead of failing)
and the ExportedProgram is converted with `dynamo=True`. `dynamo=False` (TorchScript
tracing) is not used: it would bake the frame count into the grid attention's partition.
Its DDIM coefficient table is float32 inside the graph. Parity is checked in ONNX
Runtime at sizes unlike the export example (one frame, batch 1, one grid group exactly,
the first and last DDIM steps).

This module also keeps the names it had before the split (`export_vae_decoder`,
`export_arvae_decoder`, `OnnxVAEDecoder`, `OnnxARVAEDecoder`, `OnnxModelError`,
`open_session`, ...), re-exported from msc_tokenizers, msc_core and msc_runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from msc_cascade.cascade_decoder import (
    CascadeDecodePipeline,
    CascadeDecoder,
    CascadeDecodeSettings,
    ProgressFn,
    load_cascade,
)
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_cascade.cascade_sampling import cascade_ddim_step
from msc_core.interfaces import LatentSpec
from msc_core.onnx_export import (
    DEFAULT_OPSET,
    ExportFallbackError,
    ExportReport,
    OnnxExportError,
    OnnxParityError,
    check_parity,
    export_graph,
    package_version,
    require_onnx,
)
from msc_core.validation import check_finite, check_positive_int, check_tensor
from msc_tokenizers.onnx_export import (
    GRID_LATENT_DIMS,
    ARVAEDecodeStep,
    VAEDecodeStep,
    VAEEncode,
    export_arvae_decoder,
    export_vae_decoder,
    export_vae_encoder,
)

try:
    from msc_runtime import graphs, sessions
    from msc_runtime.arvae import ARVAEDecoder
    from msc_runtime.graphs import OnnxModelError, validate_metadata
    from msc_runtime.vae import VAEDecoder, VAEEncoder
except ModuleNotFoundError as err:  # pragma: no cover - msc-runtime comes with the onnx extra
    raise ModuleNotFoundError(
        f"ONNX export and runtime need the 'onnx' extra: pip install 'msc-cascade[onnx]' ({err})"
    ) from None

logger = logging.getLogger(__name__)

VAE_DECODER, VAE_ENCODER = graphs.VAE_DECODER, graphs.VAE_ENCODER
ARVAE_DECODER, CASCADE_STEP = graphs.ARVAE_DECODER, graphs.CASCADE_STEP
GRAPH_KEY, GRAPH_KINDS, GRAPH_DESCRIPTIONS = graphs.GRAPH_KEY, graphs.GRAPH_KINDS, graphs.GRAPH_DESCRIPTIONS
CASCADE_STEP_FILE = graphs.GRAPH_FILES[CASCADE_STEP]
VAE_DECODER_FILE = graphs.GRAPH_FILES[VAE_DECODER]
VAE_ENCODER_FILE = graphs.GRAPH_FILES[VAE_ENCODER]

__all__ = [
    "ARVAEDecodeStep",
    "CascadeDenoiseStep",
    "DEFAULT_OPSET",
    "ExportFallbackError",
    "ExportReport",
    "OnnxExportError",
    "OnnxParityError",
    "VAEDecodeStep",
    "VAEEncode",
    "export_arvae_decoder",
    "export_cascade",
    "export_cascade_step",
    "export_vae_decoder",
    "export_vae_encoder",
    "generic_step_sizes",
    "require_onnx",
]


# -----------------------------------------------------------------------------
# the cascade step


class CascadeDenoiseStep(nn.Module):
    """One cascade DDIM step: `(x_t, base_up, t [B], t_next [B]) -> x_next` (scaled latent space).

    The coefficient table is float32 (the model's is float64), so the graph holds no float64."""

    def __init__(self, model: CascadeModel) -> None:
        super().__init__()
        self.dit = model.dit
        self.prediction, self.residual = model.config.prediction, model.config.residual
        self.register_buffer("alphas_cumprod", model.alphas_cumprod.to(torch.float32), persistent=False)

    def forward(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return cascade_ddim_step(self.dit, x_t, base_up, t, t_next, self.alphas_cumprod, self.prediction, self.residual)


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


def cascade_step_metadata(model: CascadeModel) -> dict[str, Any]:
    """The `msc.*` metadata of a cascade step graph: the config, the latent space and the
    settings of the refinement loop (so a runner needs no config parsing)."""
    cfg = model.config
    return {
        graphs.CONFIG_KEY: cfg.to_json(),
        graphs.LATENT_SPEC_KEY: model.latent_spec.to_json(),
        graphs.LATENT_SCALE_KEY: repr(float(cfg.latent_scale)),
        graphs.NUM_TIMESTEPS_KEY: str(cfg.num_timesteps),
        graphs.SAMPLE_STEPS_KEY: str(cfg.sample_steps),
        graphs.MODE_KEY: cfg.mode,
        graphs.CONDITIONING_KEY: cfg.conditioning,
        graphs.PATCH_SIZE_KEY: str(cfg.dit.patch_size),
        graphs.WINDOW_KEY: str(cfg.dit.window),
        graphs.CHUNK_KEY: str(cfg.dit.chunk),
    }


def export_cascade_step(
    model: CascadeModel,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    *,
    strict: bool = False,
    external_data_threshold: int | None = None,
) -> ExportReport:
    """Export one cascade denoising step (dynamic batch, latent frames, height, width).

    Parity is checked at several sizes unlike the export example, including one frame,
    batch 1 and sizes that fit one grid group exactly. `strict` does not change the
    tracer: the step is traced with draft_export by design (module docstring).
    """
    path = Path(path)
    cfg = model.config
    if cfg.dit.grid_partitions is not None:
        raise ValueError(
            f"cannot export a cascade with dit.grid_partitions={cfg.dit.grid_partitions} (the P^2 rule sizes its "
            "groups from the input, which the exported graph keeps dynamic); train or convert it with fixed "
            "dit.window / dit.chunk (grid_partitions=None)"
        )
    p, window, chunk = cfg.dit.patch_size, cfg.dit.window, cfg.dit.chunk
    gen = torch.Generator().manual_seed(0)
    C = cfg.dit.latent_channels

    def example(batch: int, frames: int, rows: int, cols: int, t: int, t_next: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(batch, C, frames, rows * p, cols * p, generator=gen)
        base = torch.randn(batch, C, frames, rows * p, cols * p, generator=gen)
        return x, base, torch.full((batch,), t, dtype=torch.long), torch.full((batch,), t_next, dtype=torch.long)

    T = cfg.num_timesteps
    args = example(2, *generic_step_sizes(window, chunk), T // 2, T // 4)
    Dim = torch.export.Dim
    batch = Dim("batch", min=1, max=1024)
    grid = {0: batch, 2: Dim("latent_frames", min=1, max=4096), 3: Dim("latent_height", min=1, max=1024),
            4: Dim("latent_width", min=1, max=1024)}
    module = CascadeDenoiseStep(model).eval()
    description = (
        f"One cascade refinement step (msc {CASCADE_STEP}, {cfg.mode} mode): DiT forward + DDIM update (eta 0) in "
        f"the scaled latent space (latents x msc.latent_scale). Inputs: x_t [batch, {C}, latent_frames, "
        f"latent_height, latent_width] (the noisy target latent), base_up (same shape: the condition, the base "
        f"latent x latent_scale upsampled to the target size), t and t_next [batch] int64 timesteps in "
        f"0..{T - 1} with t_next < t (-1 = clean). Output: x_next, same shape as x_t. Rule: start from standard "
        f"normal noise at t = {T - 1} and step along msc_core.diffusion.ddim_timestep_grid({T}, steps) "
        f"(msc.sample_steps by default) to -1; latent_height and latent_width are multiples of {p}; divide the "
        f"result by latent_scale."
    )
    exporter, data = export_graph(
        module, args, path, CASCADE_STEP,
        input_names=["x_t", "base_up", "t", "t_next"], output_names=["x_next"],
        dynamic_shapes=(grid, grid, {0: batch}, {0: batch}),
        dim_names={"x_t": GRID_LATENT_DIMS, "base_up": GRID_LATENT_DIMS, "t": {0: "batch"}, "t_next": {0: "batch"},
                   "x_next": GRID_LATENT_DIMS},
        metadata=cascade_step_metadata(model), description=description,
        producer_version=package_version("msc-cascade"), opset=opset,
        draft=True,  # ddim_step's data-dependent timestep checks: see the module docstring
        strict=strict, external_data_threshold=external_data_threshold,
    )
    probes = [
        example(1, 1, window, window + 1, T - 1, -1),  # one frame, one window exactly, last step
        example(3, chunk, 1, 2 * window, T // 3, T // 5),  # one chunk exactly, one row
        example(2, 3 * chunk + 2, window + 2, 1, 1, -1),
    ]
    err = check_parity(path, CASCADE_STEP, module, probes, tolerance)
    return ExportReport(path, CASCADE_STEP, exporter, opset, err, {"x_t": tuple(probes[-1][0].shape)},
                        None if data is None else str(data))


def export_cascade(
    model: CascadeModel,
    directory: str | Path,
    opset: int = DEFAULT_OPSET,
    *,
    strict: bool = False,
    external_data_threshold: int | None = None,
) -> dict[str, ExportReport]:
    """Everything `OnnxCascadeDecoder` (and msc_runtime's cascade runner) needs, in `directory`:
    `cascade_step.onnx`, `vae_decoder.onnx` and `vae_encoder.onnx` (for `upscale`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    options = {"strict": strict, "external_data_threshold": external_data_threshold}
    return {
        CASCADE_STEP: export_cascade_step(model, directory / CASCADE_STEP_FILE, opset, **options),
        VAE_DECODER: export_vae_decoder(model.vae, directory / VAE_DECODER_FILE, opset, **options),
        VAE_ENCODER: export_vae_encoder(model.vae, directory / VAE_ENCODER_FILE, opset, **options),
    }


# -----------------------------------------------------------------------------
# ONNX Runtime: msc_runtime's sessions and runners behind the names this module had
#
# Sessions, provider choice, metadata validation, the chunk loops and IOBinding are
# msc_runtime's (torch-free). The adapters below keep what the torch side promised before
# the split: inputs follow `msc_core.validation` (torch tensors of any float dtype,
# bfloat16 included, and its messages), decoded frames are NOT clamped by default (as
# `CausalVAE3D.decode`; msc_runtime's runners clamp by default), and `OnnxCascadeDecoder`
# runs `CascadeDecodePipeline`'s loop (the same as `CascadeDecoder`) with torch tensors.

DEFAULT_PROVIDERS: tuple[str, ...] = sessions.DEFAULT_PROVIDERS
GPU_PROVIDERS = sessions.GPU_PROVIDERS
REQUIRED_METADATA = graphs.LEGACY_METADATA  # what any file (format 1 included) must carry for its runner
VAE_CACHE_FIELDS, ARVAE_CACHE_FIELDS = graphs.VAE_CACHE_FIELDS, graphs.ARVAE_CACHE_FIELDS

__all__ += [
    "ARVAE_DECODER",
    "CASCADE_STEP",
    "CASCADE_STEP_FILE",
    "DEFAULT_PROVIDERS",
    "GRAPH_KEY",
    "GRAPH_KINDS",
    "OnnxARVAEDecoder",
    "OnnxCascadeDecoder",
    "OnnxModelError",
    "OnnxVAEDecoder",
    "OnnxVAEEncoder",
    "VAE_DECODER",
    "VAE_DECODER_FILE",
    "VAE_ENCODER",
    "VAE_ENCODER_FILE",
    "open_session",
    "read_graph_metadata",
    "resolve_providers",
]


def read_graph_metadata(path: str | Path, expected: str) -> dict[str, str]:
    """The `msc.*` metadata of an ONNX file, after checking it is a readable `expected` graph
    (`msc_runtime.graphs.validate_metadata`); read with `onnx`, without creating a session."""
    onnx, _ = require_onnx()
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
    return validate_metadata(path, expected, {p.key: p.value for p in proto.metadata_props}).metadata


def parse_metadata(path: Path, metadata: dict[str, str], key: str, parse: Any) -> Any:
    """`parse(metadata[key])`, or an `OnnxModelError` naming the file and the key."""
    try:
        return parse(metadata[key])
    except (ValueError, TypeError, KeyError) as err:  # JSON and config errors are ValueErrors
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxModelError(f"{path}: metadata {key!r} cannot be read ({detail})") from None


def resolve_providers(requested: Sequence[str] | None, what: str) -> list[str]:
    """Requested providers this onnxruntime build has, in order, CPU last as the fallback;
    logs each one it lacks. Read from `onnxruntime.get_available_providers()`, never from
    torch (onnxruntime-gpu beside a CPU build of torch uses the GPU); whether a provider
    actually runs shows once a session exists (`open_session` warns then)."""
    _, ort = require_onnx()
    requested = list(requested or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    chosen = []
    for provider in requested:
        if provider in available:
            chosen.append(provider)
        else:
            logger.warning("%s: %s was requested but this onnxruntime build does not have it (available: %s)",
                           what, provider, ", ".join(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def open_session(
    path: str | Path, expected: str, providers: Sequence[str] | None = None, threads: int | None = None
) -> tuple[Any, dict[str, str]]:
    """An `onnxruntime.InferenceSession` of an `expected` graph and the file's `msc.*` metadata
    (`msc_runtime.sessions.open_session`: providers, the one fallback warning, validation)."""
    require_onnx()
    graph = sessions.open_session(path, expected, providers, threads)
    return graph.session, graph.metadata


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


class OnnxVAEDecoder(VAEDecoder):
    """`msc_runtime.vae.VAEDecoder` with the torch side's input contract; frames not clamped
    unless `clamp=True` (as `CausalVAE3D.decode`)."""

    def check_latents(self, latents: Any, name: str = "latents") -> np.ndarray:
        C = self.latent_spec.channels
        return _runner_array(self.path, name, latents, f"[B, {C}, T, h, w]", (None, C, None, None, None))

    def check_cache(self, cache: Any, latents: np.ndarray) -> list[np.ndarray]:
        n = len(self.cache_spec)
        if not isinstance(cache, (list, tuple)) or len(cache) != n:
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {n} arrays a previous call returned, got {got} (input of {self.path})")
        B, _, _, h, w = latents.shape
        checked = []
        for i, (state, c) in enumerate(zip(cache, self.cache_spec)):
            shape = self._cache_shape(c, B, h, w)
            layout = f"{list(shape)} (for latents {list(latents.shape)})"
            checked.append(_runner_array(self.path, f"cache[{i}]", state, layout, shape, allow_empty=True))
        return checked

    def decode_chunk(
        self, latents: Any, cache: Sequence[Any] | None = None, clamp: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        return super().decode_chunk(latents, cache, clamp)

    def decode(self, latents: Any, chunk_latent_frames: int | None = None, clamp: bool = False) -> np.ndarray:
        """Latents `[B, C, T, h, w]` -> video `[B, 3, 1 + tc (T - 1), h s, w s]` (whole when no chunk size)."""
        check_positive_int("chunk_latent_frames", chunk_latent_frames)
        return super().decode(latents, chunk_latent_frames, clamp)


class OnnxARVAEDecoder(ARVAEDecoder):
    """`msc_runtime.arvae.ARVAEDecoder` with the torch side's input contract; frames not
    clamped unless `clamp=True` (as `ARVAE.decode`)."""

    def check_latents(self, latents: Any, name: str = "latents") -> np.ndarray:
        spec = self.latent_spec
        L, D = spec.tokens_per_frame, spec.channels
        return _runner_array(self.path, name, latents, f"[B, T, {L}, {D}]", (None, None, L, D))

    def check_cache(self, cache: Any, latents: np.ndarray) -> list[np.ndarray]:
        c = self.cache_spec
        n, B = 2 * c["layers"], latents.shape[0]
        if not isinstance(cache, (list, tuple)) or len(cache) != n:
            got = f"{len(cache)} arrays" if isinstance(cache, (list, tuple)) else type(cache).__name__
            raise ValueError(f"cache must be the {n} arrays a previous call returned, got {got} (input of {self.path})")
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
        return checked

    def decode_chunk(
        self, latents: Any, cache: Sequence[Any] | None = None, clamp: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        return super().decode_chunk(latents, cache, clamp)

    def decode(self, latents: Any, chunk_frames: int | None = None, clamp: bool = False) -> np.ndarray:
        check_positive_int("chunk_frames", chunk_frames)
        return super().decode(latents, chunk_frames, clamp)


OnnxVAEEncoder = VAEEncoder  # video (numpy or torch) in [-1, 1] -> latents, msc_runtime's input checks


class OnnxCascadeDecoder(CascadeDecodePipeline):
    """`CascadeDecoder.decode` / `upscale` in ONNX Runtime: the exported step, VAE decoder and
    VAE encoder in the same loop (`CascadeDecodePipeline`), torch tensors in and out.

    `directory` holds `cascade_step.onnx`, `vae_decoder.onnx` and, for `encode` / `upscale`,
    `vae_encoder.onnx` (`export_cascade`, `msc export cascade`). `verify` (a `CascadeModel`
    or its checkpoint directory) runs a parity probe against PyTorch at load and raises
    `OnnxParityError` beyond `tolerance`. `msc_runtime.CascadeRefiner` is the same decoder
    without torch (numpy loop, IOBinding on CUDA).
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
        require_onnx()
        self.directory = Path(directory)
        self.providers_requested, self.threads = providers, threads
        self.step_graph = sessions.open_session(self.directory / CASCADE_STEP_FILE, CASCADE_STEP, providers, threads)
        step_path, metadata = self.step_graph.path, self.step_graph.metadata
        config = parse_metadata(step_path, metadata, graphs.CONFIG_KEY, CascadeConfig.from_json)
        if config.conditioning != "latent":
            raise OnnxModelError(
                f"{step_path} is a cascade with conditioning={config.conditioning!r}, whose condition re-encodes "
                f"the upsampled base video (bicubic pixel resampling) with the VAE, which the ONNX Runtime "
                f"runners do not do: decode it with CascadeDecoder (PyTorch), or export a cascade trained with "
                f"conditioning='latent'"
            )
        self.vae_decoder = OnnxVAEDecoder(self.directory / VAE_DECODER_FILE, providers, threads)
        self._check_same_latents(self.vae_decoder.path, self.vae_decoder.latent_spec)
        spec = parse_metadata(step_path, metadata, graphs.LATENT_SPEC_KEY, LatentSpec.from_json)
        super().__init__(config, spec, settings)
        self.step_path = step_path
        self.step_session = self.step_graph.session
        self.step_inputs = self.step_graph.input_names
        self._encoder: VAEEncoder | None = None
        self.parity_max_abs_err: float | None = None
        if verify is not None:
            reference = verify if isinstance(verify, CascadeModel) else load_cascade(verify)
            self.parity_max_abs_err = self.verify_against(reference, tolerance)

    def _check_same_latents(self, path: Path, spec: Any) -> None:
        if spec != self.step_graph.info.latent_spec:
            raise OnnxModelError(
                f"{self.step_graph.path} works in latent space {self.step_graph.info.latent_spec} but {path} has "
                f"{spec}: the two files come from different exports"
            )

    @property
    def providers(self) -> dict[str, str]:
        """Active provider of each graph loaded so far."""
        out = {CASCADE_STEP: self.step_graph.provider, VAE_DECODER: self.vae_decoder.provider}
        if self._encoder is not None:
            out[VAE_ENCODER] = self._encoder.provider
        return out

    @property
    def encoder(self) -> VAEEncoder:
        """The VAE encoder (`vae_encoder.onnx`), loaded on first use."""
        if self._encoder is None:
            path = self.directory / VAE_ENCODER_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: encoding a video (upscale) needs the VAE encoder graph; re-export the cascade "
                    f"(msc export cascade --model MODEL --out {self.directory})"
                )
            encoder = OnnxVAEEncoder(path, self.providers_requested, self.threads)
            self._check_same_latents(path, encoder.latent_spec)
            self._encoder = encoder
        return self._encoder

    def denoise_step(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        feeds = [x_t.cpu().float().numpy(), base_up.cpu().float().numpy(),
                 t.cpu().numpy().astype(np.int64), t_next.cpu().numpy().astype(np.int64)]
        (x_next,) = self.step_graph.run(feeds)
        return torch.from_numpy(x_next).to(x_t.device)

    def decode_latent_tile(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.vae_decoder.decode(latents, self.settings.vae_chunk_frames))

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """VAE latents of a video `[B, 3, 1 + tc k, H, W]` in [-1, 1] (the base for `decode`), in ONNX Runtime."""
        check_tensor("video", video, pixels=True)  # before the cast: a uint8 video is refused, not read as 0..255
        return torch.from_numpy(self.encoder.encode(video))

    @torch.no_grad()
    def upscale(self, video: torch.Tensor, seed: int = 0, progress: ProgressFn | None = None) -> torch.Tensor:
        """A video -> the 4x larger (sr) or 4x smoother (fps) video, all three graphs in ONNX Runtime."""
        return self.decode(self.encode(video), seed, progress)

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
