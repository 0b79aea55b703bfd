"""Import an ONNX graph into the bound IR (verify.ops) that the trainer uses.

Supported: a chain of Gemm, MatMul, Add, Sub, Mul, Div (with a constant operand), Conv,
Relu, Flatten, Reshape, BatchNormalization (inference), AveragePool, plus Constant and
Identity. "Chain" means every node reads the previous node's output and constants only;
branches (residual adds) are refused. The file is treated as hostile: any tensor stored as
external data is refused (its path could name any file on the disk), every constant must be
finite, every shape is checked against the limits before it is used, error messages name
shapes but never print a tensor's contents, and any failure is a VeriSparseError that names
the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from verisparse.errors import VeriSparseError

from . import ops
from .bounds import BoundedNet
from .limits import DEFAULTS, check_model

SUPPORTED = ("Gemm, MatMul, Add, Sub, Mul, Div (by constants), Conv, Relu, Flatten, Reshape, "
             "BatchNormalization, AveragePool, Constant, Identity")


@dataclass
class ImportedNet:
    net: BoundedNet
    in_shape: tuple
    num_classes: int
    input_name: str
    output_name: str
    metadata: dict = field(default_factory=dict)
    elements: int = 0  # activation elements of one sample, summed over the layers
    widest: int = 0  # elements of the largest activation of one sample


def load_onnx_proto(source):
    """Parse bytes or a path into a ModelProto; garbage, truncated or external-data files
    become a VeriSparseError (external data could point anywhere on the disk)."""
    import onnx
    from google.protobuf.message import DecodeError
    try:
        data = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    except OSError as e:
        raise VeriSparseError(f"cannot read ONNX file {source}: {e.strerror}") from None
    try:
        proto = onnx.load_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError, TypeError) as e:
        raise VeriSparseError(f"{_name(source)} is not a readable ONNX model ({type(e).__name__}); "
                              "re-export it with `verisparse export` or torch.onnx") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise VeriSparseError(f"{_name(source)} holds no ONNX graph")
    for what in _external_tensors(proto.graph):
        raise VeriSparseError(f"{what} uses external data, which VeriSparse never reads (it could name any file); "
                              "save the model with all tensors inside the file")
    return proto


def _external_tensors(graph):
    """Names of the tensors in graph (initializers, node attributes, subgraphs) stored externally."""
    from onnx import AttributeProto, TensorProto

    def external(t):
        return t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0
    for t in graph.initializer:
        if external(t):
            yield f"initializer {t.name[:100]!r}"
    for t in graph.sparse_initializer:
        if external(t.values) or external(t.indices):
            yield f"sparse initializer {t.values.name[:100]!r}"
    for node in graph.node:
        for a in node.attribute:
            where = f"attribute {a.name[:50]!r} of node {node.name[:50]!r} ({node.op_type[:50]})"
            tensors = [a.t] if a.type == AttributeProto.TENSOR else list(a.tensors)
            sparse = [a.sparse_tensor] if a.type == AttributeProto.SPARSE_TENSOR else list(a.sparse_tensors)
            if any(external(t) for t in tensors) or any(external(t.values) or external(t.indices) for t in sparse):
                yield where
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                yield from _external_tensors(g)


def _name(source):
    return "the ONNX bytes" if isinstance(source, (bytes, bytearray)) else str(source)


def import_onnx(source, limits=DEFAULTS) -> ImportedNet:
    proto = source if hasattr(source, "graph") else load_onnx_proto(source)
    return _Importer(proto, limits).run()


class _Importer:
    def __init__(self, proto, limits):
        self.proto, self.graph, self.limits = proto, proto.graph, limits
        self.consts = {t.name: self._array(t, f"initializer {t.name!r}") for t in self.graph.initializer}

    def _array(self, t, what):
        from onnx import TensorProto, numpy_helper
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            raise VeriSparseError(f"{what} uses external data, which VeriSparse never reads; save the model "
                                  "with all tensors inside the file")
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:  # malformed tensor protos raise many types
            raise VeriSparseError(f"{what} cannot be decoded: {type(e).__name__}") from None
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise VeriSparseError(f"{what} holds NaN or infinite values")
            return a.astype(np.float64)
        if a.dtype.kind in "iu":
            return a.astype(np.int64)
        raise VeriSparseError(f"{what} has unsupported element type {a.dtype}")

    def _input_shape(self):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise VeriSparseError(f"the graph must have exactly one non-constant input; it has "
                                  f"{[i.name for i in inputs]}")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(shape) < 2 or any(s is None or s <= 0 for s in shape[1:]) or shape[0] not in (None, 1):
            raise VeriSparseError(f"input {inputs[0].name!r} must have shape (batch, ...) with fixed "
                                  f"positive sample dimensions; it has {shape}")
        return inputs[0].name, tuple(shape[1:])

    def run(self) -> ImportedNet:
        if len(self.graph.output) != 1:
            raise VeriSparseError(f"the graph must have one output (the logits); it has {len(self.graph.output)}")
        input_name, in_shape = self._input_shape()
        self.sizes = []
        self._count(in_shape, "the input")
        cur, shape, result = input_name, in_shape, []
        for node in self.graph.node:
            where = f"node {node.name or '(unnamed)'} ({node.op_type})"
            if node.op_type == "Constant":
                self._constant(node, where)
                continue
            dyn = [i for i in node.input if i and i not in self.consts]
            if dyn != [cur] or len(node.output) < 1:
                raise VeriSparseError(f"{where}: the graph is not a chain (each node must read the previous "
                                      f"node's output and constants only); inputs {list(node.input)}")
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise VeriSparseError(f"{where}: unsupported op {node.op_type!r}; supported: {SUPPORTED}")
            try:
                new_ops, shape = handler(node, shape)
            except VeriSparseError as e:
                raise VeriSparseError(f"{where}: {e}") from None
            except (ValueError, IndexError, RuntimeError, TypeError, KeyError, OverflowError) as e:
                raise VeriSparseError(f"{where}: inconsistent shapes or attributes ({str(e)[:200]})") from None
            self._count(shape, where)
            for op in new_ops:
                _append(result, op)
            cur = node.output[0]
        if cur != self.graph.output[0].name:
            raise VeriSparseError(f"the graph output {self.graph.output[0].name!r} is not the end of the chain")
        if len(shape) != 1 or not result:
            raise VeriSparseError(f"the graph must end in a vector of class scores; it ends in shape {shape}")
        check_model(sum(self.sizes), shape[0], "the ONNX graph", self.limits)
        meta = {p.key: p.value for p in self.proto.metadata_props}
        return ImportedNet(BoundedNet(result), in_shape, shape[0], input_name, cur, meta, sum(self.sizes),
                           max(self.sizes))

    def _count(self, shape, where):
        """Add one activation's elements, refusing the graph as soon as the sum is over the limit."""
        self.sizes.append(int(np.prod(shape, dtype=np.float64)))
        if sum(self.sizes) > self.limits.max_elements:
            raise VeriSparseError(f"{where}: too large; the activations up to here need {sum(self.sizes):,} "
                                  f"elements per sample (this one has shape {tuple(shape)}), more than --max-elements "
                                  f"{self.limits.max_elements:,}; raise it if the model is meant to be that large")

    # --- helpers ------------------------------------------------------------------------

    def _constant(self, node, where):
        from onnx import helper
        attrs = {a.name: a for a in node.attribute}
        if "value" not in attrs:
            raise VeriSparseError(f"{where}: only Constant nodes with a tensor 'value' are supported")
        self.consts[node.output[0]] = self._array(helper.get_attribute_value(attrs["value"]), where)

    def _const(self, node, k):
        if len(node.input) <= k or not node.input[k]:
            return None
        return self.consts[node.input[k]]

    @staticmethod
    def _attrs(node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # --- one handler per op: (node, per-sample shape) -> ([ops], new per-sample shape) ----

    def _op_Identity(self, node, shape):
        return [], shape

    def _op_Relu(self, node, shape):
        return [ops.ReLU()], shape

    def _op_Flatten(self, node, shape):
        axis = self._attrs(node).get("axis", 1)
        if axis != 1:
            raise VeriSparseError(f"Flatten axis must be 1 (keep the batch axis); got {axis}")
        return [ops.Reshape(shape, (int(np.prod(shape)),))], (int(np.prod(shape)),)

    def _op_Reshape(self, node, shape):
        target = [int(v) for v in self._const(node, 1).reshape(-1)]
        if self._attrs(node).get("allowzero", 0):
            raise VeriSparseError("Reshape with allowzero=1 is not supported")
        full = (1,) + tuple(shape)
        target = [full[i] if v == 0 else v for i, v in enumerate(target)]  # 0 copies the input dim
        if not target or target[0] not in (1, -1) or target.count(-1) > 1:
            raise VeriSparseError(f"Reshape must keep the batch axis first; target {_dims(target)}")
        if target[0] == -1 and -1 in target[1:]:
            raise VeriSparseError(f"Reshape target {_dims(target)} is ambiguous")
        rest = target[1:]
        n = int(np.prod(shape))
        if -1 in rest:
            known = int(np.prod([v for v in rest if v != -1]))
            if known <= 0 or n % known:
                raise VeriSparseError(f"cannot reshape {shape} into {_dims(target)}")
            rest[rest.index(-1)] = n // known
        if any(v <= 0 for v in rest) or int(np.prod(rest)) != n:
            raise VeriSparseError(f"cannot reshape {shape} into {_dims(target)}")
        return [ops.Reshape(shape, rest)], tuple(rest)

    def _op_Gemm(self, node, shape):
        a = self._attrs(node)
        if a.get("transA", 0) or len(shape) != 1:
            raise VeriSparseError("Gemm needs a 2-D (batch, features) input and transA=0")
        W = self._const(node, 1)
        if W is None or W.ndim != 2:
            raise VeriSparseError("Gemm's B must be a 2-D constant")
        W = (W if a.get("transB", 0) else W.T) * a.get("alpha", 1.0)
        if W.shape[1] != shape[0]:
            raise VeriSparseError(f"Gemm weight {W.shape} does not fit input features {shape[0]}")
        C = self._const(node, 2)
        b = None if C is None else np.broadcast_to(C * a.get("beta", 1.0), (1, W.shape[0])).reshape(-1)
        return [ops.Linear(_t(W), None if b is None else _t(b))], (W.shape[0],)

    def _op_MatMul(self, node, shape):
        W = self._const(node, 1)
        if node.input[0] not in (self.consts.keys()) and W is not None and W.ndim == 2 and len(shape) == 1:
            if W.shape[0] != shape[0]:
                raise VeriSparseError(f"MatMul weight {W.shape} does not fit input features {shape[0]}")
            return [ops.Linear(_t(W.T), None)], (W.shape[1],)
        raise VeriSparseError("MatMul is supported as (batch, features) x constant 2-D matrix")

    def _elementwise(self, node, shape, make):
        """x op c or c op x with a constant c broadcastable to the sample shape."""
        k = 1 if node.input[0] not in self.consts else 0
        c = self.consts[node.input[k]]
        full = (1,) + tuple(shape)
        if c.ndim > len(full) or np.broadcast_shapes(c.shape, full) != full:
            raise VeriSparseError(f"constant of shape {c.shape} does not broadcast to (batch, *{shape})")
        c = np.broadcast_to(c.reshape((1,) * (len(full) - c.ndim) + c.shape), full)[0]
        scale, shift = make(c, const_first=(k == 0))
        return [ops.ElementwiseAffine(_t(scale), _t(shift))], shape

    def _op_Add(self, node, shape):
        return self._elementwise(node, shape, lambda c, const_first: (np.ones_like(c), c))

    def _op_Sub(self, node, shape):
        return self._elementwise(node, shape, lambda c, const_first: (-np.ones_like(c), c) if const_first
                                 else (np.ones_like(c), -c))

    def _op_Mul(self, node, shape):
        return self._elementwise(node, shape, lambda c, const_first: (c, np.zeros_like(c)))

    def _op_Div(self, node, shape):
        def make(c, const_first):
            if const_first:
                raise VeriSparseError("division by the input is not linear; only x / constant is supported")
            if (c == 0).any():
                raise VeriSparseError("division by zero in a constant")
            return 1.0 / c, np.zeros_like(c)
        return self._elementwise(node, shape, make)

    def _op_BatchNormalization(self, node, shape):
        a = self._attrs(node)
        if a.get("training_mode", 0) or len(node.output) > 1 and any(node.output[1:]):
            raise VeriSparseError("BatchNormalization must be in inference mode")
        gamma, beta, mean, var = (self._const(node, k) for k in (1, 2, 3, 4))
        if any(v is None or v.shape != (shape[0],) for v in (gamma, beta, mean, var)):
            raise VeriSparseError(f"BatchNormalization parameters must be constants of shape ({shape[0]},)")
        if (var + a.get("epsilon", 1e-5) <= 0).any():
            raise VeriSparseError("BatchNormalization variance + epsilon must be positive")
        scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        return [ops.ChannelAffine(_t(scale), _t(beta - mean * scale))], shape

    def _op_Conv(self, node, shape):
        a = self._attrs(node)
        W, b = self._const(node, 1), self._const(node, 2)
        if len(shape) != 3 or W is None or W.ndim != 4 or W.shape[1] != shape[0]:
            raise VeriSparseError(f"Conv needs a (C, H, W) input and a constant 4-D weight with C in-channels; "
                                  f"input {shape}, weight {None if W is None else W.shape}")
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise VeriSparseError("Conv with groups or dilations is not supported")
        if b is not None and b.shape != (W.shape[0],):
            raise VeriSparseError(f"Conv bias shape {b.shape} does not match {W.shape[0]} filters")
        kernel = tuple(a.get("kernel_shape", W.shape[2:]))
        if kernel != tuple(W.shape[2:]):
            raise VeriSparseError(f"kernel_shape {_dims(kernel)} disagrees with weight {W.shape}")
        stride = tuple(a.get("strides", [1, 1]))
        pad = self._pads(a, shape[1:], kernel, stride)
        out = _pool_out(shape[1:], kernel, stride, pad)
        op = ops.Conv2d(_t(W), None if b is None else _t(b), stride, pad, shape)
        return [op], (W.shape[0], *out)

    def _op_AveragePool(self, node, shape):
        a = self._attrs(node)
        if len(shape) != 3:
            raise VeriSparseError(f"AveragePool needs a (C, H, W) input; got {shape}")
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1, 1]))
        pad = self._pads(a, shape[1:], kernel, stride)
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise VeriSparseError("AveragePool with ceil_mode or dilations is not supported")
        if any(pad) and not a.get("count_include_pad", 0):
            raise VeriSparseError("padded AveragePool must have count_include_pad=1 (a fixed divisor)")
        out = _pool_out(shape[1:], kernel, stride, pad)
        return [ops.AvgPool2d(kernel, stride, pad, shape[0], shape)], (shape[0], *out)

    @staticmethod
    def _pads(a, hw, kernel, stride):
        """Symmetric (pad_h, pad_w); SAME_* auto padding is accepted when it is symmetric."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if len(kernel) != 2 or len(stride) != 2 or min(stride) < 1 or min(kernel) < 1:
            raise VeriSparseError(f"only 2-D kernels and positive strides are supported; got {_dims(kernel)}, "
                                  f"{_dims(stride)}")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(hw, kernel, stride)]
            if any(t % 2 for t in total):
                raise VeriSparseError(f"{auto} padding is asymmetric here; use explicit symmetric pads")
            return tuple(t // 2 for t in total)
        if auto == "VALID":
            return (0, 0)
        p = list(a.get("pads", [0, 0, 0, 0]))
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3] or min(p) < 0:
            raise VeriSparseError(f"only symmetric, non-negative pads are supported; got {_dims(p)}")
        return (p[0], p[1])


def _pool_out(hw, kernel, stride, pad):
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, pad))
    if min(out) < 1:
        raise VeriSparseError(f"kernel {kernel} does not fit the input {hw} with pads {pad}")
    return out


def _dims(values):
    """A shape-like list for a message: a long one is data, not a shape, and is not printed."""
    values = list(values)
    return str(values) if len(values) <= 8 else f"({len(values)} values)"


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _append(result, op):
    """Fold an elementwise affine into the Linear or elementwise affine before it: a MatMul+Add
    pair becomes one Linear, so the spec merges with the last layer (tighter bounds), and
    Sub+Div normalisation becomes one op, as in the trainer's model."""
    prev = result[-1] if result else None
    if isinstance(op, ops.ElementwiseAffine) and isinstance(prev, ops.Linear):
        s, t = op.scale.reshape(-1), op.shift.reshape(-1)
        bias = prev.bias if prev.bias is not None else torch.zeros_like(s)
        result[-1] = ops.Linear(prev.weight * s[:, None], bias * s + t)
    elif isinstance(op, ops.ElementwiseAffine) and isinstance(prev, ops.ElementwiseAffine):
        result[-1] = ops.ElementwiseAffine(prev.scale * op.scale, prev.shift * op.scale + op.shift)
    else:
        result.append(op)
