"""Running a full-int8 .tflite: input quantization and the two reference interpreters.

LiteRT (`ai_edge_litert`, or `tflite_runtime` on images that only have that) is what a
Raspberry Pi runs; the TFLM Python interpreter is the microcontroller runtime. Both are the
ground truth that the exporter, the firmware and the int8 verifier are held to."""
from __future__ import annotations

import numpy as np

from verisparse.errors import VeriSparseError


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's QUANTIZE: round half away from zero, add the zero point, clamp to int8."""
    v = np.asarray(x, dtype=np.float64) / scale
    r = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(r + zero_point, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float64) - zero_point) * scale


def litert_module():
    """The TFLite interpreter module: ai_edge_litert, else tflite_runtime (older Pi images
    with NumPy 1 have only that one)."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError as e:
            raise VeriSparseError("no TFLite interpreter: pip install ai-edge-litert "
                                  "(or tflite-runtime beside NumPy 1)") from e
    return interpreter


def litert(data: bytes, reference: bool = True, keep_tensors: bool = False, num_threads: int | None = None):
    """A LiteRT interpreter; reference=True picks the builtin reference kernels (no XNNPACK),
    whose integer arithmetic is the one TFLM and the firmware implement."""
    m = litert_module()
    kind = m.OpResolverType.BUILTIN_REF if reference else m.OpResolverType.AUTO
    try:
        it = m.Interpreter(model_content=data, experimental_op_resolver_type=kind,
                           experimental_preserve_all_tensors=keep_tensors, num_threads=num_threads)
        it.allocate_tensors()
    except _LITERT_ERRORS as e:
        raise VeriSparseError(f"LiteRT cannot load this model: {str(e)[:300]}") from None
    return it


# what LiteRT raises for a model it rejects at load, prepare or invoke time (a corrupt
# tensor name surfaces as UnicodeDecodeError)
_LITERT_ERRORS = (ValueError, RuntimeError, UnicodeDecodeError, IndexError)


def run_litert(data: bytes, q: np.ndarray, reference: bool = True) -> np.ndarray:
    """int8 outputs for a batch of int8 inputs (one invoke per sample: the model's batch is 1)."""
    it = litert(data, reference)
    try:
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        res = []
        for row in q:
            it.set_tensor(inp["index"], row[None])
            it.invoke()
            res.append(it.get_tensor(out["index"])[0].copy())
    except _LITERT_ERRORS as e:
        raise VeriSparseError(f"LiteRT cannot run this model: {str(e)[:300]}") from None
    return np.stack(res)


def run_tflm(data: bytes, q: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime
    m = runtime.Interpreter.from_bytes(data)
    res = []
    for row in q:
        m.set_input(row[None], 0)
        m.invoke()
        res.append(m.get_output(0)[0].copy())
    return np.stack(res)


def io_quantization(data: bytes) -> dict:
    """Input and output scale, zero point, dtype and shape, as LiteRT reads them."""
    it = litert(data)
    info = {}
    for key, d in (("input", it.get_input_details()[0]), ("output", it.get_output_details()[0])):
        scale, zp = d["quantization"]
        if d["dtype"] != np.int8 or scale == 0:
            raise VeriSparseError(f"the model's {key} is {np.dtype(d['dtype']).name}, not quantized int8")
        info[key] = dict(scale=float(scale), zero_point=int(zp), dtype="int8", shape=[int(v) for v in d["shape"]])
    return info
