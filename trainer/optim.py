"""The optimiser of every training phase: Adam, with torch's fused kernel.

The fused kernel updates a parameter in one call instead of about ten elementwise ops. On
the small compacted networks of structured training those ops are a visible share of a
step, and compacted training replays Adam steps on the full model (trainer/compact.py)."""
from __future__ import annotations

import torch


def adam(params, lr: float) -> torch.optim.Adam:
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
