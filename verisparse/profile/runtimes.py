"""The runtimes a Pi can deploy with, behind one small interface: load, then run one input."""
from __future__ import annotations

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.int8_runtime import litert_module

RUNTIMES = ("litert", "litert-ref", "onnxruntime")
# which artifact kind each runtime runs
KIND = {"litert": "tflite", "litert-ref": "tflite", "onnxruntime": "onnx"}
# the reference kernels are single-threaded: one row, whatever --threads says
THREADED = {"litert": True, "litert-ref": False, "onnxruntime": True}

_LITERT_ERRORS = (ValueError, RuntimeError, UnicodeDecodeError, IndexError)


class LiteRT:
    """LiteRT with its default resolver (XNNPACK on arm64 and x86) or the reference kernels."""

    def __init__(self, data: bytes, reference: bool, threads: int):
        m = litert_module()
        kind = m.OpResolverType.BUILTIN_REF if reference else m.OpResolverType.AUTO
        try:
            self.it = m.Interpreter(model_content=data, experimental_op_resolver_type=kind, num_threads=threads)
            self.it.allocate_tensors()
        except _LITERT_ERRORS as e:
            raise VeriSparseError(f"LiteRT cannot load this model: {str(e)[:300]}") from None
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.input_shape = tuple(int(v) for v in self.inp["shape"])
        self.input_dtype = np.dtype(self.inp["dtype"])

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            self.it.set_tensor(self.inp["index"], x)
            self.it.invoke()
        except _LITERT_ERRORS as e:
            raise VeriSparseError(f"LiteRT cannot run this model: {str(e)[:300]}") from None
        return self.it.get_tensor(self.out["index"])


class OnnxRuntime:
    def __init__(self, data: bytes, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise VeriSparseError("onnxruntime is not installed: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad model
            raise VeriSparseError(f"onnxruntime cannot load this model: {str(e)[:300]}") from None
        i = self.s.get_inputs()[0]
        self.name = i.name
        # a symbolic batch dimension runs as batch 1
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
        self.input_dtype = np.dtype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.s.run(None, {self.name: x})[0]


def onnxruntime_installed() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def load(runtime: str, data: bytes, threads: int):
    if runtime == "onnxruntime":
        return OnnxRuntime(data, threads)
    return LiteRT(data, reference=runtime == "litert-ref", threads=threads)


def versions() -> dict:
    """Runtime package versions, for the record (absent ones left out)."""
    from importlib import metadata
    out = {}
    for dist in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
