"""What `verisparse verify` can certify: model.onnx, model_int8.tflite or a run's checkpoint.pt.

Each artifact gives the same face to the command: its input shape and class count, the
settings its producer recorded (eps, dataset), its own runtime (ONNX Runtime, LiteRT, torch)
that confirms counterexamples, and verify(x, y, eps, method) -> [SampleResult].
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.files import sha256_file
from verisparse.tflite_graph import check_quantization

from .deadline import deadline
from .limits import DEFAULTS, batch_size, check_model

KINDS = {".onnx": "onnx", ".tflite": "tflite", ".pt": "checkpoint"}


@dataclass
class Artifact:
    path: Path
    kind: str
    sha256: str
    in_shape: tuple
    num_classes: int
    metadata: dict                         # eps, dataset, ... as the producer recorded them
    verify: Callable                       # (x, y, eps, method, time_limit, time_budget, offset, device)
                                           # -> [SampleResult]
    methods: tuple                         # the --method values this artifact supports
    run: Callable                          # float32 (B, *in_shape) -> logits, the artifact's runtime
    extra: dict = field(default_factory=dict)
    elements: int = 0                      # activation elements of one sample, summed over the layers
    chunk: int = 1                         # samples verified together under a time budget (see _budgeted)
    devices: tuple = ("cpu",)              # where its bounds can run


def load_artifact(path, limits=DEFAULTS, trust_paths=False, user_dataset=None, kernels="reference") -> Artifact:
    """The artifact at path, its size checked against limits before anything is allocated for it.
    trust_paths / user_dataset: whether a checkpoint's config may name a file dataset.
    kernels: an int8 model's kernels to certify (verify.int8_bounds.KERNELS)."""
    p = Path(path)
    if not p.is_file():
        raise VeriSparseError(f"artifact {p} not found; pass model.onnx, model_int8.tflite or checkpoint.pt")
    kind = KINDS.get(p.suffix.lower())
    if kind is None:
        raise VeriSparseError(f"cannot tell what {p.name} is from its suffix; expected .onnx, .tflite or .pt")
    if kernels != "reference" and kind != "tflite":
        raise VeriSparseError(f"--kernels {kernels} is for int8 .tflite models; {p.name} is verified as float "
                              "(drop --kernels)")
    digest = sha256_file(p)
    if kind == "onnx":
        return _onnx(p, digest, limits)
    if kind == "checkpoint":
        return _checkpoint(p, digest, limits, trust_paths, user_dataset)
    return _tflite(p, digest, limits, kernels)


# under a time budget, samples go in chunks this large: the chunk in flight when the budget
# runs out is lost, so it stays small (bounds batch well from a few dozen samples on)
_BUDGET_CHUNK = 50


def chunk_size(elements, widest, num_classes):
    """Samples verified together under a time budget: a sample's verdict depends only on its
    chunk (one bound batch, one attack random stream), which sharded runs rely on."""
    return min(batch_size(elements, widest, num_classes), _BUDGET_CHUNK)


def _budgeted(verify_batches, elements, widest, num_classes):
    """verify(x, y, eps, method, time_limit, time_budget, offset, device): in batches sized to
    the model; with a time budget, in chunks, and the samples left when it runs out end
    unknown, decided by "time-budget". offset: the split index of x[0] (a shard's first sample)."""
    size = batch_size(elements, widest, num_classes)
    chunk = chunk_size(elements, widest, num_classes)

    def verify(x, y, eps, method, time_limit=10.0, time_budget=None, offset=0, device="cpu"):
        if time_budget is None:
            return verify_batches(x, y, eps, method, time_limit, range(offset, offset + len(y)), size, device)
        from .float_verify import SampleResult
        start, results = time.perf_counter(), []
        for s in range(0, len(y), chunk):
            left = time_budget - (time.perf_counter() - start)
            e = min(s + chunk, len(y))
            try:
                if left <= 0:
                    raise _OutOfTime()
                with deadline(left, _OutOfTime()):
                    results += verify_batches(x[s:e], y[s:e], eps, method, time_limit,
                                              range(offset + s, offset + e), size, device)
            except _OutOfTime:
                results += [SampleResult(offset + i, int(y[i]), "unknown", "time-budget", -math.inf, None, 0.0)
                            for i in range(s, len(y))]
                break
        return results
    return verify


class _OutOfTime(Exception):
    pass


def _float_artifact(p, kind, digest, net, in_shape, num_classes, meta, runtime, elements, widest):
    from .float_verify import METHODS, verify_float

    def verify_batches(x, y, eps, method, time_limit, indices, size, device):
        return verify_float(net, runtime, x, y, eps, method, indices=indices, time_limit=time_limit,
                            batch_size=size, device=device)
    return Artifact(p, kind, digest, tuple(in_shape), num_classes, meta,
                    _budgeted(verify_batches, elements, widest, num_classes), METHODS, runtime,
                    extra=dict(net=net), elements=elements, chunk=chunk_size(elements, widest, num_classes),
                    devices=("cpu", "cuda"))


def _tflite(p, digest, limits, kernels):
    from verisparse.tflite_graph import read_tflite

    from .int8_verify import load_tflite_artifact, verify_int8
    g = read_tflite(p)
    _check_quantization(g, p.name)
    sizes = [math.prod(t.shape) for t in g.tensors if t.data is None]
    out = g.tensors[g.outputs[0]].shape if len(g.outputs) == 1 else ()
    check_model(sum(sizes), math.prod(out), p.name, limits)
    art = load_tflite_artifact(p, digest, kernels)
    model = art.extra["model"]

    # the integer bounds run on the CPU: Requant's rounding is numpy int64 arithmetic
    def verify_batches(x, y, eps, method, time_limit, indices, size, device):
        return verify_int8(model, art.run, x, y, eps, method, indices, batch_size=size, time_limit=time_limit)
    art.verify = _budgeted(verify_batches, sum(sizes), max(sizes, default=1), art.num_classes)
    art.elements = sum(sizes)
    art.chunk = chunk_size(sum(sizes), max(sizes, default=1), art.num_classes)
    return art


def _check_quantization(g, where):
    """Every int8 tensor carries scales, and valid ones (the firmware's check), which the
    integer verifier reads without asking."""
    for t in g.tensors:
        if t.dtype != np.int8:
            continue
        if len(t.scale) == 0:
            raise VeriSparseError(f"{where}: int8 tensor {t.index} ({t.name[:60]}) has no quantization scale; "
                                  "export a full-integer model")
        check_quantization(t, where)


def _onnx(p, digest, limits):
    import onnxruntime as ort

    from .onnx_import import import_onnx, load_onnx_proto
    proto = load_onnx_proto(p)
    imp = import_onnx(proto, limits)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT rejects graphs the importer's checks let through
        raise VeriSparseError(f"ONNX Runtime cannot load {p}: {str(e)[:300]}") from None
    out_name = imp.output_name

    def runtime(x):
        return sess.run([out_name], {imp.input_name: np.ascontiguousarray(x, np.float32)})[0]
    meta = {k: _json_or_str(v) for k, v in imp.metadata.items()}
    return _float_artifact(p, "onnx", digest, imp.net, imp.in_shape, imp.num_classes, meta, runtime,
                           imp.elements, imp.widest)


def _checkpoint(p, digest, limits, trust_paths, user_dataset):
    import torch

    from verisparse.trainer.checkpoint import load_checkpoint
    from verisparse.trainer.train import load_run

    from .from_torch import bounded_net
    from .samples import dataset_name
    if p.name != "checkpoint.pt":  # load_run reads RUN/checkpoint.pt: it must be this very file
        raise VeriSparseError(f"{p} is not a run directory's checkpoint.pt; pass RUN_DIR/checkpoint.pt")
    cfg = load_checkpoint(p).get("config")
    recorded = cfg.get("dataset") if isinstance(cfg, dict) else None
    if recorded:  # load_run opens the dataset the checkpoint names
        dataset_name(user_dataset if user_dataset == recorded else None, recorded, f"{p}'s training config",
                     trust_paths)
    model, cfg, ds = load_run(p.parent)
    net = bounded_net(model, ds.input_shape)
    sizes = _activation_sizes(net, ds.input_shape)
    check_model(sum(sizes), ds.num_classes, p.name, limits)

    def runtime(x):
        with torch.no_grad():
            return model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    meta = dict(eps=cfg.eps, dataset=cfg.dataset, arch=cfg.arch, seed=cfg.seed)
    return _float_artifact(p, "checkpoint", digest, net, ds.input_shape, ds.num_classes, meta, runtime,
                           sum(sizes), max(sizes))


def _activation_sizes(net, in_shape):
    """Elements of each op's output for one sample (a forward pass of one zero input)."""
    import torch
    x, sizes = torch.zeros(1, *in_shape), [math.prod(in_shape)]
    with torch.no_grad():
        for op in net.ops:
            x = op.forward(x)
            sizes.append(x.numel())
    return sizes


def _json_or_str(v):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v
