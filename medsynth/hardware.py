"""A one-line description of the hardware a run used, for logs and model cards."""

from __future__ import annotations

import os
import platform

import torch


def describe(device: torch.device | str | None = None, num_processes: int = 1) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{num_processes} x {name}" if num_processes > 1 else name
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    procs = f", {num_processes} processes" if num_processes > 1 else ""
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{procs}"
