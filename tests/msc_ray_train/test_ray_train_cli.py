"""The `msc` command line as a user meets it, through the console scripts: one dispatcher
whose subcommands come from the installed packages, one vocabulary, one-line errors.

- `msc --help` lists every installed subcommand; `msc --version` names the packages;
- every `--help` ends with an example, and that example parses as a valid command line;
- the older commands (`msc-data`, `msc-cascade`, `msc-export`) are the same subcommands;
- `msc train NAME` finds a shipped job, `msc train --list` shows them;
- unknown subcommands, unknown job names and Ray addresses where no cluster answers get
  one `msc: error:` line and exit status 2, within seconds (no Ray is started);
- a relative `run.storage_path` resolves against the working directory of `msc train`,
  so workers (which Ray runs in working directories of their own) get absolute paths.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from msc_core.cli import build_parser, installed_commands, load_command
from msc_ray_train.commands import resolve_job, shipped_jobs
from msc_ray_train.job import load_job

BIN = Path(sys.executable).parent
EXPECTED_COMMANDS = {"train", "sample", "demo", "data", "cascade", "export"}


def msc(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        script: str = "msc") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_every_installed_subcommand_and_version_names_the_packages() -> None:
    result = msc("--help")
    assert result.returncode == 0
    for name in EXPECTED_COMMANDS:
        assert f"\n    {name} " in result.stdout, name
    version = msc("--version")
    assert version.returncode == 0
    for package in ("msc-core", "msc-data", "msc-cascade", "msc-ray-train"):
        assert f"{package} 0.1.0" in version.stdout


def _parsers_with_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers_with_examples(child, (*path, name))


def test_every_help_ends_with_an_example_that_parses() -> None:
    commands = {name: load_command(ep) for name, ep in installed_commands().items()}
    assert EXPECTED_COMMANDS <= set(commands)
    root = build_parser(commands)
    checked = 0
    for path, parser in _parsers_with_examples(root):
        help_text = parser.format_help().rstrip()
        *_, heading, example = help_text.splitlines()
        assert heading == "example:", (path, help_text[-300:])
        argv = shlex.split(example.strip())
        assert argv[0] == "msc" and argv[1 : 1 + len(path)] == list(path), (path, example)
        root.parse_args(argv[1:])  # a valid command line of this very subcommand
        checked += 1
    assert checked >= 12  # the root, six commands, and the nested data / cascade / export subcommands


@pytest.mark.parametrize("alias, command, subcommand", [("msc-data", "data", "info"), ("msc-cascade", "cascade", "upscale"),
                                                        ("msc-export", "export", "check")])
def test_older_command_names_are_the_same_subcommands(alias: str, command: str, subcommand: str, tmp_path: Path) -> None:
    old, new = msc("--help", script=alias), msc(command, "--help")
    assert old.returncode == new.returncode == 0
    assert old.stdout.splitlines()[-1] == new.stdout.splitlines()[-1]  # the same example
    assert f"    {subcommand} " in old.stdout and f"    {subcommand} " in new.stdout
    # the same command behind both names: the same error for the same mistake
    missing = str(tmp_path / "nothing-here")
    args = {"info": [missing], "upscale": [missing, "out.mp4", "--model", missing], "check": [missing]}[subcommand]
    old_err, new_err = msc(subcommand, *args, script=alias), msc(command, subcommand, *args)
    assert old_err.returncode == new_err.returncode == 2
    assert old_err.stderr.replace(f"{alias}: error:", "msc: error:") == new_err.stderr
    assert len(new_err.stderr.splitlines()) == 1 and missing in new_err.stderr


def test_unknown_subcommand_and_unknown_job_name_exit_2_with_one_line(tmp_path: Path) -> None:
    unknown = msc("trian", "demo")
    assert unknown.returncode == 2 and unknown.stdout == ""
    from msc_core.cli import installed_commands

    commands = sorted(installed_commands())  # msc-runtime adds `runtime` where it is installed
    assert {"cascade", "data", "demo", "export", "sample", "train"} <= set(commands)
    assert unknown.stderr.splitlines() == [
        f"msc: error: unknown command 'trian'; installed commands: {', '.join(commands)} (see msc --help)"
    ]
    job = msc("train", "demoo", cwd=tmp_path)
    assert job.returncode == 2
    assert job.stderr.splitlines() == [
        f"msc: error: unknown job 'demoo': no such file and no shipped job of that name; shipped jobs: "
        f"{', '.join(shipped_jobs())} (msc train --list)"
    ]
    bad_flag = msc("sample", "x", "--frames", "0", "--out", "x.gif")
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.splitlines()) == 1
    assert "--frames: must be >= 1, got 0" in bad_flag.stderr


def test_train_list_and_shipped_names(tmp_path: Path) -> None:
    listed = msc("train", "--list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(shipped_jobs())
    assert {"demo", "resume", "vae3d", "arvae", "cascade-sr", "nova", "gpu-cluster"} <= set(shipped_jobs())
    assert resolve_job("demo") == shipped_jobs()["demo"] == resolve_job("demo.yaml")
    local = tmp_path / "demo.yaml"  # a file the user has wins over the shipped job of that name
    local.write_text("x: 1\n")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert resolve_job("demo.yaml") == Path("demo.yaml")
    finally:
        os.chdir(old)


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{port}", "Ray address '127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port}"),
    ("ray://127.0.0.1:{port}", "Ray address 'ray://127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port}"),
    ("http://127.0.0.1:{port}", "is a dashboard (job submission) address"),
    ("my-head", "Ray address 'my-head' is not HOST:PORT"),
    # (`auto` is not a case here: Ray finds any cluster running on this machine by its processes)
])
def test_an_address_where_no_cluster_answers_exits_2_within_seconds(
    address: str, message: str, tmp_path: Path, make_job_dict
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(make_job_dict("unreachable")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    result = msc("train", str(job), "--address", address.format(port=port), "--no-progress", env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and message.format(port=port) in result.stderr, result.stderr
    assert time.monotonic() - started < 60  # ray.init alone would retry for minutes


def test_relative_paths_in_a_job_resolve_where_msc_train_runs(tmp_path: Path, make_job_dict) -> None:
    """Workers receive only absolute paths: the job dict sent to Ray holds the storage and
    shard paths resolved against the driver's working directory."""
    job = make_job_dict("relative")
    job["run"]["storage_path"] = "runs"
    job["data"] = {"source": "shards", "path": "clips/manifest.json", "frames": 4, "size": 16, "channels": 1}
    (tmp_path / "jobs").mkdir()
    job_file = tmp_path / "jobs" / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        loaded = load_job(Path("jobs/job.yaml"), check_data=False)
    finally:
        os.chdir(old)
    sent = loaded.model_dump(mode="json")  # what train_worker receives
    assert sent["run"]["storage_path"] == str(tmp_path / "runs")
    assert sent["data"]["path"] == str(tmp_path / "clips" / "manifest.json")
    assert loaded.run_dir == tmp_path / "runs" / "relative"
    # validated again on a worker, in another working directory, the paths stay the same
    from msc_ray_train.job import TrainJob

    assert TrainJob.from_dict(sent).run_dir == tmp_path / "runs" / "relative"


def test_sample_steps_default_to_what_the_model_can_take() -> None:
    """`msc sample` without --steps: 50 DDIM steps per frame; NOVA reveals a frame's tokens
    set by set, so at most its tokens per frame (8 by default): 50 used to be refused."""
    from msc_ar.ardiffusion import ARDiffusionConfig
    from msc_ar.nova import NovaConfig
    from msc_ray_train.commands import default_sample_steps

    assert default_sample_steps(ARDiffusionConfig.preset("tiny")) == 50
    assert default_sample_steps(NovaConfig.tiny(sample_size=(8, 8), patch_size=2)) == 8  # 16 tokens
    assert default_sample_steps(NovaConfig.tiny(sample_size=(4, 4), patch_size=2)) == 4  # 4 tokens
