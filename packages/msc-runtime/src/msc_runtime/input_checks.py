"""The input contract of the runners, checked before ONNX Runtime sees an array.

As `msc_core.validation` for the PyTorch models: a runner input is floating (float16 /
float64 are cast to float32; int, uint8 and bool are refused with a hint), finite, of the
graph's layout, and has no zero-sized axis; pixel videos lie in [-1, 1]. Anything
`np.asarray` takes is accepted, CPU torch tensors included (read through their own
methods: torch is never imported here). A violation is a `ValueError` naming the argument
and the graph file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

PIXEL_TOLERANCE = 1e-3  # as msc_core.validation: rounding through float16 / resampling, not 0..255


def describe_shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def _from_torch(name: str, x: Any) -> np.ndarray:
    """A torch tensor through its own methods (bfloat16 has no numpy dtype; grads are dropped)."""
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")
    return x.detach().cpu().float().numpy()


def as_input_array(
    path: Path,
    name: str,
    x: Any,
    shape: Sequence[int | None],
    layout: str | None = None,
    allow_empty: bool = False,
    pixel_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """`x` as a C-contiguous float32 array after the input contract, or a `ValueError` naming
    `name` and `path`. `shape`: the expected sizes (None: any); `layout` describes it."""
    try:
        return _checked(name, x, shape, layout, allow_empty, pixel_range)
    except ValueError as err:
        raise ValueError(f"{err} (input of {path})") from None


def _checked(name: str, x: Any, shape: Sequence[int | None], layout: str | None, allow_empty: bool,
             pixel_range: tuple[float, float] | None) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        x = _from_torch(name, x)
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be an array (numpy, or anything np.asarray reads), got "
                             f"{type(x).__name__} ({err})") from None
    expected = layout or describe_shape(shape)
    if x.ndim != len(shape):
        raise ValueError(f"{name} must be {expected} ({len(shape)} dimensions), got shape {x.shape} ({x.ndim} dimensions)")
    for axis, (want, got) in enumerate(zip(shape, x.shape)):
        if want is not None and want != got:
            raise ValueError(f"{name} must be {expected}: axis {axis} must be {want}, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        hint = "convert it with .astype(np.float32)"
        if pixel_range is not None and x.dtype == np.uint8:
            hint += "; videos are floats in [-1, 1]: map 0..255 pixels with video / 127.5 - 1"
        raise ValueError(f"{name} must be a floating-point array (float32, float16 or float64), got {x.dtype}; {hint}")
    if not allow_empty and 0 in x.shape:
        raise ValueError(f"{name} has shape {x.shape} with a zero-sized axis {x.shape.index(0)}; "
                         "every dimension must be at least 1")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); inputs must be finite")
    if pixel_range is not None and x.size:
        low, high = pixel_range
        lo, hi = float(x.min()), float(x.max())
        if lo < low - PIXEL_TOLERANCE or hi > high + PIXEL_TOLERANCE:
            raise ValueError(f"{name} values span [{lo:.4g}, {hi:.4g}]; videos are floats in [{low:g}, {high:g}] "
                             "(map 0..255 pixels with video / 127.5 - 1)")
    return x


def check_positive_int(name: str, value: int | None) -> int | None:
    """None, or a whole number >= 1 (a ValueError naming `name` otherwise)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be a whole number >= 1 (or None), got {value!r}")
    return None if value is None else int(value)
