"""Seconds from `python app.py` to the first HTTP 200 of its page, over several cold starts.

    python benchmarks/app_startup.py --runs 3 [--checkpoints DIR]

Each run starts a fresh process (imports, checkpoint discovery, layout; models load lazily on first
use), polls http://127.0.0.1:PORT/ every 0.1 s, then stops the process.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(checkpoints: str | None) -> float:
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    if checkpoints:
        env["MEDSYNTH_CHECKPOINTS"] = checkpoints
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("app did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkpoints", default=None, help="MEDSYNTH_CHECKPOINTS for the app (default: ./checkpoints)")
    args = ap.parse_args()
    times = [one_start(args.checkpoints) for _ in range(args.runs)]
    print(f"start to first HTTP 200: median {statistics.median(times):.2f} s, "
          f"runs {', '.join(f'{t:.2f}' for t in times)} (checkpoints: {args.checkpoints or ROOT / 'checkpoints'})")


if __name__ == "__main__":
    main()
