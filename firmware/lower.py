"""From a full-int8 TFLite graph to kernel calls with their parameters, computed offline.

Every number a kernel needs is computed here exactly as TFLM computes it when it prepares
the op: requantization multipliers (verisparse.fixedpoint), fused-activation ranges,
padding, and the ADD rescaling. The C side only runs integer loops.

QUANTIZE at the input and DEQUANTIZE at the output are left to the host: the firmware takes
and returns the int8 tensors next to them (model.h gives their scales and zero points).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.fixedpoint import activation_range, checked_multipliers, quantize_multiplier
from verisparse.tflite_graph import Graph, Operator, Tensor, check_quantization, spatial_paddings

from .shapes import FOLDABLE, fold_static_shapes
from .sparse import SparseWeights, choose

# the supported ops and the inputs each must have (a bias, the third input of the weighted ops, may be absent)
_REQUIRED_INPUTS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "AVERAGE_POOL_2D": 1,
                    "MAX_POOL_2D": 1, "ADD": 2, "PAD": 2, "RESHAPE": 1, "QUANTIZE": 1, "DEQUANTIZE": 1,
                    "SOFTMAX": 1, "MEAN": 2, "RELU": 1, "RELU6": 1, "LEAKY_RELU": 1, "CONCATENATION": 1,
                    "SQUEEZE": 1, "EXPAND_DIMS": 1, "LOGISTIC": 1, "TANH": 1, "MUL": 2, "SUB": 2, "MAXIMUM": 2,
                    "MINIMUM": 2, "HARD_SWISH": 1}
SUPPORTED = tuple(_REQUIRED_INPUTS)
ADD_LEFT_SHIFT = 20  # TFLM's headroom for int8 ADD
# params fields the kernels hold in uint16_t (vs_kernels.h); every other scalar field is int32_t
# or wider. Dimensions and windows that fit uint16 also keep the kernels' int index arithmetic
# in range.
_UINT16_FIELDS = {"in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "c", "depth_mult", "k_h", "k_w", "stride_h",
                  "stride_w", "dil_h", "dil_w", "pad_top", "pad_left"}


@dataclass
class Layer:
    kernel: str  # C function: vs_conv2d, vs_conv2d_sparse, vs_depthwise_conv2d, ...
    op: str  # the TFLite op it runs
    inputs: list[int]  # activation tensors read
    output: int
    params: dict  # scalar fields of the C params struct
    arrays: dict = field(default_factory=dict)  # name -> numpy array, emitted as const C arrays
    sparse: SparseWeights | None = None
    scratch_bytes: int = 0  # the kernel's *_buffer_size (vs_kernels.h), planned in the arena
    dense_weight_bytes: int = 0
    stored_weight_bytes: int = 0
    nonzero_weights: int = 0
    dense_macs: int = 0
    effective_macs: int = 0
    litert_differs: bool = False  # LiteRT's reference kernel computes this op differently from TFLM


@dataclass
class Program:
    graph: Graph
    layers: list[Layer]
    input: Tensor  # the int8 tensor the firmware reads
    output: Tensor  # the int8 tensor the firmware writes
    float_input: bool  # the .tflite quantizes a float input itself (QUANTIZE stripped)
    float_output: bool  # ... and dequantizes its output (DEQUANTIZE stripped)


def _fail(op_index, op: Operator, why):
    raise VeriSparseError(f"operator {op_index} ({op.opcode}): {why}")


def _padding(padding, in_size, k, stride, dil, out_size, where):
    """TFLite's ComputePaddingWithOffset: the leading pad; checks the stored output size."""
    if padding not in ("SAME", "VALID") or k < 1 or stride < 1 or dil < 1:
        raise VeriSparseError(f"{where}: filter {k}, stride {stride}, dilation {dil}, padding {padding}: filter, "
                              "stride and dilation must be positive and padding SAME or VALID; the model is corrupt")
    eff = (k - 1) * dil + 1
    expect = (in_size + stride - 1) // stride if padding == "SAME" else (in_size + stride - eff) // stride
    if expect != out_size:
        raise VeriSparseError(f"{where}: output size {out_size} does not follow from input {in_size}, filter {k}, "
                              f"stride {stride}, dilation {dil}, padding {padding}; the model is inconsistent")
    return max((out_size - 1) * stride + eff - in_size, 0) // 2


def _window(o, kh, kw, h, wd, oh, ow, where) -> dict:
    """Strides, dilations and leading padding of a CONV_2D / DEPTHWISE_CONV_2D, as params fields."""
    sh, sw, dh, dw = o["stride_h"], o["stride_w"], o["dilation_h"], o["dilation_w"]
    return dict(k_h=kh, k_w=kw, stride_h=sh, stride_w=sw, dil_h=dh, dil_w=dw,
                pad_top=_padding(o["padding"], h, kh, sh, dh, oh, where),
                pad_left=_padding(o["padding"], wd, kw, sw, dw, ow, where))


def _check_int8(t: Tensor, what, where):
    if t.dtype != np.int8 or len(t.scale) == 0:
        kind = "float" if t.dtype.kind == "f" else t.dtype.name
        raise VeriSparseError(
            f"{where}: {what} {t.name!r} is {kind}, not quantized int8. The firmware needs a full-integer model "
            "(float and hybrid/dynamic-range models are refused): convert with a representative dataset and "
            "TFLITE_BUILTINS_INT8, as `verisparse export` does for model_int8.tflite")


def _weights(g: Graph, idx, where, channel_dim) -> Tensor:
    """The op's constant int8 weights, scaled per tensor or per output channel (along channel_dim)."""
    t = g.tensors[idx]
    _check_int8(t, "weight tensor", where)
    if t.data is None:
        raise VeriSparseError(f"{where}: weights {t.name!r} are not constant")
    per_channel = t.data.ndim > channel_dim and t.quantized_dimension == channel_dim \
        and len(t.scale) == t.shape[channel_dim]
    if len(t.scale) != 1 and not per_channel:
        raise VeriSparseError(f"{where}: weights {t.name!r} of shape {t.shape} have {len(t.scale)} scales along "
                              f"dimension {t.quantized_dimension}; one scale, or one per output channel "
                              f"(dimension {channel_dim}), is supported")
    if np.any(t.zero_point != 0):
        raise VeriSparseError(f"{where}: weights {t.name!r} have non-zero zero points (asymmetric int8 weights); "
                              "TFLite's int8 scheme uses symmetric weights")
    return t


def _bias(g: Graph, op: Operator, n, where) -> np.ndarray:
    """The op's int32 bias (its third input), or zeros where it has none."""
    idx = op.inputs[2] if len(op.inputs) > 2 else -1
    if idx < 0:
        return np.zeros(n, np.int64)
    t = g.tensors[idx]
    if t.dtype != np.int32 or t.data is None or t.data.size != n:
        raise VeriSparseError(f"{where}: bias {t.name!r} must be {n} constant int32 values")
    return t.data.astype(np.int64).ravel()


def _folded_bias(bias, w2d, in_offset, where, shift=0):
    """bias + in_offset * sum(w) per output channel; refuses accumulators that could overflow int32,
    also after the requantization's left shift (shift > 0: multipliers over 1)."""
    w = w2d.astype(np.int64)
    folded = bias + in_offset * w.sum(axis=1)
    # the kernels start from the folded bias and add w * x for raw int8 x, in any order
    worst = (np.abs(folded) + np.abs(w).sum(axis=1) * 128) << np.maximum(shift, 0).astype(np.int64)
    if worst.max(initial=0) >= 2 ** 31:
        raise VeriSparseError(f"{where}: the int32 accumulator could overflow (bound {worst.max()}); "
                              "TFLite's kernels would overflow too")
    return folded.astype(np.int32)


def _conv_like(g, k, op, x, w, y, geometry) -> Layer:
    """CONV_2D, or FULLY_CONNECTED as a 1x1 convolution. geometry: the C params' shape fields."""
    where = f"operator {k} ({op.opcode})"
    out_c = w.shape[0]
    w4 = w.data.reshape(out_c, geometry["k_h"], geometry["k_w"], geometry["in_c"])
    in_scale, out_scale = float(x.scale[0]), float(y.scale[0])
    # TFLM multiplies the scales in double, per channel or per tensor (GetQuantizedConvolutionMultipler)
    fs = np.broadcast_to(w.scale, (out_c,))
    mult, shift = checked_multipliers(in_scale * fs / out_scale, where)
    in_offset = -int(x.zero_point[0])
    lo, hi = activation_range(op.options.get("fused_activation", "NONE"), y.scale[0], y.zero_point[0], where)
    bias = _folded_bias(_bias(g, op, out_c, where), w4.reshape(out_c, -1), in_offset, where, shift)
    sparse = choose(w4)
    nnz = int(np.count_nonzero(w4))
    pixels = geometry["out_h"] * geometry["out_w"]
    layer = Layer("vs_conv2d_sparse" if sparse else "vs_conv2d", op.opcode, [x.index], y.index,
                  dict(geometry, out_c=out_c, in_offset=in_offset, out_offset=int(y.zero_point[0]),
                       act_min=lo, act_max=hi),
                  dict(bias=bias, mult=mult, shift=shift.astype(np.int8)), sparse,
                  dense_weight_bytes=w4.size, stored_weight_bytes=sparse.nbytes if sparse else w4.size,
                  nonzero_weights=nnz, dense_macs=pixels * w4.size, effective_macs=pixels * nnz)
    if not sparse:
        layer.arrays["weights"] = w4
    # vs_conv2d_buffer_size: two patches side by side, none for a pointwise convolution;
    # vs_conv2d_sparse_buffer_size: one patch, none for any 1x1 filter
    g_ = geometry
    one_by_one = (g_["k_h"], g_["k_w"]) == (1, 1)
    pointwise = (one_by_one and (g_["stride_h"], g_["stride_w"], g_["pad_top"], g_["pad_left"]) == (1, 1, 0, 0)
                 and (g_["in_h"], g_["in_w"]) == (g_["out_h"], g_["out_w"]))
    if sparse and not one_by_one:
        layer.scratch_bytes = w4[0].size
    elif not sparse and not pointwise:
        layer.scratch_bytes = 2 * w4[0].size
    return layer


def _conv(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (CONV_2D)"
    w = _weights(g, op.inputs[1], where, 0)
    _, h, wd, c = _nhwc(x, where)
    _, oh, ow, oc = _nhwc(y, where)
    if w.data.ndim != 4 or w.shape[0] != oc or w.shape[3] != c:
        raise VeriSparseError(f"{where}: filter {w.shape} does not map {x.shape} to {y.shape} "
                              "(grouped convolutions are not supported)")
    _, kh, kw, _ = w.shape
    geo = dict(in_h=h, in_w=wd, in_c=c, out_h=oh, out_w=ow, **_window(op.options, kh, kw, h, wd, oh, ow, where))
    return _conv_like(g, k, op, x, w, y, geo)


def _fully_connected(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (FULLY_CONNECTED)"
    w = _weights(g, op.inputs[1], where, 0)
    if op.options.get("weights_format", "DEFAULT") != "DEFAULT" or w.data.ndim != 2:
        raise VeriSparseError(f"{where}: only DEFAULT 2-D weights are supported")
    out_c, depth = w.shape
    batch = int(np.prod(x.shape)) // depth if depth else 0
    if batch * depth != int(np.prod(x.shape)) or int(np.prod(y.shape)) != batch * out_c:
        raise VeriSparseError(f"{where}: weights {w.shape} do not map {x.shape} to {y.shape}")
    # the batch becomes the width of a 1 x batch image, each pixel a vector of `depth` channels
    geo = dict(in_h=1, in_w=batch, in_c=depth, out_h=1, out_w=batch, k_h=1, k_w=1, stride_h=1, stride_w=1,
               dil_h=1, dil_w=1, pad_top=0, pad_left=0)
    return _conv_like(g, k, op, x, w, y, geo)


def _depthwise(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (DEPTHWISE_CONV_2D)"
    w = _weights(g, op.inputs[1], where, 3)
    _, h, wd, c = _nhwc(x, where)
    _, oh, ow, oc = _nhwc(y, where)
    if w.data.ndim != 4 or w.shape[0] != 1 or w.shape[3] != oc or c == 0 or oc % c:
        raise VeriSparseError(f"{where}: filter {w.shape} does not map {x.shape} to {y.shape}")
    o = op.options
    _, kh, kw, _ = w.shape
    fs = np.broadcast_to(w.scale, (oc,))
    mult, shift = checked_multipliers(float(x.scale[0]) * fs / float(y.scale[0]), where)
    in_offset = -int(x.zero_point[0])
    lo, hi = activation_range(o["fused_activation"], y.scale[0], y.zero_point[0], where)
    w2d = w.data.reshape(kh * kw, oc).T
    bias = _folded_bias(_bias(g, op, oc, where), w2d, in_offset, where, shift)
    params = dict(in_h=h, in_w=wd, in_c=c, out_h=oh, out_w=ow, out_c=oc, depth_mult=oc // c,
                  **_window(o, kh, kw, h, wd, oh, ow, where), in_offset=in_offset, out_offset=int(y.zero_point[0]),
                  act_min=lo, act_max=hi)
    nnz = int(np.count_nonzero(w.data))
    # vs_depthwise_conv2d_buffer_size: one window, when some window reaches over the border
    p = params
    border = (p["pad_top"] or p["pad_left"] or (oh - 1) * p["stride_h"] + (kh - 1) * p["dil_h"] - p["pad_top"] >= h
              or (ow - 1) * p["stride_w"] + (kw - 1) * p["dil_w"] - p["pad_left"] >= wd)
    return Layer("vs_depthwise_conv2d", op.opcode, [x.index], y.index, params,
                 dict(weights=w.data.reshape(kh, kw, oc), bias=bias, mult=mult, shift=shift.astype(np.int8)),
                 scratch_bytes=kh * kw * c if border else 0,
                 dense_weight_bytes=w.data.size, stored_weight_bytes=w.data.size, nonzero_weights=nnz,
                 dense_macs=oh * ow * w.data.size, effective_macs=oh * ow * nnz)


def _pool(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} ({op.opcode})"
    _, h, wd, c = _nhwc(x, where)
    _, oh, ow, oc = _nhwc(y, where)
    if oc != c or float(x.scale[0]) != float(y.scale[0]) or int(x.zero_point[0]) != int(y.zero_point[0]):
        raise VeriSparseError(f"{where}: input and output must share channels, scale and zero point")
    o = op.options
    lo, hi = activation_range(o["fused_activation"], y.scale[0], y.zero_point[0], where)
    params = dict(in_h=h, in_w=wd, c=c, out_h=oh, out_w=ow, k_h=o["filter_h"], k_w=o["filter_w"],
                  stride_h=o["stride_h"], stride_w=o["stride_w"],
                  pad_top=_padding(o["padding"], h, o["filter_h"], o["stride_h"], 1, oh, where),
                  pad_left=_padding(o["padding"], wd, o["filter_w"], o["stride_w"], 1, ow, where),
                  act_min=lo, act_max=hi)
    kernel = "vs_max_pool2d" if op.opcode == "MAX_POOL_2D" else "vs_average_pool2d"
    return Layer(kernel, op.opcode, [x.index], y.index, params)


def _add(g, k, op):
    a, b, y = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]], g.tensors[op.outputs[0]]
    where = f"operator {k} (ADD)"
    if a.shape != b.shape or a.shape != y.shape:
        raise VeriSparseError(f"{where}: shapes {a.shape} + {b.shape} -> {y.shape}; "
                              "ADD with broadcasting is not supported")
    sa, sb, sy = float(a.scale[0]), float(b.scale[0]), float(y.scale[0])
    # TFLM's int8 ADD: both inputs to a common scale (twice the larger), with 20 bits of headroom
    twice_max = 2.0 * max(sa, sb)
    (m1, m2, mo), (s1, s2, so) = checked_multipliers(
        [sa / twice_max, sb / twice_max, twice_max / ((1 << ADD_LEFT_SHIFT) * sy)], where)
    if (256 << ADD_LEFT_SHIFT) << max(int(so), 0) >= 2 ** 31:  # |input - zero point| <= 255, summed at most once
        raise VeriSparseError(f"{where}: the output multiplier 2^{int(so)} would overflow int32 after the "
                              "headroom shift; the model's scales are inconsistent: re-export the model")
    lo, hi = activation_range(op.options.get("fused_activation", "NONE"), y.scale[0], y.zero_point[0], where)
    params = dict(size=int(np.prod(y.shape)), in1_offset=-int(a.zero_point[0]), in2_offset=-int(b.zero_point[0]),
                  left_shift=ADD_LEFT_SHIFT, in1_mult=int(m1), in1_shift=int(s1), in2_mult=int(m2), in2_shift=int(s2),
                  out_mult=int(mo), out_shift=int(so), out_offset=int(y.zero_point[0]), act_min=lo, act_max=hi)
    return Layer("vs_add", "ADD", [a.index, b.index], y.index, params)


def _pad(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (PAD)"
    _, h, wd, c = _nhwc(x, where)
    _, oh, ow, oc = _nhwc(y, where)
    top, bottom, left, right = spatial_paddings(g, op, where)
    if (oh, ow, oc) != (h + top + bottom, wd + left + right, c) or int(x.zero_point[0]) != int(y.zero_point[0]) \
            or float(x.scale[0]) != float(y.scale[0]):
        raise VeriSparseError(f"{where}: {x.shape} padded by {[top, bottom, left, right]} is not {y.shape} "
                              "at the same scale")
    params = dict(in_h=h, in_w=wd, c=c, out_h=oh, out_w=ow, pad_top=top, pad_left=left, value=int(y.zero_point[0]))
    return Layer("vs_pad", "PAD", [x.index], y.index, params)


def _reshape(g, k, op):
    """RESHAPE, SQUEEZE and EXPAND_DIMS: the bytes stay as they are."""
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    if int(np.prod(x.shape)) != int(np.prod(y.shape)):
        raise VeriSparseError(f"operator {k} ({op.opcode}): {x.shape} and {y.shape} differ in size")
    return Layer("vs_reshape", op.opcode, [x.index], y.index, dict(size=int(np.prod(y.shape))))


def _same_size(x: Tensor, y: Tensor, where):
    if x.shape != y.shape:
        raise VeriSparseError(f"{where}: input {x.shape} and output {y.shape} must have the same shape")
    return int(np.prod(y.shape))


def _softmax(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (SOFTMAX)"
    size = _same_size(x, y, where)
    depth = x.shape[-1] if x.shape else 1
    if int(y.zero_point[0]) != -128 or np.float32(y.scale[0]) != np.float32(1 / 256):
        raise VeriSparseError(f"{where}: the int8 output must have scale 1/256 and zero point -128 (TFLM's int8 "
                              f"SOFTMAX refuses anything else); it has {float(y.scale[0]):g} and "
                              f"{int(y.zero_point[0])}: re-convert the model with the TFLite converter")
    if depth > 4096:  # the Q12.19 sum of exps, each at most 2^19, stays below 2^31
        raise VeriSparseError(f"{where}: {depth} classes; the fixed-point sum overflows over 4096")
    # TFLM's PreprocessSoftmaxScaling: beta * input_scale into Q5.26, capped below 2^31
    real = min(float(op.options.get("beta", 0.0)) * float(x.scale[0]) * (1 << 26), (1 << 31) - 1.0)
    if not real > 1.0:
        raise VeriSparseError(f"{where}: beta * input scale * 2^26 = {real:g} is not above 1 (TFLM refuses "
                              "such a model); the input scale or beta is implausibly small: re-export the model")
    mult, shift = quantize_multiplier(real)
    # TFLM's CalculateInputRadius(5, shift): the largest difference whose scaled value fits Q5.26
    diff_min = -int(np.floor(31.0 * (1 << 26) / (1 << shift)))
    return Layer("vs_softmax", "SOFTMAX", [x.index], y.index,
                 dict(outer=size // max(depth, 1), depth=depth, input_mult=mult, input_left_shift=shift,
                      diff_min=diff_min))


def _rescale_layer(op, x, y, pos, neg, lo, hi, in_offset=None, out_offset=None):
    return Layer("vs_rescale", op.opcode, [x.index], y.index,
                 dict(size=int(np.prod(y.shape)), in_offset=-int(x.zero_point[0]) if in_offset is None else in_offset,
                      pos_mult=int(pos[0]), pos_shift=int(pos[1]), neg_mult=int(neg[0]), neg_shift=int(neg[1]),
                      out_offset=int(y.zero_point[0]) if out_offset is None else out_offset, act_min=lo, act_max=hi))


def _round_half_away(v) -> int:
    v = float(v)
    return int(np.sign(v) * np.floor(abs(v) + 0.5))


def _activation(g, k, op):
    """QUANTIZE int8 -> int8, RELU, RELU6, LEAKY_RELU, with the multipliers TFLM prepares for each
    (float32 or double ratios exactly as it computes them)."""
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} ({op.opcode})"
    _same_size(x, y, where)
    sx, sy = np.float32(x.scale[0]), np.float32(y.scale[0])
    if op.opcode == "QUANTIZE":  # TFLM's Requantize: double ratio
        (m,), (s,) = checked_multipliers([float(sx) / float(sy)], where)
        return _rescale_layer(op, x, y, (m, s), (m, s), -128, 127)
    if op.opcode == "RELU":  # ReluQuantized: float32 ratio, clamp at the output's zero
        (m,), (s,) = checked_multipliers([float(sx / sy)], where)
        return _rescale_layer(op, x, y, (m, s), (m, s), max(-128, int(y.zero_point[0])), 127)
    if op.opcode == "RELU6":  # Relu6Quantized clamps the raw input between its 0 and 6
        zero = int(x.zero_point[0])
        six = min(127, max(-128, _round_half_away(np.float32(6.0) / sx) + zero))
        identity = (1 << 30, 1)  # x * 2^30 * 2 / 2^31 = x exactly
        layer = _rescale_layer(op, x, y, identity, identity, zero, six, in_offset=0, out_offset=0)
        # LiteRT rescales to the output's quantization, TFLM does not
        layer.litert_differs = (float(sx), int(x.zero_point[0])) != (float(sy), int(y.zero_point[0]))
        return layer
    alpha = np.float32(op.options.get("alpha", 0.0))
    if not alpha >= 0:
        raise VeriSparseError(f"{where}: alpha {float(alpha):g}; only LEAKY_RELU with alpha >= 0 is supported")
    (mi, ma), (si, sa) = checked_multipliers([float(sx / sy), float(sx * alpha / sy)], where)
    return _rescale_layer(op, x, y, (mi, si), (ma, sa), -128, 127)


def _mean(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (MEAN)"
    axes = g.tensors[op.inputs[1]].data
    if axes is None or axes.dtype != np.int32:
        raise VeriSparseError(f"{where}: the axes must be a constant int32 tensor")
    rank = len(x.shape)
    axes = sorted({int(a) + rank if a < 0 else int(a) for a in axes.ravel()})
    if not axes or axes[0] < 0 or axes[-1] >= rank or axes != list(range(axes[0], axes[-1] + 1)):
        raise VeriSparseError(f"{where}: MEAN over axes {axes} of {x.shape}; only adjacent axes are supported "
                              "(global average pooling reduces height and width)")
    outer, reduce = int(np.prod(x.shape[:axes[0]])), int(np.prod(x.shape[axes[0]:axes[-1] + 1]))
    inner = int(np.prod(x.shape[axes[-1] + 1:]))
    if int(np.prod(y.shape)) != outer * inner:
        raise VeriSparseError(f"{where}: {x.shape} reduced over {axes} is not {y.shape}")
    (m,), (s,) = checked_multipliers([float(x.scale[0]) / float(y.scale[0])], where)
    # TFLM folds 1/count into the multiplier: count <= 2^n, n = floor(log2 count) capped at 32 and 31 + shift
    n = min(reduce.bit_length() - 1, 32, 31 + int(s))
    mult = (int(m) << n) // reduce
    return Layer("vs_mean", "MEAN", [x.index], y.index,
                 dict(outer=outer, reduce=reduce, inner=inner, sum_offset=-int(x.zero_point[0]) * reduce,
                      mult=mult, shift=int(s) - n, out_offset=int(y.zero_point[0])))


def _concatenation(g, k, op):
    ins, y = [g.tensors[i] for i in op.inputs], g.tensors[op.outputs[0]]
    where = f"operator {k} (CONCATENATION)"
    rank = len(y.shape)
    axis = op.options.get("axis", 0)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or any(len(t.shape) != rank for t in ins):
        raise VeriSparseError(f"{where}: axis {op.options.get('axis')} does not fit the shapes")
    if op.options.get("fused_activation", "NONE") != "NONE":
        raise VeriSparseError(f"{where}: a fused activation on CONCATENATION is not supported")
    for t in ins:
        _check_int8(t, "input", where)
        if np.float32(t.scale[0]) != np.float32(y.scale[0]) or int(t.zero_point[0]) != int(y.zero_point[0]):
            raise VeriSparseError(f"{where}: input {t.name!r} has scale {float(t.scale[0]):g} and zero point "
                                  f"{int(t.zero_point[0])}, the output {float(y.scale[0]):g} and "
                                  f"{int(y.zero_point[0])}; TFLM's int8 CONCATENATION refuses inputs that need "
                                  "requantization: re-convert the model with the TFLite converter, which gives "
                                  "them one scale")
        if t.shape[:axis] + t.shape[axis + 1:] != y.shape[:axis] + y.shape[axis + 1:]:
            raise VeriSparseError(f"{where}: {t.shape} cannot be concatenated into {y.shape} along axis {axis}")
    if sum(t.shape[axis] for t in ins) != y.shape[axis]:
        raise VeriSparseError(f"{where}: the inputs' sizes along axis {axis} do not add up to {y.shape}")
    block = np.array([int(np.prod(t.shape[axis:])) for t in ins], np.uint32)
    return Layer("vs_concatenation", "CONCATENATION", [t.index for t in ins], y.index,
                 dict(outer=int(np.prod(y.shape[:axis])), count=len(ins)), dict(block=block))


def _squash(g, k, op):
    """LOGISTIC and TANH: TFLM scales the input into Q4.27 with a multiplier from frexp (no
    QuantizeMultiplier) and saturates beyond CalculateInputRadius(4, shift)."""
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} ({op.opcode})"
    size = _same_size(x, y, where)
    if op.opcode == "LOGISTIC" and int(y.zero_point[0]) != -128:
        raise VeriSparseError(f"{where}: the int8 output's zero point must be -128 (TFLM refuses others); it is "
                              f"{int(y.zero_point[0])}: re-convert the model with the TFLite converter")
    frac, shift = math.frexp(float(x.scale[0]) * (1 << 27))
    mult = math.floor(frac * (1 << 31) + 0.5)
    if mult >= 1 << 31 or not 0 <= shift <= 30:
        raise VeriSparseError(f"{where}: input scale {float(x.scale[0]):g} is outside what TFLM's fixed-point "
                              f"{op.opcode} handles; re-export the model")
    radius = math.floor(15.0 * (1 << 27) / (1 << shift))
    return Layer("vs_logistic" if op.opcode == "LOGISTIC" else "vs_tanh", op.opcode, [x.index], y.index,
                 dict(size=size, in_zero_point=int(x.zero_point[0]), range_radius=radius, input_mult=mult,
                      input_shift=shift))


def _int16_multiplier(real: float, where) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier then DownScaleInt32ToInt16Multiplier (round the significand to 16 bits)."""
    q, shift = quantize_multiplier(real)
    if not -15 <= shift <= 30:
        raise VeriSparseError(f"{where}: multiplier {real:g} is outside what TFLM's int16 HARD_SWISH handles; "
                              "the scales are implausible: re-export the model")
    return (0x7FFF if q >= (1 << 31) - 1 - (1 << 15) else (q + (1 << 15)) >> 16), shift


def _hard_swish(g, k, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    where = f"operator {k} (HARD_SWISH)"
    size = _same_size(x, y, where)
    hires = np.float32(1.0 / 128.0) * np.float32(x.scale[0])  # float32, as TFLM prepares it
    out_mult, out_shift = _int16_multiplier(float(hires / np.float32(y.scale[0])), where)
    if out_shift > 0:
        raise VeriSparseError(f"{where}: output scale {float(y.scale[0]):g} is under input scale / 128; TFLM "
                              "refuses such a model: re-export it")
    r_mult, r_shift = _int16_multiplier(float(hires / (np.float32(3.0) / np.float32(32768.0))), where)
    return Layer("vs_hard_swish", "HARD_SWISH", [x.index], y.index,
                 dict(size=size, in_zero_point=int(x.zero_point[0]), out_zero_point=int(y.zero_point[0]),
                      out_mult=out_mult, out_shift=out_shift, reluish_mult=r_mult, reluish_shift=r_shift))


def _broadcast_strides(t: Tensor, dims: tuple, where) -> tuple:
    """Element strides of t over the 4-D output dims, 0 along the dimensions t broadcasts."""
    shape = (1,) * (4 - len(t.shape)) + tuple(t.shape)
    if len(shape) != 4:
        raise VeriSparseError(f"{where}: tensor {t.name!r} of shape {t.shape} has more than 4 dimensions")
    strides, step = [0] * 4, 1
    for d in (3, 2, 1, 0):
        if shape[d] == dims[d]:
            strides[d] = step if shape[d] > 1 else 0
        elif shape[d] != 1:
            raise VeriSparseError(f"{where}: {t.shape} does not broadcast to {dims}")
        step *= shape[d]
    return tuple(strides)


def _binary(g, k, op):
    """MUL, SUB, MAXIMUM, MINIMUM of two int8 tensors, either of which may broadcast or be constant."""
    a, b, y = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]], g.tensors[op.outputs[0]]
    where = f"operator {k} ({op.opcode})"
    if len(y.shape) > 4:
        raise VeriSparseError(f"{where}: output of shape {y.shape}; at most 4 dimensions are supported")
    dims = (1,) * (4 - len(y.shape)) + tuple(y.shape)
    layer = Layer(f"vs_{op.opcode.lower()}", op.opcode, [t.index for t in (a, b) if t.data is None], y.index, {})
    for j, t in enumerate((a, b), 1):
        _check_int8(t, "input", where)
        if t.data is not None:
            layer.arrays[f"in{j}"] = np.ascontiguousarray(t.data)
    if len(layer.inputs) == 0:
        raise VeriSparseError(f"{where}: both inputs are constant; the converter folds such ops: re-convert")
    sa, sb, sy = np.float32(a.scale[0]), np.float32(b.scale[0]), np.float32(y.scale[0])
    lo, hi = activation_range(op.options.get("fused_activation", "NONE"), y.scale[0], y.zero_point[0], where)
    arith = dict(in1_offset=-int(a.zero_point[0]), in2_offset=-int(b.zero_point[0]), left_shift=0, in1_mult=0,
                 in1_shift=0, in2_mult=0, in2_shift=0, out_mult=0, out_shift=0, out_offset=int(y.zero_point[0]),
                 act_min=lo, act_max=hi)
    if op.opcode == "MUL":  # TFLM: double product of the scales over the output's
        (m,), (s,) = checked_multipliers([float(sa) * float(sb) / float(sy)], where)
        arith.update(out_mult=int(m), out_shift=int(s))
    elif op.opcode == "SUB":  # TFLM: as ADD, in float32
        twice_max = np.float32(2) * max(sa, sb)
        real = [float(sa / twice_max), float(sb / twice_max),
                float(twice_max / (np.float32(1 << ADD_LEFT_SHIFT) * sy))]
        if real[2] >= 1.0:
            raise VeriSparseError(f"{where}: output rescaling {real[2]:g} is not below 1 (TFLM refuses such a "
                                  "model); the scales are inconsistent: re-export the model")
        (m1, m2, mo), (s1, s2, so) = checked_multipliers(real, where)
        arith.update(left_shift=ADD_LEFT_SHIFT, in1_mult=int(m1), in1_shift=int(s1), in2_mult=int(m2),
                     in2_shift=int(s2), out_mult=int(mo), out_shift=int(so))
    layer.params = dict(dims=dims, stride1=_broadcast_strides(a, dims, where),
                        stride2=_broadcast_strides(b, dims, where), **arith)
    return layer


def _nhwc(t: Tensor, where):
    if len(t.shape) != 4 or t.shape[0] != 1:
        raise VeriSparseError(f"{where}: tensor {t.name!r} has shape {t.shape}; 4-D NHWC with batch 1 expected")
    return t.shape


def _check_fields(layer: Layer, where):
    """Every scalar params field fits its C type (uint16_t or int32_t), so the emitted struct holds
    exactly the numbers computed here."""
    for name, value in layer.params.items():
        lo, hi = (0, 0xFFFF) if name in _UINT16_FIELDS else (-(1 << 31), (1 << 31) - 1)
        for v in value if isinstance(value, tuple) else (value,):
            if not lo <= v <= hi:
                raise VeriSparseError(f"{where}: {name} = {v} is outside [{lo}, {hi}], the range the kernels "
                                      "hold it in; the model is too large or inconsistent")


_LOWER = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected,
          "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool, "ADD": _add, "PAD": _pad, "RESHAPE": _reshape,
          "SQUEEZE": _reshape, "EXPAND_DIMS": _reshape, "SOFTMAX": _softmax, "MEAN": _mean, "RELU": _activation,
          "RELU6": _activation, "LEAKY_RELU": _activation, "QUANTIZE": _activation, "CONCATENATION": _concatenation,
          "LOGISTIC": _squash, "TANH": _squash, "MUL": _binary, "SUB": _binary, "MAXIMUM": _binary,
          "MINIMUM": _binary, "HARD_SWISH": _hard_swish}


def lower(g: Graph) -> Program:
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise VeriSparseError(f"the model has {len(g.inputs)} inputs and {len(g.outputs)} outputs; "
                              "the firmware supports one of each")
    g, folded = fold_static_shapes(g)
    ops = [(k, op) for k, op in enumerate(g.operators) if k not in folded]
    for k, op in ops:
        if op.opcode not in SUPPORTED:
            out = g.tensors[op.outputs[0]].name if op.outputs else "none"
            how = ("it computes a shape from tensors that are not constant; give the model a fixed batch size of 1 "
                   "(e.g. keras.Input(shape, batch_size=1)) and convert again" if op.opcode in FOLDABLE else
                   "replace the layer that produces it with supported ones, or cut the model before it")
            raise VeriSparseError(f"operator {k} is {op.opcode} (output tensor {out!r}), which the firmware does not "
                                  f"support: {how} (supported: {', '.join(SUPPORTED)}; evaluated at generation "
                                  f"time on constant shapes: {', '.join(FOLDABLE)})")
    inp, out = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    float_in = float_out = False
    if ops and ops[0][1].opcode == "QUANTIZE" and ops[0][1].inputs[:1] == [inp.index] and len(ops[0][1].outputs) == 1 \
            and inp.dtype == np.float32:
        float_in, inp = True, g.tensors[ops[0][1].outputs[0]]
        ops = ops[1:]
    if ops and ops[-1][1].opcode == "DEQUANTIZE" and ops[-1][1].outputs == [out.index] and len(ops[-1][1].inputs) == 1 \
            and ops[-1][1].inputs[0] >= 0:
        float_out, out = True, g.tensors[ops[-1][1].inputs[0]]
        ops = ops[:-1]
    for k, op in ops:
        int8_in = op.inputs[:1] and op.inputs[0] >= 0 and g.tensors[op.inputs[0]].dtype == np.int8
        if op.opcode == "DEQUANTIZE" or (op.opcode == "QUANTIZE" and not int8_in):
            _fail(k, op, "supported only at the model's input (QUANTIZE from float) and output (DEQUANTIZE); "
                         "inside the model only int8 -> int8 QUANTIZE runs")
    _check_int8(inp, "input", "the model")
    _check_int8(out, "output", "the model")
    for t, what in ((inp, "input"), (out, "output")):
        check_quantization(t, f"the model's {what}")
    layers = []
    for k, op in ops:
        where = f"operator {k} ({op.opcode})"
        need = len(op.inputs) if op.opcode == "CONCATENATION" else _REQUIRED_INPUTS[op.opcode]
        if len(op.inputs) < need or min(op.inputs[:need]) < 0 or len(op.outputs) != 1:
            _fail(k, op, f"{need} inputs and one output expected")
        acts = [op.inputs[0], *op.outputs] + ([op.inputs[1]] if op.opcode == "ADD" else []) \
            + (op.inputs[1:] if op.opcode == "CONCATENATION" else [])
        for t in acts:
            _check_int8(g.tensors[t], "tensor", where)
            if not np.prod(g.tensors[t].shape):
                _fail(k, op, f"tensor {g.tensors[t].name!r} of shape {g.tensors[t].shape} has no elements")
        for t in op.inputs + op.outputs:
            if t >= 0:
                check_quantization(g.tensors[t], where)
        layers.append(_LOWER[op.opcode](g, k, op))
        _check_fields(layers[-1], where)
    if not layers:
        raise VeriSparseError("the model computes nothing (no operators between input and output)")
    produced = {inp.index}
    for l in layers:  # TFLite stores operators in execution order
        for t in l.inputs:
            if t not in produced:
                raise VeriSparseError(f"{l.op} reads tensor {g.tensors[t].name!r}, which no earlier operator "
                                      "writes (constant activations are not supported)")
        if l.output in produced:  # the memory planner assumes one writer per tensor
            raise VeriSparseError(f"{l.op} writes tensor {g.tensors[l.output].name!r}, which the model's input "
                                  "or an earlier operator already holds; the model is inconsistent")
        produced.add(l.output)
    if out.index not in produced:
        raise VeriSparseError("no operator writes the model's output")
    return Program(g, layers, inp, out, float_in, float_out)
