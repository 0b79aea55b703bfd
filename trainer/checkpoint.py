"""checkpoint.pt: weights, masks, optimizer and schedule state. Plain tensors and
containers only, so torch.load(weights_only=True) reads it."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write

FORMAT = "verisparse-checkpoint/1"


def save_checkpoint(path, state: dict):
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise VeriSparseError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VeriSparseError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VeriSparseError(f"{path} is not a VeriSparse checkpoint (expected format {FORMAT})")
    return state
