"""What `verisparse profile` was pointed at: .tflite / .onnx files or run directories."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from verisparse.errors import VeriSparseError

# the flatbuffer file identifier of a .tflite, at bytes 4..8
_TFLITE_ID = b"TFL3"


@dataclass
class Artifact:
    label: str           # how tables name it
    path: Path
    kind: str            # "tflite" or "onnx"
    run_dir: Path | None  # the run directory it belongs to, where known
    data: bytes


def _read(path: Path, kind: str, run_dir, label) -> Artifact:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VeriSparseError(f"cannot read {path}: {e.strerror}") from None
    if kind == "tflite" and data[4:8] != _TFLITE_ID:
        raise VeriSparseError(f"{path} is not a TFLite model (no TFL3 identifier); re-export it with "
                              "`verisparse export RUN_DIR`")
    if kind == "onnx" and len(data) < 16:
        raise VeriSparseError(f"{path} is too short to be an ONNX model; re-export it with `verisparse export RUN_DIR`")
    return Artifact(label, path, kind, run_dir, data)


def _run_dir_of(path: Path) -> Path | None:
    # model_int8.tflite beside export.json is a run's artifact: its vectors and certificate apply
    return path.parent if (path.parent / "export.json").exists() else None


def resolve(paths) -> list[Artifact]:
    """Each path: a run directory (its model_int8.tflite and model.onnx), a .tflite or an .onnx."""
    out = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            found = [(p / "model_int8.tflite", "tflite"), (p / "model.onnx", "onnx")]
            found = [(f, k) for f, k in found if f.exists()]
            if not found:
                raise VeriSparseError(f"{p} holds neither model_int8.tflite nor model.onnx; run "
                                      f"`verisparse export {p}` first")
            out += [_read(f, k, p, f"{p.name}/{f.name}") for f, k in found]
        elif not p.exists():
            raise VeriSparseError(f"{p} does not exist; give a run directory, a .tflite or an .onnx file")
        elif p.suffix == ".tflite":
            out.append(_read(p, "tflite", _run_dir_of(p), p.name if len(paths) == 1 else str(p)))
        elif p.suffix == ".onnx":
            out.append(_read(p, "onnx", _run_dir_of(p), p.name if len(paths) == 1 else str(p)))
        else:
            raise VeriSparseError(f"{p}: profile takes a run directory, a .tflite or an .onnx file")
    return out
