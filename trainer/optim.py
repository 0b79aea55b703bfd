"""The optimiser of every training phase: Adam, with torch's fused kernel.

The fused kernel updates a parameter in one call instead of about ten elementwise ops. On
the small compacted networks of structured training those ops are a visible share of a
step, and compacted training replays Adam steps on the full model (trainer/compact.py).

Training steps run with denormal floats flushed to zero (flush_denormals): a pruned weight's
gradient is exactly zero, so its Adam momentum decays by 0.9 a step into the denormal range,
where x86 arithmetic is slow. A 0.95-sparse cnn_4layer late in training held 140,873
denormal state entries (of 332,812; dense training 64,243), and its Adam step took 3.2 ms
against 0.46 ms flushed."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def adam(params, lr: float) -> torch.optim.Adam:
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


@contextmanager
def flush_denormals():
    """Denormals read and written as zero inside (CPU); torch's default, IEEE, after. Only
    the training steps run inside: reported bounds keep IEEE arithmetic."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
