"""`python -m msc_core ...` is the `msc` command (msc_core.cli)."""

from msc_core.cli import console_main

console_main()
