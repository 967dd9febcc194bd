#!/usr/bin/env bash
# One prepared GPU check of msc, for a CUDA machine with the locked environment:
#
#   bash bench/gpu.sh                 # writes bench-gpu.json (override: --out FILE)
#   bash bench/gpu.sh --dry-run       # on CPU (CI): checks this script and every command it runs
#
# Steps (each one's last JSON line is kept; a failing step is recorded, the others still run):
#   1. pytest -m gpu                        the GPU-marked tests (same seed on CPU and CUDA, bf16 steps, backends)
#   2. bench/attention.py                   MSC layer on CUDA: 16x64x64 bf16 against flash SDPA (+ the CPU size)
#   3. bench/train_step.py --precision autocast   a bf16 training step of each kind: tokens/s, peak memory
#   4. bench/runtime.py                     ONNX Runtime with the CUDA provider vs PyTorch, on the exported graphs
# Budget: under 8 minutes on one H100/H200 once the environment exists (the first
# `uv sync` builds NATTEN's CUDA kernels, which takes longer and is not counted; set
# NATTEN_CUDA_ARCH, e.g. "9.0", and NATTEN_N_WORKERS to shorten it). Every step has a
# timeout; the JSON says which steps ran, their wall times and their results.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench-gpu.json
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument '$1' (valid: --dry-run, --out FILE, --help)" >&2; exit 2 ;;
  esac
  shift
done

export UV_LOCKED=1 PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
python3 -c "import uv" 2>/dev/null || python3 -m pip install --quiet uv
python3 -m uv sync --locked --quiet
py=.venv/bin/python
results_dir=$(mktemp -d)
trap 'rm -rf "$results_dir"' EXIT

if [ "$dry_run" -eq 0 ]; then
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: torch sees no CUDA device here (use --dry-run on CPU)')"
fi

# name | timeout (s) | command of the real run | command of the dry run (CPU, seconds)
steps=(
  "gpu_tests|240|$py -m pytest -m gpu -q -p no:cacheprovider -rs tests|$py -m pytest -m gpu --collect-only -q -p no:cacheprovider tests"
  "attention|300|$py bench/attention.py --repeats 5|$py bench/attention.py --help"
  "train_step|240|$py bench/train_step.py --device cuda --precision autocast|$py bench/train_step.py --device cpu --quick --warmup 1 --repeats 1"
  "onnx_runtime_cuda|240|$py bench/runtime.py --repeats 5|$py bench/runtime.py --help"
)

for entry in "${steps[@]}"; do
  IFS='|' read -r name limit real dry <<<"$entry"
  cmd=$real
  [ "$dry_run" -eq 1 ] && cmd=$dry
  echo "=== $name: $cmd" >&2
  start=$(date +%s.%N)
  rc=0
  # shellcheck disable=SC2086
  timeout "$limit" $cmd > "$results_dir/$name.out" 2> "$results_dir/$name.err" || rc=$?
  end=$(date +%s.%N)
  echo "$rc $start $end" > "$results_dir/$name.status"
  tail -n 3 "$results_dir/$name.err" >&2 || true
  echo "=== $name: exit $rc" >&2
done

"$py" - "$results_dir" "$out" "$dry_run" "${steps[@]}" <<'PY'
import json, sys, platform
from pathlib import Path

results_dir, out, dry_run, entries = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
report = {"dry_run": dry_run, "host": platform.node(), "steps": {}}
try:
    import torch
    report["torch"] = torch.__version__
    report["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as err:  # the report is still written
    report["torch"] = f"unavailable: {err}"
failed = []
for entry in entries:
    name = entry.split("|", 1)[0]
    rc, start, end = (results_dir / f"{name}.status").read_text().split()
    text = (results_dir / f"{name}.out").read_text().strip()
    step = {"exit": int(rc), "wall_s": round(float(end) - float(start), 1)}
    last = text.splitlines()[-1] if text else ""
    try:
        step["result"] = json.loads(last)
    except json.JSONDecodeError:
        step["tail"] = text.splitlines()[-5:]
    if int(rc) != 0:
        failed.append(name)
        step["stderr_tail"] = (results_dir / f"{name}.err").read_text().strip().splitlines()[-10:]
    report["steps"][name] = step
report["failed"] = failed
report["total_wall_s"] = round(sum(s["wall_s"] for s in report["steps"].values()), 1)
Path(out).write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps(report))
sys.exit(1 if failed else 0)
PY
