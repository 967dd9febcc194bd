"""`msc` as this package knew it: `msc_ray_train.cli.main([...])` runs the `msc` dispatcher
(msc_core.cli), whose `train`, `sample` and `demo` subcommands live in `commands`."""

from __future__ import annotations

from typing import Sequence

from msc_core.cli import EXIT_FAILED, EXIT_USAGE
from msc_core.cli import main as _msc_main

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    return _msc_main(argv)
