"""checkpoint.pt: weights, masks, optimizer and schedule state. Plain tensors and
containers only, so torch.load(weights_only=True) reads it."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write

FORMAT = "verisparse-checkpoint/1"
_FIELDS = dict(config=dict, epoch=int, step=int, train_seconds=float, model=dict, optimizer=dict)


def save_checkpoint(path, state: dict):
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise VeriSparseError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: the error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's refusal text advises loading the file unsafely: never pass that on.
        why = ("it holds objects other than tensors and plain containers, and loading those could run code: refused"
               if "weights only" in str(e).lower() else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        raise VeriSparseError(f"{path} is not a readable checkpoint ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VeriSparseError(f"{path} is not a VeriSparse checkpoint (expected format {FORMAT})")
    for key, kind in _FIELDS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise VeriSparseError(f"{path} is damaged: {key} is missing or not a {kind.__name__}")
    return state
