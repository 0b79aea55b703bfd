"""Static-shape folding: shape arithmetic evaluated at generation time.

A model converted with a dynamic batch (TF 2.x's default for Keras 3) computes some shapes at
run time, e.g. Flatten becomes SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE. The firmware runs
batch 1 with every shape stored in the file, so such ops only ever produce the same small
int32 constants: they are evaluated here, in order, and their outputs become constants that
the ops reading them (RESHAPE's new shape) see like any other. An op is folded only when it
yields a non-quantized int32 tensor from constants (SHAPE: from any tensor's stored shape).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.tflite_graph import Graph, Operator

FOLDABLE = ("SHAPE", "STRIDED_SLICE", "PACK", "GATHER", "CONCATENATION", "ADD", "SUB", "MUL", "FLOOR_DIV")


def _strided_slice(x: np.ndarray, begin, end, strides, o: dict, where) -> np.ndarray:
    if o.get("ellipsis_mask") or o.get("new_axis_mask") or o.get("offset"):
        raise VeriSparseError(f"{where}: STRIDED_SLICE with an ellipsis, new-axis or offset mask on a shape "
                              "tensor is not supported; give the model a fixed batch size of 1 before converting")
    index = []
    for d in range(x.ndim):
        b, e, s = (int(begin[d]), int(end[d]), int(strides[d])) if d < len(begin) else (0, x.shape[d], 1)
        if s == 0:
            raise VeriSparseError(f"{where}: STRIDED_SLICE stride 0; the model is corrupt")
        if o.get("shrink_axis_mask", 0) >> d & 1:
            index.append(b)
            continue
        index.append(slice(None if o.get("begin_mask", 0) >> d & 1 else b,
                           None if o.get("end_mask", 0) >> d & 1 else e, s))
    return np.asarray(x[tuple(index)])


def _evaluate(op: Operator, vals: list, shapes: list, where) -> np.ndarray:
    o = op.options
    if op.opcode == "SHAPE":
        return np.array(shapes[0], np.int32)
    if op.opcode == "STRIDED_SLICE":
        return _strided_slice(vals[0], *vals[1:4], o, where)
    if op.opcode == "PACK":
        return np.stack(vals, axis=o.get("axis", 0))
    if op.opcode == "GATHER":
        if o.get("batch_dims", 0):
            raise VeriSparseError(f"{where}: GATHER with batch_dims on a shape tensor is not supported")
        return np.take(vals[0], vals[1], axis=o.get("axis", 0))
    if op.opcode == "CONCATENATION":
        return np.concatenate(vals, axis=o.get("axis", 0))
    if o.get("fused_activation", "NONE") != "NONE":
        raise VeriSparseError(f"{where}: {op.opcode} with a fused activation on a shape tensor is not supported")
    a, b = (v.astype(np.int64) for v in vals)
    if op.opcode == "FLOOR_DIV" and (b == 0).any():
        raise VeriSparseError(f"{where}: FLOOR_DIV by zero in shape arithmetic; the model is corrupt")
    return {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "FLOOR_DIV": np.floor_divide}[op.opcode](a, b)


def fold_static_shapes(g: Graph) -> tuple[Graph, set]:
    """The graph with folded ops' outputs turned into constants, and the indices of those ops."""
    tensors = list(g.tensors)
    folded = set()
    for k, op in enumerate(g.operators):
        if op.opcode not in FOLDABLE or len(op.outputs) != 1 or not op.inputs or min(op.inputs) < 0:
            continue
        out = tensors[op.outputs[0]]
        ins = [tensors[i] for i in op.inputs]
        if out.dtype != np.int32 or len(out.scale) or out.data is not None:
            continue
        if op.opcode != "SHAPE" and any(t.data is None or t.dtype != np.int32 or len(t.scale) for t in ins):
            continue
        where = f"operator {k} ({op.opcode}, output {out.name!r})"
        try:
            value = _evaluate(op, [None if t.data is None else np.asarray(t.data) for t in ins],
                              [t.shape for t in ins], where)
        except (IndexError, ValueError, np.exceptions.AxisError) as e:
            raise VeriSparseError(f"{where}: the shape arithmetic fails on the stored shapes ({e}); the model is "
                                  "inconsistent: re-convert it with a fixed batch size of 1") from None
        if np.abs(value).max(initial=0) >= 2 ** 31 or tuple(value.shape) != tuple(out.shape):
            raise VeriSparseError(f"{where}: evaluates to {value.tolist()}, which does not fit its stored shape "
                                  f"{list(out.shape)} as int32; the model is inconsistent")
        tensors[out.index] = dataclasses.replace(out, data=value.astype(np.int32))
        folded.add(k)
    return dataclasses.replace(g, tensors=tensors), folded
