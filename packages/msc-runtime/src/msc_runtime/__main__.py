"""`python -m msc_runtime` = the `msc-runtime` command."""

from msc_runtime.cli import console_main

console_main()
