"""verisparse export: run directory -> model.onnx, model_int8.tflite and export.json.

Every artifact is built and checked in memory first; only when all checks pass are the files
written (each atomically), so a failed export leaves the previous artifacts untouched."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write, sha256_file, write_json
from verisparse.int8_runtime import quantize
from verisparse.trainer.train import load_run

from .fold import fold, layer_table
from .int8_parity import int8_parity, saturation
from .onnx_export import OPSET, onnx_max_error, to_onnx
from .tflite_export import convert_int8, to_nhwc

# Max |logit difference| between masked, folded and ONNX models, relative to the logit scale
# once logits exceed 1: float32 keeps ~7 digits, and two correct summation orders of logits
# near 30 already differ by ~1e-5 absolute (6 ULPs).
PARITY_TOL = 1e-5
MIN_CALIBRATION = 32  # fewer samples give activation ranges that the next input overflows


def _totals(rows):
    return {k: sum(r[k] for r in rows) for k in ("params", "nonzero_weights", "dense_macs", "effective_macs")}


def _calibration_set(x_train: torch.Tensor, n: int, seed: int) -> np.ndarray:
    if not MIN_CALIBRATION <= n <= len(x_train):
        raise VeriSparseError(f"--calibration must be between {MIN_CALIBRATION} and the {len(x_train)} "
                              f"training samples; got {n}")
    idx = np.random.default_rng(seed).choice(len(x_train), n, replace=False)
    return x_train[np.sort(idx)].numpy()


def export_run(run_dir, calibration: int = 500, progress=lambda msg: None) -> dict:
    run = Path(run_dir)
    model, cfg, ds = load_run(run)
    in_shape = ds.input_shape
    calib = _calibration_set(ds.x_train, calibration, cfg.seed)
    progress("folding")
    folded = fold(model, in_shape)
    with torch.no_grad():
        logits = model(ds.x_test)
        fold_err = float((folded(ds.x_test) - logits).abs().max())
    tol = PARITY_TOL * max(1.0, float(logits.abs().max()))
    if fold_err > tol:
        raise VeriSparseError(f"folding changed the outputs by {fold_err:.2e} (> {tol:.2e}); not exporting")

    progress("ONNX")
    ckpt_sha = sha256_file(run / "checkpoint.pt")
    meta = dict(eps=cfg.eps, dataset=cfg.dataset, arch=cfg.arch, input_shape=json.dumps(list(in_shape)),
                input_range="[0, 1]", class_names=json.dumps(ds.classes), checkpoint_sha256=ckpt_sha,
                structure=cfg.structure, sparsity=cfg.sparsity)
    onnx_bytes = to_onnx(folded, in_shape, meta).SerializeToString()
    onnx_err = onnx_max_error(onnx_bytes, folded, ds.x_test)
    if onnx_err > tol:
        raise VeriSparseError(f"ONNX Runtime differs from torch by {onnx_err:.2e} (> {tol:.2e}); not exporting")

    progress(f"int8 TFLite (calibrating on {calibration} training samples)")
    tflite = convert_int8(folded, in_shape, calib)
    progress("int8 parity on the test split (LiteRT reference, LiteRT XNNPACK, TFLM)")
    parity8, io = int8_parity(tflite, folded, ds.x_test, ds.y_test)
    if parity8["litert_vs_tflm_differing_outputs"]:
        raise VeriSparseError(f"LiteRT and TFLM disagree on {parity8['litert_vs_tflm_differing_outputs']} int8 "
                              "outputs of the exported model; not exporting (please report this)")
    sat = saturation(tflite, quantize(to_nhwc(calib), io["input"]["scale"], io["input"]["zero_point"]))

    before, after = layer_table(model, in_shape), layer_table(folded, in_shape)
    atomic_write(run / "model.onnx", lambda f: f.write(onnx_bytes))
    atomic_write(run / "model_int8.tflite", lambda f: f.write(tflite))
    report = dict(
        checkpoint_sha256=ckpt_sha, dataset=cfg.dataset, arch=cfg.arch, eps=cfg.eps,
        input_shape=list(in_shape), input_range=[0.0, 1.0], classes=ds.classes,
        layers_before=before, layers_after=after, totals_before=_totals(before), totals_after=_totals(after),
        parity=dict(test_samples=len(ds.y_test), fold_max_abs_error=fold_err, onnx_max_abs_error=onnx_err,
                    tolerance=tol, max_abs_logit=float(logits.abs().max()), int8=parity8),
        onnx=dict(file="model.onnx", sha256=sha256_file(run / "model.onnx"), bytes=len(onnx_bytes),
                  opset=OPSET, dynamic_batch=True),
        tflite=dict(file="model_int8.tflite", sha256=sha256_file(run / "model_int8.tflite"), bytes=len(tflite),
                    layout="NHWC", input=io["input"], output=io["output"],
                    input_quantization="q = clamp(round_half_away_from_zero(x / scale) + zero_point, -128, 127), "
                                       "x in [0, 1] in NHWC order",
                    calibration_samples=calibration, calibration_saturation=sat),
    )
    write_json(run / "export.json", report)
    return report
