"""Package attributes imported on first use (PEP 562), so that importing a package (as the
`msc` dispatcher does for `--help`) does not import torch, Ray or the models."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable


def distribution_version(distribution: str) -> str:
    """The installed version of `distribution` ("0.0.0+unknown" in an uninstalled source tree)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled source tree
        return "0.0.0+unknown"


def lazy_exports(package: str, names: dict[str, str], namespace: dict[str, Any]) -> tuple[
    Callable[[str], Any], Callable[[], list[str]]
]:
    """`__getattr__` and `__dir__` for `package`: `names` maps an attribute to its module."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    return __getattr__, __dir__
