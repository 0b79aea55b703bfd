"""Where a run came from: every artifact's sha256, tool versions (from package metadata, so
nothing heavy is imported), and the machine."""
from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from verisparse.files import sha256_file

PACKAGES = ("verisparse", "torch", "numpy", "onnx", "onnxruntime", "tensorflow", "tensorflow-cpu",
            "ai-edge-litert", "tflite-micro", "matplotlib", "scikit-learn")
ARTIFACT_GLOBS = ("config.json", "train_log.jsonl", "checkpoint.pt", "model.onnx", "model_int8.tflite",
                  "export.json", "certificate*.json", "certificate*_counterexamples.npz", "firmware.json",
                  "firmware/firmware.json", "firmware/*.elf")


def artifacts(run_dir):
    """[(relative path, bytes, sha256)] of the run's artifacts that exist."""
    rows, seen = [], set()
    for pattern in ARTIFACT_GLOBS:
        for p in sorted(run_dir.glob(pattern)):
            if p.is_file() and p not in seen:
                seen.add(p)
                rows.append((str(p.relative_to(run_dir)), p.stat().st_size, sha256_file(p)))
    return rows


def tool_versions():
    rows = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, version(name)))
        except PackageNotFoundError:
            pass
    return rows


def machine():
    return [("platform", platform.platform()), ("processor", platform.machine()),
            ("python executable", sys.executable)]
