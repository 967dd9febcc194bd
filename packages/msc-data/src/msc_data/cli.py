"""`msc-data`: the older name of `msc data` (msc_data.commands); `python -m msc_data.cli` too."""

from __future__ import annotations

import sys

from msc_core.cli import alias
from msc_data.commands import parse_size

__all__ = ["main", "parse_size"]

main = alias("data", prog="msc-data")

if __name__ == "__main__":
    sys.exit(main())
