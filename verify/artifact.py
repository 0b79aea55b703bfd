"""What `verisparse verify` can certify: model.onnx, model_int8.tflite or a run's checkpoint.pt.

Each artifact gives the same face to the command: its input shape and class count, the
settings its producer recorded (eps, dataset), its own runtime (ONNX Runtime, LiteRT, torch)
that confirms counterexamples, and verify(x, y, eps, method) -> [SampleResult].
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.files import sha256_file

KINDS = {".onnx": "onnx", ".tflite": "tflite", ".pt": "checkpoint"}


@dataclass
class Artifact:
    path: Path
    kind: str
    sha256: str
    in_shape: tuple
    num_classes: int
    metadata: dict                         # eps, dataset, ... as the producer recorded them
    verify: Callable                       # (x, y, eps, method, time_limit) -> [SampleResult]
    methods: tuple                         # the --method values this artifact supports
    run: Callable                          # float32 (B, *in_shape) -> logits, the artifact's runtime
    extra: dict = field(default_factory=dict)


def load_artifact(path) -> Artifact:
    p = Path(path)
    if not p.is_file():
        raise VeriSparseError(f"artifact {p} not found; pass model.onnx, model_int8.tflite or checkpoint.pt")
    kind = KINDS.get(p.suffix.lower())
    if kind is None:
        raise VeriSparseError(f"cannot tell what {p.name} is from its suffix; expected .onnx, .tflite or .pt")
    digest = sha256_file(p)
    if kind == "onnx":
        return _onnx(p, digest)
    if kind == "checkpoint":
        return _checkpoint(p, digest)
    from .int8_verify import load_tflite_artifact
    return load_tflite_artifact(p, digest)


def _float_artifact(p, kind, digest, net, in_shape, num_classes, meta, runtime):
    from .float_verify import METHODS, verify_float

    def verify(x, y, eps, method, time_limit=10.0, indices=None):
        return verify_float(net, runtime, x, y, eps, method, indices=indices, time_limit=time_limit)
    return Artifact(p, kind, digest, tuple(in_shape), num_classes, meta, verify, METHODS, runtime,
                    extra=dict(net=net))


def _onnx(p, digest):
    import onnxruntime as ort

    from .onnx_import import import_onnx, load_onnx_proto
    proto = load_onnx_proto(p)
    imp = import_onnx(proto)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT rejects graphs the importer's checks let through
        raise VeriSparseError(f"ONNX Runtime cannot load {p}: {str(e)[:300]}") from None
    out_name = imp.output_name

    def runtime(x):
        return sess.run([out_name], {imp.input_name: np.ascontiguousarray(x, np.float32)})[0]
    meta = {k: _json_or_str(v) for k, v in imp.metadata.items()}
    return _float_artifact(p, "onnx", digest, imp.net, imp.in_shape, imp.num_classes, meta, runtime)


def _checkpoint(p, digest):
    import torch

    from verisparse.trainer.train import load_run

    from .from_torch import bounded_net
    if p.name != "checkpoint.pt":  # load_run reads RUN/checkpoint.pt: it must be this very file
        raise VeriSparseError(f"{p} is not a run directory's checkpoint.pt; pass RUN_DIR/checkpoint.pt")
    model, cfg, ds = load_run(p.parent)
    net = bounded_net(model, ds.input_shape)

    def runtime(x):
        with torch.no_grad():
            return model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    meta = dict(eps=cfg.eps, dataset=cfg.dataset, arch=cfg.arch, seed=cfg.seed)
    return _float_artifact(p, "checkpoint", digest, net, ds.input_shape, ds.num_classes, meta, runtime)


def _json_or_str(v):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v
