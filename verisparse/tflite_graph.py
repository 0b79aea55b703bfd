"""A bounds-checked reader for .tflite flatbuffers, without TensorFlow.

Shared by the firmware generator and the integer-exact int8 verifier. Every read checks its
offset against the file, so a truncated or hostile file raises VeriSparseError instead of
crashing; flatbuffer offsets only point forward from where they are stored, vectors are
checked to fit before they are read, and the schema's nesting is fixed, so parsing ends.

Only the main subgraph (subgraph 0) is read. Field numbers follow TFLite's schema.fbs.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import VeriSparseError

# BuiltinOperator, in code order (schema.fbs); names make error messages say which op.
_OP_NAMES = """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE EMBEDDING_LOOKUP FLOOR
FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D LOCAL_RESPONSE_NORMALIZATION LOGISTIC
LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1 RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH
SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN
GATHER BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM
STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN
TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN
FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV
REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU SQUARED_DIFFERENCE
MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG
QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND
SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO
RFFT2D CONV_3D IMAG REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL BUCKETIZE
RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX
UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT
""".split()

# TensorType -> numpy dtype; types without a numpy equivalent are named in the error.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
           8: np.complex64, 9: np.int8, 10: np.float64, 11: np.complex128, 12: np.uint64, 15: np.uint32,
           16: np.uint16}
_TYPE_NAMES = {5: "STRING", 13: "RESOURCE", 14: "VARIANT", 17: "INT4", 18: "BFLOAT16", 19: "INT2", 20: "UINT4"}

_ACTIVATIONS = ["NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT"]
_PADDINGS = ["SAME", "VALID"]


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple
    dtype: np.dtype
    scale: np.ndarray  # float64; empty when not quantized, else length 1 or one per channel
    zero_point: np.ndarray  # int64, same length as scale
    quantized_dimension: int
    data: np.ndarray | None  # constant contents (read-only view), None for activations


@dataclass
class Operator:
    opcode: str  # "CONV_2D", ...; custom ops read "CUSTOM:<name>"
    inputs: list[int]  # -1 = optional input absent
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]


class _Corrupt(Exception):
    pass


class _Buf:
    def __init__(self, data: bytes):
        self.data = data
        self.n = len(data)

    def need(self, off, size):
        if off < 0 or size < 0 or off + size > self.n:
            raise _Corrupt(f"read of {size} bytes at offset {off} runs past the end ({self.n} bytes)")

    def scalar(self, fmt, off):
        self.need(off, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.data, off)[0]

    def table(self, off):
        return _Table(self, off)


class _Table:
    """A flatbuffer table at absolute offset pos; fields by schema number."""

    def __init__(self, buf: _Buf, pos: int):
        self.buf, self.pos = buf, pos
        self.vt = pos - buf.scalar("i", pos)
        self.vt_size = buf.scalar("H", self.vt)
        if self.vt_size < 4 or self.vt_size % 2:
            raise _Corrupt(f"bad vtable size {self.vt_size} at offset {self.vt}")
        buf.need(self.vt, self.vt_size)

    def _field(self, i):
        """Absolute offset of field i, or None when the field is absent."""
        slot = 4 + 2 * i
        if slot + 2 > self.vt_size:
            return None
        rel = self.buf.scalar("H", self.vt + slot)
        return self.pos + rel if rel else None

    def scalar(self, i, fmt, default):
        off = self._field(i)
        return default if off is None else self.buf.scalar(fmt, off)

    def _deref(self, i):
        off = self._field(i)
        return None if off is None else off + self.buf.scalar("I", off)

    def table(self, i):
        off = self._deref(i)
        return None if off is None else self.buf.table(off)

    def vector(self, i, dtype):
        """Read-only numpy view of a vector of scalars; None when absent."""
        off = self._deref(i)
        if off is None:
            return None
        n = self.buf.scalar("I", off)
        dtype = np.dtype(dtype).newbyteorder("<")
        self.buf.need(off + 4, n * dtype.itemsize)
        return np.frombuffer(self.buf.data, dtype, n, off + 4)

    def tables(self, i):
        off = self._deref(i)
        if off is None:
            return []
        n = self.buf.scalar("I", off)
        self.buf.need(off + 4, 4 * n)
        return [self.buf.table(off + 4 + 4 * k + self.buf.scalar("I", off + 4 + 4 * k)) for k in range(n)]

    def string(self, i):
        raw = self.vector(i, np.uint8)
        return "" if raw is None else raw.tobytes().decode("utf-8", "replace")


def _ints(vec):
    return [] if vec is None else [int(v) for v in vec]


def _options(opcode: str, op: _Table) -> dict:
    """The builtin options of the ops VeriSparse reads, under plain names, with schema defaults."""
    o = op.table(4)
    kind = op.scalar(3, "B", 0)

    def get(i, fmt, default):
        return default if o is None else o.scalar(i, fmt, default)

    def act(i):
        a = get(i, "b", 0)
        return _ACTIVATIONS[a] if 0 <= a < len(_ACTIVATIONS) else f"UNKNOWN_{a}"

    def pad():
        p = get(0, "b", 0)
        return _PADDINGS[p] if 0 <= p < len(_PADDINGS) else f"UNKNOWN_{p}"

    expected = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 2, "AVERAGE_POOL_2D": 5, "MAX_POOL_2D": 5, "L2_POOL_2D": 5,
                "FULLY_CONNECTED": 8, "SOFTMAX": 9, "CONCATENATION": 10, "ADD": 11, "RESHAPE": 17, "SUB": 28,
                "MUL": 21, "GATHER": 23, "STRIDED_SLICE": 32, "PACK": 59, "LEAKY_RELU": 75}.get(opcode)
    if expected is None:
        return {}
    if kind not in (0, expected):
        raise _Corrupt(f"{opcode} operator carries options of union type {kind} (expected {expected})")
    if opcode == "CONV_2D":
        return dict(padding=pad(), stride_w=get(1, "i", 0), stride_h=get(2, "i", 0), fused_activation=act(3),
                    dilation_w=get(4, "i", 1), dilation_h=get(5, "i", 1))
    if opcode == "DEPTHWISE_CONV_2D":
        return dict(padding=pad(), stride_w=get(1, "i", 0), stride_h=get(2, "i", 0), depth_multiplier=get(3, "i", 0),
                    fused_activation=act(4), dilation_w=get(5, "i", 1), dilation_h=get(6, "i", 1))
    if opcode.endswith("POOL_2D"):
        return dict(padding=pad(), stride_w=get(1, "i", 0), stride_h=get(2, "i", 0), filter_w=get(3, "i", 0),
                    filter_h=get(4, "i", 0), fused_activation=act(5))
    if opcode == "FULLY_CONNECTED":
        fmt = get(1, "b", 0)
        return dict(fused_activation=act(0), weights_format={0: "DEFAULT", 1: "SHUFFLED4x16INT8"}.get(fmt, f"UNKNOWN_{fmt}"),
                    keep_num_dims=bool(get(2, "B", 0)), asymmetric_quantize_inputs=bool(get(3, "B", 0)))
    if opcode in ("ADD", "SUB", "MUL"):
        return dict(fused_activation=act(0))
    if opcode == "SOFTMAX":
        return dict(beta=get(0, "f", 0.0))
    if opcode == "CONCATENATION":
        return dict(axis=get(0, "i", 0), fused_activation=act(1))
    if opcode == "GATHER":
        return dict(axis=get(0, "i", 0), batch_dims=get(1, "i", 0))
    if opcode == "STRIDED_SLICE":
        return dict(begin_mask=get(0, "i", 0), end_mask=get(1, "i", 0), ellipsis_mask=get(2, "i", 0),
                    new_axis_mask=get(3, "i", 0), shrink_axis_mask=get(4, "i", 0), offset=bool(get(5, "B", 0)))
    if opcode == "PACK":
        return dict(values_count=get(0, "i", 0), axis=get(1, "i", 0))
    if opcode == "LEAKY_RELU":
        return dict(alpha=get(0, "f", 0.0))
    shape = None if o is None else o.vector(0, np.int32)
    return dict(new_shape=None if shape is None else tuple(int(s) for s in shape))


def _buffer_bytes(buf: _Buf, b: _Table | None):
    """Contents of a Buffer table: inline data, or (models over 2 GB) an offset/size into the file."""
    if b is None:
        return None
    data = b.vector(0, np.uint8)
    offset, size = b.scalar(1, "Q", 0), b.scalar(2, "Q", 0)
    if offset > 1:  # 0 and 1 mean "no external data" in the schema
        buf.need(offset, size)
        return np.frombuffer(buf.data, np.uint8, size, offset)
    return data if data is not None and len(data) else None


def _tensor(buf, t: _Table, index, buffers) -> Tensor:
    name = t.string(3)
    shape = tuple(_ints(t.vector(0, np.int32)))
    if any(d < 0 for d in shape):
        raise _Corrupt(f"tensor {index} ({name}) has a negative dimension {shape}")
    code = t.scalar(1, "b", 0)
    if code not in _DTYPES:
        raise VeriSparseError(f"tensor {index} ({name}) has type {_TYPE_NAMES.get(code, code)}, which VeriSparse "
                              "does not read; export a model with int8/int32/float32 tensors")
    dtype = np.dtype(_DTYPES[code])
    q = t.table(4)
    scale = np.zeros(0, np.float64)
    zp = np.zeros(0, np.int64)
    qdim = 0
    if q is not None:
        s, z = q.vector(2, np.float32), q.vector(3, np.int64)
        if s is not None and len(s):
            with np.errstate(invalid="ignore"):  # a signalling NaN is refused just below, not warned about
                scale = s.astype(np.float64)
            zp = np.zeros(len(s), np.int64) if z is None or not len(z) else z.astype(np.int64)
            if len(zp) != len(scale):
                raise _Corrupt(f"tensor {index} ({name}) has {len(scale)} scales but {len(zp)} zero points")
        qdim = q.scalar(6, "i", 0)
        if len(scale) > 1 and not (0 <= qdim < len(shape) and shape[qdim] == len(scale)):
            raise _Corrupt(f"tensor {index} ({name}): {len(scale)} scales do not match dimension {qdim} of {shape}")
    if not np.isfinite(scale).all() or (scale < 0).any():
        bad = scale[~np.isfinite(scale) | (scale < 0)][0]
        raise _Corrupt(f"tensor {index} ({name}) has scale {bad:g}; quantization scales must be finite and positive")
    bidx = t.scalar(2, "I", 0)
    if bidx >= len(buffers):
        raise _Corrupt(f"tensor {index} ({name}) refers to buffer {bidx} of {len(buffers)}")
    raw = _buffer_bytes(buf, buffers[bidx]) if bidx else None
    data = None
    if raw is not None:
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            raise _Corrupt(f"tensor {index} ({name}) of shape {shape} and type {dtype} has {len(raw)} bytes of data")
        data = raw.view(dtype.newbyteorder("<")).reshape(shape)
    elif (scale == 0).any():  # constants may hold an all-zero channel; activations need a scale to divide by
        raise _Corrupt(f"tensor {index} ({name}) has scale 0; quantization scales must be finite and positive")
    return Tensor(index, name, shape, dtype, scale, zp, qdim, data)


def _parse(data: bytes) -> Graph:
    buf = _Buf(data)
    if buf.n < 8 or data[4:8] != b"TFL3":
        raise VeriSparseError("not a TFLite model (no 'TFL3' identifier); pass a .tflite flatbuffer")
    model = buf.table(buf.scalar("I", 0))
    codes = []
    for c in model.tables(1):
        code = max(c.scalar(0, "b", 0), c.scalar(3, "i", 0))  # old files use the deprecated byte field
        name = _OP_NAMES[code] if 0 <= code < len(_OP_NAMES) else f"BUILTIN_{code}"
        codes.append(f"CUSTOM:{c.string(1)}" if name == "CUSTOM" else name)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise _Corrupt("the model has no subgraph")
    buffers = [b for b in model.tables(4)]
    sg = subgraphs[0]
    tensors = [_tensor(buf, t, i, buffers) for i, t in enumerate(sg.tables(0))]
    n = len(tensors)

    def check(idx, what, allow_absent=False):
        for i in idx:
            if not (-1 if allow_absent else 0) <= i < n:
                raise _Corrupt(f"{what} refers to tensor {i} of {n}")
        return idx

    operators = []
    for k, op in enumerate(sg.tables(3)):
        ci = op.scalar(0, "I", 0)
        if ci >= len(codes):
            raise _Corrupt(f"operator {k} uses opcode {ci} of {len(codes)}")
        ins = check(_ints(op.vector(1, np.int32)), f"operator {k} ({codes[ci]})", allow_absent=True)
        outs = check(_ints(op.vector(2, np.int32)), f"operator {k} ({codes[ci]})")
        operators.append(Operator(codes[ci], ins, outs, _options(codes[ci], op)))
    return Graph(tensors, operators, check(_ints(sg.vector(1, np.int32)), "subgraph inputs"),
                 check(_ints(sg.vector(2, np.int32)), "subgraph outputs"))


def spatial_paddings(g: Graph, op: Operator, where: str) -> tuple[int, int, int, int]:
    """A PAD op's (top, bottom, left, right) on an NHWC tensor; refuses the rest (paddings
    that are not a constant 4 x 2 tensor, batch or channel padding, negative amounts)."""
    pads = g.tensors[op.inputs[1]].data if len(op.inputs) == 2 else None
    if pads is None or pads.shape != (4, 2):
        raise VeriSparseError(f"{where}: only PAD by a constant 4 x 2 paddings tensor is supported")
    pads = pads.astype(np.int64)
    if pads[0].any() or pads[3].any() or (pads < 0).any():
        raise VeriSparseError(f"{where}: only non-negative padding of height and width is supported")
    return int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1])


def read_tflite(path_or_bytes) -> Graph:
    """Parse a .tflite file (path or bytes) into a Graph; bad files raise VeriSparseError."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, where = bytes(path_or_bytes), "the TFLite bytes"
    else:
        where = str(path_or_bytes)
        try:
            data = Path(path_or_bytes).read_bytes()
        except OSError as e:
            raise VeriSparseError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        return _parse(data)
    except VeriSparseError:
        raise
    except (_Corrupt, struct.error, ValueError, OverflowError, IndexError, MemoryError) as e:
        raise VeriSparseError(f"{where} is not a valid TFLite flatbuffer ({e}); re-export the model") from None


def check_quantization(t: Tensor, where: str):
    """Refuses quantization parameters no int8 kernel can apply: scales that are not finite
    and positive, zero points outside the tensor's integer range."""
    if len(t.scale) and not (np.isfinite(t.scale) & (t.scale > 0)).all():
        bad = t.scale[~(np.isfinite(t.scale) & (t.scale > 0))][0]
        raise VeriSparseError(f"{where}: tensor {t.name!r} has scale {bad:g}; quantization scales must be finite "
                              "and positive: the file is corrupt, re-export the model")
    outside = (t.zero_point < -128) | (t.zero_point > 127)
    if t.dtype == np.int8 and outside.any():
        raise VeriSparseError(f"{where}: int8 tensor {t.name!r} has zero point {int(t.zero_point[outside][0])}, "
                              "outside [-128, 127]: the file is corrupt, re-export the model")
