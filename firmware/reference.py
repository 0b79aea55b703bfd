"""What the interpreters say the firmware must print: TFLM (the microcontroller runtime) and
LiteRT with its reference kernels, for the same int8 test vectors.

Where the .tflite takes float input, the interpreters get the float that quantizes back to
the vector exactly, and the int8 tensor next to DEQUANTIZE is read as the output (both
interpreters keep all tensors for that)."""
from __future__ import annotations

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.int8_runtime import litert

from .lower import Program


def _feed(prog: Program, q: np.ndarray) -> np.ndarray:
    if not prog.float_input:
        return q[None]
    t = prog.input
    return ((q.astype(np.float32) - np.float32(t.zero_point[0])) * np.float32(t.scale[0]))[None]


def _check_quantized(prog, got, q, who):
    if prog.float_input and not np.array_equal(got.reshape(q.shape), q):
        raise VeriSparseError(f"{who}: the model's QUANTIZE did not reproduce the int8 test vector")


def run_tflm(data: bytes, prog: Program, vectors: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    keep = prog.float_input or prog.float_output
    cfg = runtime.InterpreterConfig.kPreserveAllTensors if keep else runtime.InterpreterConfig.kAllocationRecording
    m = runtime.Interpreter.from_bytes(data, intrepreter_config=cfg)
    res = []
    for q in vectors:
        m.set_input(_feed(prog, q), 0)
        m.invoke()
        if prog.float_input:
            _check_quantized(prog, m.GetTensor(prog.input.index, 0)["tensor_data"], q, "TFLM")
        out = m.GetTensor(prog.output.index, 0)["tensor_data"] if prog.float_output else m.get_output(0)
        res.append(np.array(out, np.int8).ravel())
    return np.stack(res)


def run_litert(data: bytes, prog: Program, vectors: np.ndarray) -> np.ndarray:
    it = litert(data, reference=True, keep_tensors=prog.float_input or prog.float_output)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    res = []
    for q in vectors:
        it.set_tensor(inp, _feed(prog, q))
        it.invoke()
        if prog.float_input:
            _check_quantized(prog, it.get_tensor(prog.input.index), q, "LiteRT")
        res.append(np.array(it.get_tensor(prog.output.index if prog.float_output else out), np.int8).ravel())
    return np.stack(res)
