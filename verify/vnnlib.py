"""VNN-LIB export in the VNN-COMP layout, for cross-checking with other verifiers
(alpha-beta-CROWN, nnenum, ...):

  DIR/model.onnx            the network (the artifact itself, or the folded checkpoint)
  DIR/vnnlib/sample_I.vnnlib  one property per sample: the clipped L-inf box on X_k and the
                            *unsafe* region "some Y_j >= Y_label" (SAT = counterexample)
  DIR/instances.csv         onnx,vnnlib,timeout per line, no header

Inputs are written flattened in the ONNX input's C-order, as VNN-COMP tools read them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write


def property_text(x_l, x_u, label, num_classes, comment=""):
    lo, hi = np.asarray(x_l, np.float64).reshape(-1), np.asarray(x_u, np.float64).reshape(-1)
    out = [f"; {line}" for line in comment.splitlines()]
    out += [f"(declare-const X_{k} Real)" for k in range(lo.size)]
    out += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    out.append("")
    for k in range(lo.size):
        # repr of a Python float: the shortest text that reads back exactly (numpy 2's own repr
        # writes "np.float64(...)", which no VNN-LIB reader parses)
        out.append(f"(assert (>= X_{k} {float(lo[k])!r}))")
        out.append(f"(assert (<= X_{k} {float(hi[k])!r}))")
    out.append("")
    out.append("(assert (or")
    out += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    out.append("))")
    return "\n".join(out) + "\n"


def export(out_dir, artifact, x_l, x_u, labels, indices, timeout, eps):
    """Write the VNN-COMP benchmark folder; returns the number of instances."""
    out = Path(out_dir)
    if artifact.kind == "tflite":
        raise VeriSparseError("VNN-LIB tools read float ONNX: export from model.onnx or checkpoint.pt, "
                              "not from the int8 TFLite model")
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    if artifact.kind == "onnx":
        shutil.copyfile(artifact.path, onnx_path)
    else:
        _checkpoint_to_onnx(artifact, onnx_path)
    (out / "vnnlib").mkdir(exist_ok=True)
    rows = []
    for k, idx in enumerate(indices):
        name = f"vnnlib/sample_{idx}.vnnlib"
        text = property_text(x_l[k], x_u[k], int(labels[k]), artifact.num_classes,
                             comment=f"VeriSparse: sample {idx}, label {int(labels[k])}, L-inf eps {eps} "
                                     f"clipped to [0, 1]\nunsafe region: another class scores at least as high")
        atomic_write(out / name, lambda f, t=text: f.write(t), mode="w")
        rows.append(f"model.onnx,{name},{timeout:g}")
    atomic_write(out / "instances.csv", lambda f: f.write("\n".join(rows) + "\n"), mode="w")
    return len(rows)


def _checkpoint_to_onnx(artifact, path):
    from verisparse.exporter.fold import fold
    from verisparse.exporter.onnx_export import save_onnx, to_onnx
    from verisparse.trainer.train import load_run
    model, cfg, ds = load_run(artifact.path.parent)
    save_onnx(to_onnx(fold(model, ds.input_shape), ds.input_shape, dict(eps=cfg.eps, dataset=cfg.dataset)), path)
