"""The `msc-runtime` console script: `msc-runtime decode|upscale ...` (see `commands`).

Exit codes as msc's: 0 success; 2 a user error (bad arguments, a missing file or extra, a
foreign or mismatched graph, a bad input), always one `msc-runtime: error: ...` line; 130
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

from msc_runtime import __version__
from msc_runtime.commands import RUNTIME, example_epilog

PROG = "msc-runtime"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
    ModuleNotFoundError,
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse reporting a usage mistake as one `PROG: error: ...` line (exit status 2), without
    expanding abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _versions() -> str:
    try:
        import onnxruntime
    except ImportError:
        return f"{PROG} {__version__}; onnxruntime not installed (pip install 'msc-runtime[cpu]' or '[gpu]')"
    return f"{PROG} {__version__}; onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"


def build_parser(prog: str = PROG) -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog=prog, description=RUNTIME.description,
        epilog=example_epilog(f"{prog} decode latents.npy clip.mp4 --model exported/vae_decoder.onnx",
                              f"{prog} upscale clip.mp4 clip-4x.mp4 --model exported/cascade-sr --steps 8"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_versions())
    RUNTIME.configure(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run `msc-runtime ARGS...`; returns the exit status."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        status = args.run(args)
    except USER_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


def console_main() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
