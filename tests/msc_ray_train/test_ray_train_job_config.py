"""TrainJob files: every shipped job validates; each user mistake gets one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from msc_ar.ardiffusion import ARDiffusionConfig
from msc_core.config import ConfigError
from msc_ray_train.cli import main
from msc_ray_train.job import TrainJob, job_from_dict, load_job
from msc_ray_train.model_kinds import MODEL_KINDS

JOBS_DIR = Path(__file__).resolve().parents[2] / "services" / "ray-train" / "jobs"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("job_file", sorted(JOBS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_file_validates(job_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run where the shipped tokenizer jobs left their runs (./msc-runs/vae3d, ./msc-runs/arvae):
    # a latent job must fit the tokenizer its tokenizer job trains
    from msc_core.checkpoint import save_pretrained
    from msc_ray_train.model_kinds import build_model

    monkeypatch.chdir(tmp_path)
    for name in ("vae3d", "arvae"):
        tokenizer_job = load_job(JOBS_DIR / f"{name}.yaml")
        save_pretrained(build_model(tokenizer_job.model), tokenizer_job.run_dir / "model")
    job = load_job(job_file)
    assert job.model.kind in MODEL_KINDS
    # the saved form of a job (job.json in every checkpoint) round-trips exactly
    assert TrainJob.from_json(job.to_json()) == job


def test_shipped_jobs_include_demo_gpu_cluster_and_resume() -> None:
    assert {"demo.yaml", "gpu-cluster.yaml", "resume.yaml"} <= {p.name for p in JOBS_DIR.glob("*.yaml")}


def test_preset_with_overrides_expands_to_the_full_model_config(make_job_dict) -> None:
    job = job_from_dict(make_job_dict())
    expected = ARDiffusionConfig.preset(
        "tiny", data={"channels": 1, "num_frames": 4, "height": 16, "width": 16},
        transformer={"dim": 32, "num_heads": 2},
    )
    assert job.model == expected
    assert "preset" not in json.loads(job.to_json())["model"]


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  kind: ardiffusion\n  data: {channels: 1\nsteps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    message = str(info.value)
    assert f"{path}:4:" in message and "malformed YAML" in message


def test_unknown_model_kind_lists_the_valid_kinds(tmp_path: Path, make_job_dict) -> None:
    job = make_job_dict()
    job["model"] = {"kind": "videogpt", "depth": 4}
    with pytest.raises(ConfigError) as info:
        load_job(write_yaml(tmp_path / "job.yaml", job))
    message = str(info.value)
    assert "'videogpt'" in message and "valid kinds: " + ", ".join(sorted(MODEL_KINDS)) in message
    assert len(message.splitlines()) == 1  # one problem, one line, not a cascade of union members


def test_negative_lr_names_optim_lr(tmp_path: Path, make_job_dict) -> None:
    path = write_yaml(tmp_path / "job.yaml", make_job_dict(optim={"lr": -1e-4}))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert "optim.lr" in str(info.value) and "greater than 0" in str(info.value)


def test_missing_shard_path_is_named(tmp_path: Path, make_job_dict) -> None:
    missing = tmp_path / "no-such-shards" / "manifest.json"
    job = make_job_dict()
    job["data"] = {"source": "shards", "path": str(missing), "frames": 4, "size": 16, "channels": 1}
    path = write_yaml(tmp_path / "job.yaml", job)
    with pytest.raises(FileNotFoundError) as info:
        load_job(path)
    assert str(missing) in str(info.value)


def test_missing_shards_of_a_brace_pattern_are_named(tmp_path: Path, make_job_dict) -> None:
    (tmp_path / "clips-000000.tar").write_bytes(b"")
    pattern = str(tmp_path / "clips-{000000..000001}.tar")
    job = make_job_dict()
    job["data"] = {"source": "shards", "path": pattern, "frames": 4, "size": 16, "channels": 1}
    with pytest.raises(FileNotFoundError) as info:
        load_job(write_yaml(tmp_path / "job.yaml", job))
    assert "clips-000001.tar" in str(info.value) and "clips-000000.tar" not in str(info.value)


def test_data_that_does_not_fit_the_model_is_named(make_job_dict) -> None:
    with pytest.raises(ConfigError, match=r"data.frames=6 but the model trains on 4 frames"):
        job_from_dict(make_job_dict(data={"frames": 6}))
    with pytest.raises(ConfigError, match=r"data.output_size=8 .* model takes 16x16"):
        job_from_dict(make_job_dict(data={"output_size": 8}))


def test_bf16_autocast_needs_gpu_workers(make_job_dict) -> None:
    with pytest.raises(ConfigError, match="precision='bf16'.*scaling.use_gpu"):
        job_from_dict(make_job_dict(precision="bf16"))
    assert job_from_dict(make_job_dict(precision="bf16", scaling={"use_gpu": True})).precision == "bf16"


def test_unknown_field_is_refused(make_job_dict) -> None:
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown field"):
        job_from_dict(make_job_dict(optim={"learning_rate": 1e-3}))


def test_cli_overrides_are_validated_like_the_file(tmp_path: Path, make_job_dict) -> None:
    path = write_yaml(tmp_path / "job.yaml", make_job_dict())
    assert load_job(path, overrides={"scaling.workers": 3}).scaling.workers == 3
    with pytest.raises(ConfigError, match="scaling.workers"):
        load_job(path, overrides={"scaling.workers": 0})


# --------------------------------------------------------------------------- CLI messages


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_cli_train_missing_job_file_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    code, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2
    from msc_ray_train.commands import shipped_jobs

    assert err.strip() == (f"msc: error: job file not found: {tmp_path / 'nope.yaml'} (shipped jobs: "
                           f"{', '.join(shipped_jobs())})")


def test_cli_train_invalid_job_exits_2_naming_the_field(tmp_path: Path, make_job_dict, capsys) -> None:
    path = write_yaml(tmp_path / "job.yaml", make_job_dict(optim={"lr": -1.0}))
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and "optim.lr" in err and "Traceback" not in err


def test_cli_help_lists_the_commands_and_options(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "sample", "demo"))
    for command, option in (("train", "--workers"), ("sample", "--prefix"), ("demo", "--out")):
        assert main([command, "--help"]) == 0
        assert option in capsys.readouterr().out


def test_class_conditional_model_needs_one_labelled_digit_per_clip(make_job_dict) -> None:
    conditional = {"num_classes": 10}
    job = job_from_dict(make_job_dict(model={**make_job_dict()["model"], **conditional}))
    assert job.class_conditional
    with pytest.raises(ConfigError, match="class-conditional model .* num_digits: 1"):
        job_from_dict(make_job_dict(model={**make_job_dict()["model"], **conditional}, data={"num_digits": 2}))
    with pytest.raises(ConfigError, match="model.num_classes=5 but moving-mnist digits have 10 classes"):
        job_from_dict(make_job_dict(model={**make_job_dict()["model"], "num_classes": 5}))
    with pytest.raises(ConfigError, match="text-conditional models need caller-supplied text embeddings"):
        job_from_dict(make_job_dict(model={**make_job_dict()["model"], "text_embed_dim": 16}))
