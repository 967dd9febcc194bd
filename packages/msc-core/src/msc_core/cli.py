"""The `msc` command: one dispatcher whose subcommands come from the installed packages.

Each package registers its subcommands under the `msc.commands` entry-point group, each
entry point naming a `Command` (a name, a one-line help, a function that adds the
arguments, a function that runs them, and one working example):

    [project.entry-points."msc.commands"]
    data = "msc_data.commands:DATA"

so installing only msc-data gives `msc data build ...`, and `msc --help` lists the
subcommands of the packages installed. A command module stays cheap to import (it
imports torch, Ray and its models inside `run`), so `msc --help` and `msc --version`
answer at once.

Shared flags mean the same in every command (`add_progress_flag`, `add_device_flag`,
`add_threads_flag`, `add_model_argument`). Exit codes: 0 success; 1 the work failed
(`CommandFailed`: a diverged or failed training run); 2 a user error (bad arguments, a
missing file, an invalid config), always one `msc: error: ...` line; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, NoReturn, Sequence

ENTRY_POINT_GROUP = "msc.commands"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
QUICK_START_COMMAND = "demo"


class CommandFailed(RuntimeError):
    """The command ran but its work failed (exit status 1); the message says why."""


class UsageError(ValueError):
    """A user mistake found by a command itself (exit status 2)."""


# User mistakes: one `msc: error:` line and exit status 2 (ConfigError is a ValueError;
# an extra that is not installed is a ModuleNotFoundError whose message names the extra).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
    ModuleNotFoundError,
)


@dataclass(frozen=True)
class Command:
    """One `msc` subcommand, as a package registers it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # adds arguments (and nested subcommands)
    run: Callable[[argparse.Namespace], int | None]  # the default runner; nested ones set `args.run`
    example: str  # one working command line, shown at the end of --help
    description: str | None = None


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one `PROG: error: ...` line (exit status 2)
    and does not expand abbreviations (`--worker 2` is an error, not `--workers 2`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def example_epilog(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, help: str, example: str, description: str | None = None,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A nested subcommand parser (e.g. `msc data build`) with the shared conventions."""
    return subparsers.add_parser(
        name, help=help, description=description or help, epilog=example_epilog(example), aliases=list(aliases),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# --------------------------------------------------------------------------- shared flags


def add_progress_flag(parser: argparse.ArgumentParser, legacy: Sequence[str] = ()) -> None:
    """`--no-progress`: no progress bars (what a log file or CI wants). `legacy` names are
    accepted as hidden aliases of it (`--quiet` in older msc-data releases)."""
    parser.add_argument("--no-progress", *legacy, dest="no_progress", action="store_true", help="no progress bars")


def add_device_flag(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    """`--device cpu|cuda|cuda:N|auto` (auto: CUDA when available)."""
    parser.add_argument("--device", default=default,
                        help=f"cpu, cuda, cuda:N or auto (CUDA when available); default {default}")


def add_threads_flag(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    """`--threads N`: intra-op CPU threads of this process."""
    shown = "torch's default" if default is None else str(default)
    parser.add_argument("--threads", type=positive_int, default=default,
                        help=f"intra-op CPU threads (default {shown}; small models run fastest on one thread)")


def add_model_argument(parser: argparse.ArgumentParser, positional: bool = False,
                       legacy: Sequence[str] = (), help: str | None = None) -> None:
    """The model a command reads: a run folder (its exported `model/`), an exported
    `model/` folder or a training `checkpoint_*` folder (`msc_core.checkpoint.resolve_pretrained`).
    `legacy`: older option names still accepted (`--checkpoint`, `--tokenizer`)."""
    text = help or "run folder, exported model/ folder or checkpoint_* folder"
    if positional:
        parser.add_argument("model", metavar="MODEL", help=text)
    else:
        parser.add_argument("--model", *legacy, dest="model", metavar="MODEL", required=True, help=text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (frame rates, scales)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (None: leave torch's default)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the dispatcher


def installed_commands() -> dict[str, metadata.EntryPoint]:
    """The `msc.commands` entry points of the installed packages, by name."""
    return {ep.name: ep for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


COMMAND_FIELDS = ("name", "help", "configure", "run", "example", "description")


def load_command(entry_point: metadata.EntryPoint) -> Command:
    """The `Command` an entry point names; an object with the same attributes is converted (a
    package that must not import msc_core, such as msc-runtime, registers one)."""
    command = entry_point.load()
    if isinstance(command, Command):
        return command
    missing = [f for f in COMMAND_FIELDS if not hasattr(command, f)]
    if missing:
        raise TypeError(f"entry point {entry_point.value} ({ENTRY_POINT_GROUP}) is not an msc_core.cli.Command "
                        f"nor an object with its attributes (lacks {', '.join(missing)})")
    return Command(**{f: getattr(command, f) for f in COMMAND_FIELDS})


def package_versions() -> str:
    """`msc-core 0.1.0, msc-data 0.1.0, ...` of the msc packages installed."""
    names = sorted({ep.dist.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist} | {"msc-core"})
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def build_parser(commands: dict[str, Command], prog: str = "msc") -> OneLineErrorParser:
    # the root's example: the Quick start when msc-ray-train is installed, else the first command's
    first = commands.get(QUICK_START_COMMAND) or next(iter(commands.values()), None)
    parser = OneLineErrorParser(
        prog=prog,
        description="msc: autoregressive video diffusion. Subcommands come from the installed msc packages; "
        f"`{prog} COMMAND --help` ends with an example of each.",
        epilog=example_epilog(first.example if first else f"{prog} --version"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s ({package_versions()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for command in commands.values():
        child = sub.add_parser(
            command.name, help=command.help, description=command.description or command.help,
            epilog=example_epilog(command.example), formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.configure(child)
        child.set_defaults(run=command.run)
    return parser


def _unknown_command(prog: str, name: str, known: Sequence[str]) -> int:
    listed = ", ".join(known) if known else "none (no msc package with commands is installed)"
    print(f"{prog}: error: unknown command {name!r}; installed commands: {listed} (see {prog} --help)",
          file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None, prog: str = "msc") -> int:
    """Run `msc ARGS...`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    entry_points = installed_commands()
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in entry_points:
        return _unknown_command(prog, first, list(entry_points))
    # only the command asked for is imported (all of them for --help)
    wanted = {first: entry_points[first]} if first is not None else entry_points
    commands = {name: load_command(ep) for name, ep in wanted.items()}
    parser = build_parser(commands, prog)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(args, prog)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status of --help / --version / a usage error (its one
    line already printed), so that in-process callers get a status instead of SystemExit."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command; user errors and failures become one `PROG: error:` line."""
    try:
        status = args.run(args)
    except CommandFailed as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except USER_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        print(f"{prog}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


def alias(command: str, prog: str) -> Callable[[Sequence[str] | None], int]:
    """A console script that is `msc COMMAND ...` under its older name (`msc-data` = `msc data`)."""

    def alias_main(argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        entry_points = installed_commands()
        if command not in entry_points:  # pragma: no cover - the alias's own package registers it
            return _unknown_command(prog, command, list(entry_points))
        spec = load_command(entry_points[command])
        parser = OneLineErrorParser(prog=prog, description=spec.description or spec.help,
                                    epilog=example_epilog(spec.example),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--version", action="version", version=f"%(prog)s ({package_versions()})")
        spec.configure(parser)
        parser.set_defaults(run=spec.run)
        args = _parse(parser, argv)
        return args if isinstance(args, int) else run_command(args, prog)

    return alias_main


def console_main() -> NoReturn:  # the `msc` console script
    sys.exit(main())


if __name__ == "__main__":
    console_main()
