"""Start-up time of the command line: ``--help`` and an argument error per command, median of N runs.

    python benchmarks/cli_startup.py [--repo PATH] [--runs 5] [--record FILE]

``--repo`` times another checkout (e.g. a ``git worktree`` of an older commit) with this interpreter,
so a before/after pair runs on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [["--help"], ["generate", "--help"], ["train-classifier", "--help"], ["classify", "--help"],
         ["tstr", "--help"], ["generate", "--steps", "x"]]


def time_case(repo: Path, argv: list[str], runs: int) -> float:
    env = os.environ | {"PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medsynth", *argv], cwd=repo, env=env, capture_output=True, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--record", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    result = {"repo": str(repo), "commit": commit, "runs": args.runs, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "seconds": {" ".join(c): round(time_case(repo, c, args.runs), 3) for c in CASES}}
    print(json.dumps(result, indent=1))
    if args.record:
        Path(args.record).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
