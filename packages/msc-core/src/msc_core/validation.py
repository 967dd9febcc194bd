"""Input checks for the public entry points of every msc model (one source of truth).

A bad input must fail at the entry point with a `ValueError` that names the argument,
what it got and what would be valid, never as a traceback from deep inside torch or
ONNX Runtime (`expected m1 and m2 to have the same dtype`) and never silently (a video
in 0..255, NaN, a timestep of 10**6). The models call these helpers where user data
comes in (`forward`, `encode`, `decode`, `training_losses`, `generate`, the ONNX
runners), not in their inner layers.

Input contract:

- **dtype policy.** Entry points take floating tensors. A floating tensor of another
  float dtype than the module's parameters is cast to the parameters' dtype at the entry
  point (`to_model_dtype`), so float64 or float16 input into a float32 model works and
  the output has the model's dtype; under `torch.autocast` the input is left as it is
  (autocast picks the compute dtype). Non-floating input (int, uint8, bool) is refused
  with a hint (`.float()`; uint8 pixels: videos are floats in [-1, 1]), never read as
  numbers silently. Timesteps are the exception: integer tensors (`check_timesteps`).
- **shapes.** Every dimension of a tensor input is at least 1 (zero-sized inputs are
  refused naming the axis); layouts and sizes are each model's own checks.
- **values.** No NaN or inf (`check_finite`); pixel videos lie in [-1, 1] up to
  `PIXEL_TOLERANCE` (`check_video`); timesteps lie in `0..T-1` (or `-1..T-1` where the
  API reads -1 as "clean").

Cost and switches. Checks that read values (finite, range, timestep range) cost one
reduction and one host sync each, so they run once per public call:

- `finite_checks(False)` turns the NaN/inf checks off, for the process when called, or
  for a block as a context manager (`with finite_checks(False): ...`), e.g. in a
  training loop's hot path. `finite_checks_enabled()` reads the setting.
- `trusted_inputs()` is the scope in which an entry point calls another one with data it
  has already checked or computed itself (a transformer calling its attention layers,
  `training_losses` calling `forward`): value checks are skipped inside, dtype and shape
  checks still run.
- Value checks are also skipped while torch traces (`torch.export`, ONNX export,
  `torch.compile`, `torch.jit.trace`, CUDA graph capture) and for meta tensors.

The helpers accept torch tensors and, for the ONNX runners, numpy arrays.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn

Array = Union[torch.Tensor, np.ndarray]

PIXEL_RANGE: tuple[float, float] = (-1.0, 1.0)
PIXEL_TOLERANCE = 1e-3  # rounding of a [-1, 1] video through float16 / resampling, not 0..255
FLOAT_DTYPES = "float32, bfloat16, float16 or float64"

_finite_checks = True
_trusted: ContextVar[bool] = ContextVar("msc_validation_trusted", default=False)


# -----------------------------------------------------------------------------
# switches


class finite_checks:  # noqa: N801 - used like torch.set_grad_enabled: a call or a `with` block
    """Turn the NaN/inf checks of the model entry points on or off.

    `finite_checks(False)` switches them off for the process (until `finite_checks(True)`);
    `with finite_checks(False): ...` switches them off for the block and restores the
    previous setting after it. On by default; a training loop may turn them off in its
    hot path (each check is one `isfinite(x).all()` and one host sync per call).
    """

    def __init__(self, enabled: bool) -> None:
        global _finite_checks
        self.previous = _finite_checks
        _finite_checks = bool(enabled)

    def __enter__(self) -> "finite_checks":
        return self

    def __exit__(self, *exc: object) -> None:
        global _finite_checks
        _finite_checks = self.previous


def finite_checks_enabled() -> bool:
    """Whether `check_finite` runs (see `finite_checks`)."""
    return _finite_checks


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Scope for calls whose inputs the caller has checked or computed itself.

    Inside it, entry points skip their value checks (finite, range, timestep range),
    so a model that validated its input does not pay them again in every layer; dtype
    and shape checks still run.
    """
    if _tracing():  # torch.compile cannot trace a ContextVar, and skips value checks anyway
        yield
        return
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def _tracing() -> bool:
    """torch is tracing a graph: reading values would fail or bake them into the graph."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if torch.compiler.is_exporting():
        return True
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def value_checks_active(x: Any = None) -> bool:
    """Whether checks that read the values of `x` should run now (see the module docstring)."""
    if _trusted.get() or _tracing():
        return False
    return not (isinstance(x, torch.Tensor) and x.is_meta)


# -----------------------------------------------------------------------------
# dtype and shape


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _is_floating(x: Array) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return np.issubdtype(x.dtype, np.floating)


def _dtype_name(x: Array) -> str:
    return str(x.dtype) if isinstance(x, torch.Tensor) else f"numpy {x.dtype}"


def describe_shape(shape: Sequence[int | None]) -> str:
    """`(None, 4, None)` -> `[*, 4, *]`."""
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(
    name: str,
    x: Any,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
    allow_empty: bool = False,
    pixels: bool = False,
    layout: str | None = None,
) -> None:
    """ValueError naming `name` unless `x` is a tensor (or numpy array) of the expected kind.

    `ndim` / `shape` (None entries: any size) give the layout, described as `layout`
    (e.g. `"[B, 3, T, H, W]"`) in the message when given. `floating`: the rule is "a
    floating tensor" (float32 / bfloat16 / float16 / float64; another float dtype than
    the model's is cast by `to_model_dtype`); int, uint8 and bool are refused with a
    `.float()` hint, and with `pixels` a uint8 video also gets the [-1, 1] convention.
    Zero-sized dimensions are refused unless `allow_empty`.
    """
    if not _is_array(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dims = tuple(x.shape)
    expected = layout or (describe_shape(shape) if shape is not None else None)
    if shape is not None and ndim is None:
        ndim = len(shape)
    if ndim is not None and len(dims) != ndim:
        what = expected or f"{ndim}-D"
        raise ValueError(f"{name} must be {what} ({ndim} dimensions), got shape {dims} ({len(dims)} dimensions)")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, dims)):
            if want is not None and want != got:
                raise ValueError(f"{name} must be {expected}: axis {axis} must be {want}, got shape {dims}")
    if floating and not _is_floating(x):
        hint = "convert it with .float()" if isinstance(x, torch.Tensor) else "convert it with .astype(np.float32)"
        if pixels and str(x.dtype).endswith("uint8"):
            hint += "; videos are floats in [-1, 1]: map 0..255 pixels with video.float() / 127.5 - 1"
        raise ValueError(f"{name} must be a floating-point tensor ({FLOAT_DTYPES}), got {_dtype_name(x)}; {hint}")
    if not allow_empty and not _tracing() and 0 in dims:  # symbolic sizes: the exporter's ranges say
        axis = dims.index(0)
        raise ValueError(
            f"{name} has shape {dims} with a zero-sized axis {axis}; every dimension must be at least 1"
        )


def model_dtype(module: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """dtype of the module's first floating parameter (its compute dtype), else `default`."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return default


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (meta)
        return False


def to_model_dtype(name: str, x: torch.Tensor, dtype: torch.dtype, *, pixels: bool = False) -> torch.Tensor:
    """`x` in `dtype` (the module's parameter dtype): the dtype policy of the entry points.

    A floating tensor of another float dtype is cast (float64 into a float32 model works);
    non-floating input is refused (`check_tensor`); under autocast `x` is left as it is.
    """
    check_tensor(name, x, floating=True, allow_empty=True, pixels=pixels)
    if x.dtype == dtype or _autocast_on(x):
        return x
    return x.to(dtype)


# -----------------------------------------------------------------------------
# values


def check_finite(name: str, x: Array) -> None:
    """ValueError `name contains NaN/inf (N of M values ...)` unless every value is finite.

    One `isfinite(x).all()` (one host sync); off with `finite_checks(False)`, skipped in
    `trusted_inputs()` and while tracing.
    """
    if not _finite_checks or not value_checks_active(x):
        return
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.inexact):
            return
        finite = np.isfinite(x)
        if finite.all():
            return
        nan = int(np.isnan(x).sum())
        bad = int(finite.size - finite.sum())
    else:
        if not (x.is_floating_point() or x.is_complex()):
            return
        if bool(torch.isfinite(x).all()):
            return
        nan = int(torch.isnan(x).sum())
        bad = int((~torch.isfinite(x)).sum())
    raise ValueError(
        f"{name} contains NaN/inf ({bad} of {_numel(x)} values: "
        f"{nan} NaN, {bad - nan} inf); every value must be finite"
    )


def _numel(x: Array) -> int:
    return int(x.size) if isinstance(x, np.ndarray) else x.numel()


def _min_max(x: Array) -> tuple[float, float]:
    if isinstance(x, np.ndarray):
        return float(x.min()), float(x.max())
    low, high = torch.aminmax(x.detach())
    both = torch.stack([low.float(), high.float()]).tolist()  # one host sync
    return both[0], both[1]


def check_range(
    name: str, x: Array, low: float, high: float, tolerance: float = 0.0, *, hint: str | None = None
) -> None:
    """ValueError naming the range found unless every value of `x` is in `[low - tol, high + tol]`.

    NaN is left to `check_finite` (so `finite_checks(False)` really switches it off).
    Skipped in `trusted_inputs()`, while tracing and for empty tensors.
    """
    if not value_checks_active(x) or _numel(x) == 0:
        return
    found_low, found_high = _min_max(x)
    if found_low < low - tolerance or found_high > high + tolerance:
        allowed = f"[{low:g}, {high:g}]" + (f" (tolerance {tolerance:g})" if tolerance else "")
        message = f"{name} values must lie in {allowed}, found {found_low:g}..{found_high:g}"
        raise ValueError(message + (f"; {hint}" if hint else ""))


VIDEO_HINT = "videos are floats in [-1, 1]: map 0..255 pixels with video / 127.5 - 1"


def check_video(name: str, video: Array) -> None:
    """A pixel video: a floating tensor, finite, in [-1, 1] up to `PIXEL_TOLERANCE`.

    Layout (ndim, channels, frame rules) is each model's own check.
    """
    check_tensor(name, video, pixels=True)
    check_finite(name, video)
    check_range(name, video, *PIXEL_RANGE, PIXEL_TOLERANCE, hint=VIDEO_HINT)


def check_values(name: str, x: Array, *, pixels: bool = False) -> None:
    """A floating tensor without zero-sized axes, finite: latents, conditions, noise, a
    prefix (their layout is each model's own check)."""
    check_tensor(name, x, pixels=pixels)
    check_finite(name, x)


def check_timesteps(
    name: str,
    t: Any,
    num_timesteps: int,
    *,
    allow_clean: bool = False,
    integer: bool = True,
) -> None:
    """ValueError naming the range found unless `t` holds valid diffusion timesteps.

    `integer=True`: an integer tensor in `0..num_timesteps-1`, or `-1..num_timesteps-1`
    with `allow_clean` (APIs that read -1 as a clean frame). `integer=False` also takes
    float noise levels (continuous timesteps) in `[0, num_timesteps)`. bool is refused.
    The range check is a value check (skipped in `trusted_inputs()` and while tracing).
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of timesteps, got {type(t).__name__}")
    low = -1 if allow_clean else 0
    clean = " (-1 = clean)" if allow_clean else ""
    if t.dtype == torch.bool or t.is_complex() or (integer and t.is_floating_point()):
        kind = "an integer tensor" if integer else "an integer or float tensor"
        raise ValueError(
            f"{name} must be {kind} of timesteps in {low}..{num_timesteps - 1}{clean}, got {t.dtype}"
            + ("; use .long() for whole timesteps" if t.is_floating_point() else "")
        )
    if not value_checks_active(t) or t.numel() == 0:
        return
    found_low, found_high = _min_max(t)
    if t.is_floating_point():
        if not (low <= found_low and found_high < num_timesteps):  # also refuses NaN
            raise ValueError(
                f"{name} must be timesteps in [{low}, {num_timesteps}){clean}, found {found_low:g}..{found_high:g}"
            )
    elif found_low < low or found_high >= num_timesteps:
        raise ValueError(
            f"{name} must be integers in {low}..{num_timesteps - 1}{clean}, found {t.dtype} "
            f"{int(found_low)}..{int(found_high)}"
        )


def check_positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    """`value` as an int >= 1 (None passes when `allow_none`); 0, negatives, bools and floats
    are refused naming `name` (so 0 is never read as "the default")."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        default = " or None for the default" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= 1{default}, got {value!r}")
    return int(value)
