"""`msc-export`: the older name of `msc export` (msc_cascade.commands)."""

from __future__ import annotations

import sys

from msc_core.cli import alias

__all__ = ["main"]

main = alias("export", prog="msc-export")

if __name__ == "__main__":
    sys.exit(main())
