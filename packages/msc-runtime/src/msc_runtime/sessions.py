"""ONNX Runtime sessions of msc graphs: providers, the fallback warning, metadata validation.

Providers come from `onnxruntime.get_available_providers()` (what this build of ONNX
Runtime has), never from torch. The default order is CUDA, then CPU. The providers a
session ACTUALLY runs on are read back after it is created: onnxruntime-gpu on a machine
without a usable GPU lists `CUDAExecutionProvider` as available, but the session falls back
to the CPU. When a provider that was asked for (or a GPU provider the build has) is not
active, exactly one WARNING says which one, what the build has and what runs instead; the
active provider is logged at INFO.

ONNX Runtime's own console messages about a GPU provider that cannot start (two native
lines per process) are silenced while such a session is created, so the warning above is
the only one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from msc_runtime.graphs import (
    GRAPH_DESCRIPTIONS,
    GRAPH_KINDS,
    GraphInfo,
    OnnxModelError,
    validate_metadata,
    validate_signature,
)

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEFAULT_PROVIDERS: tuple[str, ...] = (CUDA, CPU)
GPU_PROVIDERS = frozenset({CUDA, "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
                           "DmlExecutionProvider"})
# short names accepted by `--providers` and `providers=`
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "rocm": "ROCMExecutionProvider", "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider"}
ORT_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's default logger level (warning)
ORT_QUIET_LOG_SEVERITY = 4  # fatal only

ProviderEntry = Union[str, tuple[str, Mapping[str, Any]]]


def require_onnxruntime() -> Any:
    """The `onnxruntime` module, or a ModuleNotFoundError naming the two extras to pick from."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ModuleNotFoundError(
            "msc-runtime needs ONNX Runtime: install ONE of pip install 'msc-runtime[cpu]' (onnxruntime) or "
            f"'msc-runtime[gpu]' (onnxruntime-gpu, CUDA); the two cannot share an environment ({err})"
        ) from None
    return onnxruntime


def provider_name(entry: ProviderEntry) -> str:
    return entry if isinstance(entry, str) else entry[0]


def normalize_providers(providers: str | Sequence[ProviderEntry] | None) -> list[ProviderEntry] | None:
    """`providers` as ONNX Runtime names (`"cuda,cpu"` and short names accepted); None stays None."""
    if providers is None:
        return None
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    if not isinstance(providers, (list, tuple)) or not providers:
        raise ValueError(f"providers must be a non-empty list of ONNX Runtime provider names, got {providers!r}")
    ort = require_onnxruntime()
    known = set(ort.get_all_providers())
    out: list[ProviderEntry] = []
    for entry in providers:
        options = None
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], Mapping):
            entry, options = entry
        if not isinstance(entry, str):
            raise ValueError(f"a provider is a name such as {CUDA!r} or 'cuda', got {entry!r}")
        name = PROVIDER_ALIASES.get(entry.lower(), entry)
        if name not in known:
            raise ValueError(
                f"unknown ONNX Runtime provider {entry!r}; use one of {', '.join(sorted(known))} "
                f"(or {', '.join(sorted(PROVIDER_ALIASES))})"
            )
        out.append(name if options is None else (name, dict(options)))
    return out


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 (or None: ONNX Runtime's default), got {threads!r}")
    return threads


@dataclass
class GraphSession:
    """An `onnxruntime.InferenceSession` of one msc graph, with its validated metadata."""

    path: Path
    info: GraphInfo
    session: Any  # onnxruntime.InferenceSession
    requested: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def metadata(self) -> dict[str, str]:
        return self.info.metadata

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on, in priority order."""
        return self.session.get_providers()

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def device(self) -> str:
        """"cuda" when the session runs on CUDA (IOBinding keeps tensors there), else "cpu"."""
        return "cuda" if self.provider == CUDA else "cpu"

    @property
    def device_id(self) -> int:
        options = self.session.get_provider_options().get(self.provider, {})
        return int(options.get("device_id", 0))

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """`session.run` on checked inputs (in input order when a sequence); an ONNX Runtime
        failure means the graph does not match its metadata: an `OnnxModelError` naming the
        file and the input shapes."""
        if not isinstance(feeds, Mapping):
            feeds = dict(zip(self.input_names, feeds))
        try:
            return self.session.run(None, dict(feeds))
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise self.run_error(feeds, err) from None

    def run_error(self, feeds: Mapping[str, Any], err: BaseException) -> OnnxModelError:
        shapes = ", ".join(f"{n} {shape_of(f)}" for n, f in feeds.items())
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        return OnnxModelError(f"ONNX Runtime cannot run {self.path} on {shapes} ({detail})")


def shape_of(x: Any) -> tuple[int, ...]:
    """Shape of a numpy array or an `onnxruntime.OrtValue` (whose `shape` is a method)."""
    shape = getattr(x, "shape", ())
    return tuple(shape() if callable(shape) else shape)


def _create(ort: Any, path: Path, options: Any, chosen: list[ProviderEntry], what: str) -> Any:
    quiet = any(provider_name(p) in GPU_PROVIDERS for p in chosen)
    if quiet:  # our one warning replaces ONNX Runtime's native lines about a GPU provider that cannot start
        ort.set_default_logger_severity(ORT_QUIET_LOG_SEVERITY)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxModelError(f"{path} is not a valid ONNX model ONNX Runtime can load ({detail}); expected {what}") from None
    finally:
        if quiet:
            ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def open_session(
    path: str | Path,
    kind: str | Sequence[str] | None = None,
    providers: str | Sequence[ProviderEntry] | None = None,
    threads: int | None = None,
) -> GraphSession:
    """Open `path`, an msc graph of `kind` (a kind, several, or None: any msc graph).

    `providers`: ONNX Runtime providers in priority order (None: CUDA when this build has it,
    then CPU). `threads`: intra-op CPU threads (None: ONNX Runtime's default). Raises
    `FileNotFoundError` / `OnnxModelError` naming the file and the graph expected.
    """
    kinds = GRAPH_KINDS if kind is None else ((kind,) if isinstance(kind, str) else tuple(kind))
    what = " or ".join(GRAPH_DESCRIPTIONS.get(k, repr(k)) for k in kinds)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected an .onnx file holding {what}")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} not found; expected {what}")
    explicit = providers is not None
    requested = normalize_providers(providers) or list(DEFAULT_PROVIDERS)
    check_threads(threads)
    ort = require_onnxruntime()
    available = ort.get_available_providers()
    chosen = [p for p in requested if provider_name(p) in available]
    if CPU not in [provider_name(p) for p in chosen]:
        chosen.append(CPU)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = _create(ort, path, options, chosen, what)
    try:
        metadata = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as err:  # noqa: BLE001
        raise OnnxModelError(f"{path}: its metadata cannot be read ({err}); expected {what}") from None
    info = validate_metadata(path, kinds, metadata)
    validate_signature(info, session.get_inputs(), session.get_outputs())
    active = session.get_providers()
    names = [provider_name(p) for p in requested]
    # a provider asked for by name, or a GPU provider the build has, that does not run: one warning
    inactive = [n for n in names if n not in active and (explicit or n in available)]
    if inactive:
        missing_from_build = [n for n in inactive if n not in available]
        reason = (
            f"this onnxruntime build lacks {', '.join(missing_from_build)} (install msc-runtime[gpu] instead of "
            "msc-runtime[cpu] for CUDA)" if missing_from_build
            else "no usable GPU, or its CUDA/cuDNN libraries are missing "
                 "(https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements)"
        )
        logger.warning("%s: %s requested but not active: %s; available providers: %s; running on %s",
                       path.name, " / ".join(inactive), reason, ", ".join(available), active[0])
    logger.info("%s: running on %s", path.name, active[0])
    return GraphSession(path=path, info=info, session=session, requested=tuple(names))
