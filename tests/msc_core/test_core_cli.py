"""The `msc` dispatcher of msc-core, through its console script: subcommands come from the
`msc.commands` entry points of the installed packages (here a package installed into a
temporary folder on PYTHONPATH, with its own dist-info, as pip would lay it out).

- with a package that registers a command, `msc NAME ...` runs it and `msc --help` lists it;
- exit codes: 0 success, 1 `CommandFailed`, 2 a user error (one `msc: error:` line), and
  an unknown subcommand names the installed ones;
- `msc --version` names msc-core's version; importing msc_core does not import torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import msc_core
from msc_core.cli import CommandFailed, OneLineErrorParser

BIN = Path(sys.executable).parent

PLUGIN = '''
from msc_core.cli import Command, CommandFailed, add_progress_flag

def _configure(parser):
    parser.add_argument("word")
    add_progress_flag(parser, legacy=["--quiet"])

def _run(args):
    if args.word == "fail":
        raise CommandFailed("the work failed")
    if args.word == "bad":
        raise ValueError("word 'bad' is not allowed; use any other word")
    print(f"echo {args.word} progress={not args.no_progress}")

ECHO = Command(name="echo", help="print a word", configure=_configure, run=_run, example="msc echo hello")
'''


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "msc_echo_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "msc_echo_plugin.py").write_text(PLUGIN)
    (site / "msc_echo_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: msc-echo-plugin\nVersion: 1.0\n")
    (site / "msc_echo_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[msc.commands]\necho = msc_echo_plugin:ECHO\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def msc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "msc"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_an_installed_package_adds_its_subcommand(plugin_env: dict[str, str]) -> None:
    listed = msc("--help", env=plugin_env)
    assert listed.returncode == 0 and "\n    echo      print a word" in listed.stdout
    *_, heading, example = listed.stdout.rstrip().splitlines()
    assert heading == "example:" and example.startswith("  msc ")  # the Quick start where installed
    ran = msc("echo", "hi", "--quiet", env=plugin_env)  # an older flag name stays an alias
    assert (ran.returncode, ran.stdout) == (0, "echo hi progress=False\n")
    help_text = msc("echo", "--help", env=plugin_env).stdout
    assert help_text.rstrip().endswith("example:\n  msc echo hello")


def test_exit_codes_and_one_line_errors(plugin_env: dict[str, str]) -> None:
    failed = msc("echo", "fail", env=plugin_env)
    assert (failed.returncode, failed.stderr) == (1, "msc: error: the work failed\n")
    bad = msc("echo", "bad", env=plugin_env)
    assert (bad.returncode, bad.stderr) == (2, "msc: error: word 'bad' is not allowed; use any other word\n")
    unknown = msc("ehco", "hi", env=plugin_env)
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[0].startswith("msc: error: unknown command 'ehco'; installed commands: ")
    assert "echo" in unknown.stderr and len(unknown.stderr.splitlines()) == 1
    missing = msc("echo", env=plugin_env)  # argparse's own errors are one line too
    assert missing.returncode == 2
    assert missing.stderr == "msc echo: error: the following arguments are required: word (see msc echo --help)\n"


def test_version_and_no_command() -> None:
    version = msc("--version")
    assert version.returncode == 0 and f"msc-core {msc_core.__version__}" in version.stdout
    assert msc_core.__version__ == "0.1.0"
    bare = msc()
    assert bare.returncode == 2 and "usage: msc" in bare.stderr


def test_importing_msc_core_does_not_import_torch() -> None:
    code = "import sys, msc_core, msc_core.cli; print('torch' in sys.modules); print(msc_core.Config.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "Config"]  # the second line imports on first use


def test_command_failed_and_parser_errors_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    parser = OneLineErrorParser(prog="msc x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "many"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "msc x: error: argument --n: invalid int value: 'many' (see msc x --help)\n"
    assert issubclass(CommandFailed, RuntimeError)
