"""Mean and standard deviation over seeds of benches' JSON results. Last line: one JSON object.

Each FILE is a bench's output (its last line is its JSON object, e.g. `bench/cascade.py
--seed N > seedN.json`). Every number found at the same key path in every file becomes
`{"mean": ..., "std": ..., "n": ...}` (sample std, n - 1); booleans count the files where
they are true; other values are kept when all files agree. Keys missing from some file
are left out.

    .venv/bin/python bench/mean_std.py cascade-seed0.json cascade-seed1.json cascade-seed2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def last_json(path: Path) -> Any:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path}: empty; expected a bench's output whose last line is a JSON object")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: the last line is not JSON ({err})") from None


def combine(values: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in values):
        keys = [k for k in values[0] if all(k in v for v in values)]
        return {k: combine([v[k] for v in values]) for k in keys}
    if all(isinstance(v, bool) for v in values):
        return {"true": sum(values), "n": len(values)}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.mean(values), "std": std, "n": len(values)}
    return values[0] if all(v == values[0] for v in values) else values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print(json.dumps(combine([last_json(path) for path in args.files])))


if __name__ == "__main__":
    main()
