"""The learning-rate schedule both trainers use: linear warm-up, then cosine decay, per optimiser step."""

from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, total_steps: int):
    """lr multiplier: linear 0 -> 1 over warm-up, then cosine 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
