"""The app under load: concurrent gradio_client users mixing classify, explain and generate (loopback only).

Starts ``python app.py`` on a free loopback port with the shipped checkpoints, then runs ``--users``
threads for ``--seconds``; each user loops over a fixed, seeded mix of calls (default: 70 % classify of
an example scan, 15 % explain, 15 % a 16-image generation) and waits for each answer. Records per
endpoint: requests, successes, explicit queue-full answers, other errors and p50/p95 latency, plus the
app's peak resident memory (VmHWM) and whether every request got an answer (none may be lost or hang:
a request still open ``--grace`` seconds after the end counts as hung).

    python benchmarks/load.py --users 6 --seconds 120 --record benchmarks/results/load.json
    MEDSYNTH_ONE_SLOT=1 python benchmarks/load.py ...   # classify shares generate's slot (the old set-up)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "brain_mri" / "glioma_00010.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--grace", type=float, default=180, help="time after the end for open requests to finish")
    ap.add_argument("--mix", default="classify:70,explain:15,generate:15")
    ap.add_argument("--record", default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.users <= 64 or not 1 <= args.seconds <= 3600:
        raise SystemExit("--users must be 1..64 and --seconds 1..3600")
    mix = [(name, float(w)) for name, w in (part.split(":") for part in args.mix.split(","))]

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False")
    (ROOT / "runs").mkdir(exist_ok=True)
    log = open(ROOT / "runs" / "load_app.log", "w")  # the app's stderr: a file, never a pipe that can fill
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=log, text=True)
    from gradio_client import Client, handle_file

    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            Client(url, verbose=False, analytics_enabled=False).close()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit(f"the app did not start; see {log.name}")
            time.sleep(1)

    calls = {
        "classify": lambda c: c.predict(handle_file(str(EXAMPLE)), domain="brain_mri", api_name="/classify"),
        "explain": lambda c: c.predict(handle_file(str(EXAMPLE)), domain="brain_mri", api_name="/explain"),
        "generate": lambda c: c.predict(domain="brain_mri", count=16, seed=random.randint(0, 10**6),
                                        api_name="/generate"),
    }
    stats = {name: {"requests": 0, "ok": 0, "queue_full": 0, "errors": 0, "latencies": [], "error_samples": []}
             for name in calls}
    lock = threading.Lock()
    open_requests = [0]
    end = time.time() + args.seconds

    def user(index: int) -> None:
        rng = random.Random(index)
        client = Client(url, verbose=False, analytics_enabled=False)
        while time.time() < end:
            name = rng.choices([n for n, _ in mix], weights=[w for _, w in mix])[0]
            with lock:
                stats[name]["requests"] += 1
                open_requests[0] += 1
            started = time.perf_counter()
            try:
                calls[name](client)
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - recorded, never fatal
                text = str(exc)
                outcome = "queue_full" if "queue is full" in text.lower() else "errors"
                with lock:
                    if len(stats[name]["error_samples"]) < 3:
                        stats[name]["error_samples"].append(text[:200])
            with lock:
                open_requests[0] -= 1
                stats[name][outcome] += 1
                if outcome == "ok":
                    stats[name]["latencies"].append(time.perf_counter() - started)
        client.close()

    started = time.time()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(end - time.time(), 0) + args.grace)
    hung = open_requests[0]
    wall = time.time() - started
    rss = peak_rss_mb(server.pid)
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    record = {
        "users": args.users, "seconds": args.seconds, "mix": args.mix, "wall_seconds": round(wall, 1),
        "slots": "one shared slot" if os.environ.get("MEDSYNTH_ONE_SLOT") == "1" else "classify has its own slot",
        "hung_requests": hung, "peak_rss_mb": round(rss, 1) if rss else None,
        "endpoints": {name: {k: v for k, v in s.items() if k != "latencies"}
                      | {"p50_s": percentile(s["latencies"], 0.5), "p95_s": percentile(s["latencies"], 0.95)}
                      for name, s in stats.items()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": ("MEDSYNTH_ONE_SLOT=1 " if os.environ.get("MEDSYNTH_ONE_SLOT") == "1" else "")
        + "python benchmarks/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.record:
        sys.path.insert(0, str(ROOT))
        from medsynth import atomic

        atomic.write_json(args.record, record)
    print(json.dumps(record, indent=1))
    return 0 if hung == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
