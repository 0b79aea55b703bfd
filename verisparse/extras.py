"""Which installed extra each command needs. `pip install verisparse` is the light install a
Raspberry Pi gets (numpy, click, LiteRT, ONNX Runtime: enough for `verisparse profile`); the
training, export, verification and firmware toolchain is `pip install 'verisparse[full]'`."""
from __future__ import annotations

import importlib.util

from .errors import VeriSparseError

FULL = "pip install 'verisparse[full]'"

# top-level modules each command imports (checked without importing them)
NEEDS = {
    "train": ("torch", "scipy", "tqdm", "mlxtend", "sklearn"),
    "export": ("torch", "onnx", "tensorflow", "tflite_micro"),
    "verify": ("torch", "scipy", "onnx"),
    "firmware": ("torch", "tflite_micro"),
    "report": ("torch", "matplotlib"),
}
# modules that only the full extra installs: a missing one means the light install
FULL_ONLY = {m for ms in NEEDS.values() for m in ms} | {"sklearn", "mlxtend"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_message(command: str, missing) -> str:
    return (f"`verisparse {command}` needs the full toolchain ({', '.join(missing)} not installed): {FULL} "
            "(this install has what `verisparse profile` needs)")


def require(command: str) -> None:
    missing = [m for m in NEEDS.get(command, ()) if not _installed(m)]
    if missing:
        raise VeriSparseError(missing_message(command, missing))


def full_only(e: ImportError) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in FULL_ONLY
