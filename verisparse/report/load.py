"""Read what a run directory holds, stage by stage, for the report.

Every stage is optional: a missing or unreadable file becomes a note on the page, never an
error (a report of a half-finished run is still worth reading).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from verisparse.errors import VeriSparseError

STAGES = ("config.json", "train_log.jsonl", "checkpoint.pt", "export.json", "certificate*.json", "firmware.json")


@dataclass
class Certificate:
    path: Path
    data: dict
    counterexamples: dict = field(default_factory=dict)   # sample index -> input array

    @property
    def label(self):
        kind = self.data.get("artifact", {}).get("kind", "?")
        return "int8 (TFLite)" if kind == "tflite" else ("float (ONNX)" if kind == "onnx" else kind)


@dataclass
class Run:
    path: Path
    config: dict | None = None
    log: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)              # layer name -> 0/1 array (out, ...)
    export: dict | None = None
    certificates: list = field(default_factory=list)
    firmware: dict | None = None
    firmware_path: Path | None = None
    notes: list = field(default_factory=list)             # what could not be read, and why

    @property
    def name(self):
        return self.path.resolve().name

    def present(self):
        """(stage, present?) for the stage table."""
        return [("config.json", self.config is not None), ("train_log.jsonl", bool(self.log)),
                ("checkpoint.pt", (self.path / "checkpoint.pt").is_file()),
                ("export.json", self.export is not None),
                ("certificate*.json", bool(self.certificates)), ("firmware.json", self.firmware is not None)]


def load_run(path) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise VeriSparseError(f"{p} is not a run directory; pass the folder `verisparse train --out` wrote")
    run = Run(p)
    run.config = _json(run, p / "config.json")
    run.log = _jsonl(run, p / "train_log.jsonl")
    run.masks = _masks(run, p / "checkpoint.pt")
    run.export = _json(run, p / "export.json")
    for c in sorted(p.glob("certificate*.json")):
        data = _json(run, c)
        if isinstance(data, dict) and "summary" in data and "samples" in data:
            run.certificates.append(Certificate(c, data, _counterexamples(run, c, data)))
        elif data is not None:
            run.notes.append(f"{c.name} is not a certificate; left out")
    for fw in (p / "firmware" / "firmware.json", p / "firmware.json"):
        if fw.is_file():
            run.firmware, run.firmware_path = _json(run, fw), fw
            break
    if run.config is None and not run.log and run.export is None and not run.certificates:
        raise VeriSparseError(f"{p} holds none of {', '.join(STAGES)}; is it a run directory?")
    return run


def _json(run, path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        run.notes.append(f"{path.name} could not be read ({type(e).__name__}: {str(e)[:120]})")
        return None


def _jsonl(run, path):
    if not path.is_file():
        return []
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            run.notes.append(f"{path.name} line {k} is not JSON (a run killed mid-write?); skipped")
    return rows


def _masks(run, path):
    if not path.is_file():
        return {}
    try:
        import torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = state["model"]
    except Exception as e:  # noqa: BLE001 - a picture is a convenience; say why it is missing
        run.notes.append(f"checkpoint.pt could not be read for the mask picture ({type(e).__name__})")
        return {}
    return {k[:-len(".weight_mask")]: v.detach().float().numpy() for k, v in model.items()
            if k.endswith("weight_mask") and hasattr(v, "numpy")}


def _counterexamples(run, cert_path, data):
    name = data.get("counterexamples")
    if not name:
        return {}
    p = cert_path.with_name(Path(name).name)
    try:
        with np.load(p, allow_pickle=False) as z:
            return {int(i): x for i, x in zip(z["index"], z["x"])}
    except (OSError, KeyError, ValueError) as e:
        run.notes.append(f"{p.name} could not be read ({type(e).__name__})")
        return {}


def dataset_images(cert: Certificate, data_root=None):
    """The certified samples' inputs (N, C, H, W) in [0, 1], or None where the dataset does not load here."""
    d = cert.data.get("dataset", {})
    try:
        from verisparse.trainer.datasets import load_dataset
        ds = load_dataset(str(d["name"]), seed=int(d.get("seed", 0)), data_root=data_root)
    except Exception:  # noqa: BLE001 - pictures are optional
        return None
    x = ds.x_test if d.get("split", "test") == "test" else ds.x_train
    return np.asarray(x[: int(d.get("n", len(x)))], dtype=np.float32)
