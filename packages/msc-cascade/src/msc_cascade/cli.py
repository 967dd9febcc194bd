"""`msc-cascade`: the older name of `msc cascade` (msc_cascade.commands)."""

from __future__ import annotations

import sys

from msc_cascade.commands import conform_frames
from msc_core.cli import alias

__all__ = ["conform_frames", "main"]

main = alias("cascade", prog="msc-cascade")

if __name__ == "__main__":
    sys.exit(main())
