"""bench/mean_std.py: mean and std over seeds of benches' JSON lines, as a user runs it."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cwd: Path, *files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "mean_std.py"), *files], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_numbers_at_one_key_path_become_mean_and_sample_std(tmp_path: Path) -> None:
    results = [{"sr": {"psnr": p, "beats": p > 17}, "mode": "sr", "seed": s} for s, p in enumerate([16.0, 17.5, 18.5])]
    for s, r in enumerate(results):  # log lines first, the JSON last: what benches print
        (tmp_path / f"seed{s}.json").write_text(f"training...\n{json.dumps(r)}\n")
    done = run(tmp_path, "seed0.json", "seed1.json", "seed2.json")  # relative paths from the cwd
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["sr"]["psnr"] == {"mean": 17.333333333333332, "std": statistics.stdev([16.0, 17.5, 18.5]), "n": 3}
    assert out["sr"]["beats"] == {"true": 2, "n": 3}
    assert out["mode"] == "sr" and out["seed"]["mean"] == 1


def test_a_file_without_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("Traceback ...\n")
    done = run(tmp_path, "broken.json")
    assert done.returncode != 0 and "broken.json: the last line is not JSON" in done.stderr
