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


def make_accelerator(device: str, mixed_precision: str):
    """The accelerate ``Accelerator`` for a training run: ``device`` auto|cpu|cuda, precision auto|no|fp16|bf16.

    "auto" precision is bf16 (or fp16) on a GPU and fp32 on a CPU, where bf16 is ~30x slower.
    """
    from accelerate import Accelerator

    from .errors import MedsynthError

    if device == "cuda" and not torch.cuda.is_available():
        raise MedsynthError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if mixed_precision == "fp16" and cpu:
        raise MedsynthError("--mixed-precision fp16 needs a GPU; on a CPU use 'no' (fp32) or 'auto'")
    if mixed_precision == "auto":
        mixed_precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
