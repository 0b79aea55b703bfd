"""How the int8 model compares with the float model, and how the interpreters compare."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from verisparse.int8_runtime import io_quantization, litert, quantize, run_litert, run_tflm

from .tflite_export import to_nhwc

MAX_ACC_DROP = 0.01      # int8 accuracy may be at most 1 point below float
MIN_AGREEMENT = 0.99     # top-1 agreement between int8 and float
DATA_MOVEMENT = {"RESHAPE", "PAD"}


def int8_parity(data: bytes, folded: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy and agreement on (x, y), and whether LiteRT's reference kernels, LiteRT's
    default (XNNPACK) kernels and TFLM give the same int8 outputs."""
    io = io_quantization(data)
    q = quantize(to_nhwc(x.numpy()), io["input"]["scale"], io["input"]["zero_point"])
    ref = run_litert(data, q)
    tflm = run_tflm(data, q)
    fast = run_litert(data, q, reference=False)
    with torch.no_grad():
        float_logits = folded(x).numpy()
    float_pred = float_logits.argmax(1)
    int8_pred = ref.argmax(1)
    yn = y.numpy()
    acc_f, acc_q = float((float_pred == yn).mean()), float((int8_pred == yn).mean())
    agree = float((float_pred == int8_pred).mean())
    # Rows whose two best float logits are closer than one int8 output step: the int8 output
    # cannot order them, so disagreement there says nothing about the conversion.
    top2 = np.sort(float_logits, axis=1)[:, -2:]
    resolvable = (top2[:, 1] - top2[:, 0]) > io["output"]["scale"]
    fast_rows = int((fast != ref).any(1).sum())
    return dict(
        samples=len(yn), float_accuracy=acc_f, int8_accuracy=acc_q, top1_agreement=agree,
        unresolvable_rows=int((~resolvable).sum()),
        top1_agreement_resolvable=float((float_pred == int8_pred)[resolvable].mean()),
        accuracy_ok=acc_q >= acc_f - MAX_ACC_DROP, agreement_ok=agree >= MIN_AGREEMENT,
        litert_vs_tflm_differing_outputs=int((ref != tflm).sum()),
        litert_xnnpack_differing_rows=fast_rows,
        litert_xnnpack_max_lsb=int(np.abs(fast.astype(int) - ref).max()),
    ), io


def saturation(data: bytes, q_samples: np.ndarray) -> dict:
    """Activations pinned at the int8 range's ends while the calibration samples run.

    Only ops that compute count: a RESHAPE of the input repeats the input's own range.
    127 always means the real value may have been larger. -128 counts only where it stands
    for a negative value: after a fused ReLU the zero point is -128 and -128 is just 0."""
    it = litert(data, keep_tensors=True)
    inp = it.get_input_details()[0]
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    outs = [(op["op_name"], t) for op in it._get_ops_details() for t in op["outputs"]
            if op["op_name"] not in DATA_MOVEMENT]
    counts = {t: [0, 0] for _, t in outs}
    for row in q_samples:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        for _, t in outs:
            v = it.get_tensor(t)
            if v.dtype != np.int8:
                continue
            zp = tensors[t]["quantization"][1]
            counts[t][0] += int((v == 127).sum()) + (int((v == -128).sum()) if zp > -128 else 0)
            counts[t][1] += v.size
    layers = [dict(op=name, tensor=tensors[t]["name"], saturated=counts[t][0], values=counts[t][1])
              for name, t in outs if counts[t][1]]
    total = sum(r["saturated"] for r in layers)
    values = sum(r["values"] for r in layers)
    return dict(samples=len(q_samples), saturated=total, values=values,
                fraction=total / max(values, 1), layers=layers)
