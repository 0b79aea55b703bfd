"""The int8 TFLite model as a bound IR over its integer arithmetic.

Activations are the int8 values minus their zero point (u = q - zp), kept in NCHW float64
tensors: every value is an integer far below 2^53, so float64 convolutions are exact. A
layer is an exact integer affine map (int8 weights, int32 bias; weight zero points are 0 in
TFLite int8) followed by Requant: TFLite's fixed-point MultiplyByQuantizedMultiplier,
the output zero point and the activation clamp, all as one monotone integer function of
the int32 accumulator. So interval bounds through Requant.ibp are exact per neuron for what
TFLM / the firmware compute, and Requant.lines gives CROWN a linear relaxation
(the rounding is within eps of acc * M, then a clamp), making the usual CROWN machinery of
verify.bounds apply to the integer network unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from verisparse.errors import VeriSparseError
from verisparse.fixedpoint import activation_range, checked_multipliers, multiply_by_quantized_multiplier
from verisparse.tflite_graph import check_quantization, spatial_paddings

from . import ops
from .bounds import BoundedNet, concretize

_TOL = 1e-4  # slack on float64 accumulator bounds before rounding them to integers
QUANT_NUDGE = 2.0 ** -20  # relative: a float32 x / scale (or x * (1 / scale)) is within a few ulps
SUPPORTED = ("CONV_2D (per-channel or per-tensor), FULLY_CONNECTED, PAD (height and width), RESHAPE, and MUL/ADD/SUB "
             "by constants at the input (normalisation)")
ELEMENTWISE = ("MUL", "ADD", "SUB")


def single_rounding(acc, q, shift):
    """LiteRT 2.3's FULLY_CONNECTED requantization: (acc * q + 2^(s-1)) >> s, s = 31 - shift."""
    acc, q, s = np.asarray(acc, np.int64), np.asarray(q, np.int64), 31 - np.asarray(shift, np.int64)
    return (acc * q + (np.int64(1) << (s - 1))) >> s


KERNELS = ("reference", "xnnpack", "all")
# XNNPACK's requantizations (fp32: float32 scale, float32 product, round to nearest even;
# rndnu / gemmlowp: a 24-bit significand of that float32 scale, a truncating high multiply,
# a rounding shift) all land within 0.5 + 2^-right + |x| * FLOAT_REL of x = acc * M: the
# float32 scale and product are each off by 2^-24 relative (and acc -> float32 above 2^24);
# 2^-20 leaves room for the order XNNPACK multiplies the three scales in.
FLOAT_REL = 2.0 ** -20


class Requant:
    """u_out = clamp(MBQM(acc) + zp, qmin, qmax) - zp for an integer accumulator acc.

    q, shift, qmin, qmax are per output channel; with both_roundings the result is the hull of
    TFLite's double rounding and LiteRT's single rounding (FULLY_CONNECTED differs between
    LiteRT and TFLM), so bounds hold for either runtime. kernels 'xnnpack' or 'all' widen it
    to every integer within XNNPACK's rounding error of acc * M (which contains the
    reference result too): the bounds then hold for LiteRT's default CPU kernels as well."""

    def __init__(self, q, shift, zp, qmin, qmax, shape, both_roundings=False, kernels="reference"):
        self.q, self.shift = np.asarray(q, np.int64), np.asarray(shift, np.int64)
        self.zp, self.qmin, self.qmax = int(zp), int(qmin), int(qmax)
        self.shape, self.both = tuple(shape), both_roundings
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}")
        self.float_requant = kernels != "reference"
        view = (-1,) + (1,) * (len(self.shape) - 1)
        self._view = view
        m = self.q * np.exp2(self.shift.astype(np.float64) - 31)
        right = np.maximum(-self.shift, 0)
        # |MBQM(acc) - acc*m| <= 1/2 (high mul) / 2^right + 1/2 (divide by POT); single rounding: 1/2
        err = 0.5 + 0.5 * np.exp2(-right.astype(np.float64)) + 1e-9
        self.m = torch.from_numpy(m).view(view)
        self.err = torch.from_numpy(err).view(view)
        # XNNPACK's error, less its |x| * FLOAT_REL part (see err_over)
        self.float_err = torch.from_numpy(0.5 + np.exp2(-right.astype(np.float64)) + 1e-9).view(view)
        self.lo, self.hi = float(self.qmin - self.zp), float(self.qmax - self.zp)
        self.max_acc = float(2 ** 31 - 1) / np.exp2(np.maximum(self.shift, 0)).max()

    def err_over(self, l, u):
        """Per neuron, the most any covered kernel's result is off acc * m for acc in [l, u]."""
        e = self.err.to(l)
        if not self.float_requant:
            return e.expand_as(l)
        m = self.m.to(l)
        x = torch.maximum((m * l).abs(), (m * u).abs())
        return torch.maximum(e, self.float_err.to(l) + x * FLOAT_REL)

    def _exact(self, acc, pick, widen=True):
        """The integer function on an integer-valued tensor; pick combines the roundings
        (widen=False: the reference kernels' only)."""
        if float(acc.abs().max()) >= self.max_acc:
            raise VeriSparseError("an accumulator bound exceeds int32 after TFLite's left shift; "
                                  "the fixed-point arithmetic would wrap and is not verified")
        a = acc.detach().cpu().numpy().astype(np.int64)
        shp = (1,) + tuple(self.shape[:1]) + (1,) * (a.ndim - 2)
        q, s = self.q.reshape(shp), self.shift.reshape(shp)
        r = multiply_by_quantized_multiplier(a, q, s)
        if self.both:
            r = pick(r, single_rounding(a, q, s))
        if widen and self.float_requant:  # the furthest integer XNNPACK's rounding can reach, monotone in acc
            x = a.astype(np.float64) * (q.astype(np.float64) * np.exp2(s.astype(np.float64) - 31))
            right = np.maximum(-s, 0).astype(np.float64)
            e = 0.5 + np.exp2(-right) + np.abs(x) * FLOAT_REL + 1e-9
            far = np.ceil(x - e) if pick is np.minimum else np.floor(x + e)
            r = pick(r, far.astype(np.int64))
        out = np.clip(r + self.zp, self.qmin, self.qmax) - self.zp
        return torch.from_numpy(out.astype(np.float64)).to(acc.device)

    def forward(self, acc):
        """The reference kernels' result (TFLM's rounding where the two runtimes differ)."""
        return self._exact(acc.round(), np.minimum, widen=False)

    def ibp(self, l, u):
        # acc is an integer, and the map is monotone: evaluate it at the integer ends
        return (self._exact(torch.ceil(l - _TOL - 1e-12 * l.abs()), np.minimum),
                self._exact(torch.floor(u + _TOL + 1e-12 * u.abs()), np.maximum))

    def unstable(self, l, u):
        """Neurons whose relaxation depends on the bounds: the clamp's corners lie inside."""
        lo, hi = self.ibp(l.view(-1, *self.shape), u.view(-1, *self.shape))
        loose = ((lo <= self.lo) & (hi > self.lo)) | ((lo < self.hi) & (hi >= self.hi))
        return loose.view_as(l)

    def lines(self, l, u):
        """(lower slope, lower intercept, upper slope, upper intercept) in acc, per neuron.
        f(acc) >= clamp(m acc - err) and <= clamp(m acc + err); each clamp of a line gets the
        ReLU-style relaxation on its one bent corner, or the exact constant ends otherwise."""
        l, u = l - _TOL - 1e-12 * l.abs(), u + _TOL + 1e-12 * u.abs()
        f_lo, f_hi = self.ibp(l, u)
        m, e, lo, hi = self.m.to(l), self.err_over(l, u), self.lo, self.hi
        vl, vu = m * l - e, m * u - e  # the lower line's range
        wl, wu = m * l + e, m * u + e  # the upper line's range
        zero = torch.zeros_like(l)
        # lower bound of clamp(v): identity, flat at f_lo, or a corner
        lo_s = torch.where((vl >= lo) & (vu <= hi), m.expand_as(l), zero)
        lo_c = torch.where((vl >= lo) & (vu <= hi), -e.expand_as(l), f_lo)
        below = (vl < lo) & (vu > lo) & (vu <= hi) & (vu - lo >= lo - vl)  # y >= v beats y >= lo
        lo_s, lo_c = torch.where(below, m.expand_as(l), lo_s), torch.where(below, -e.expand_as(l), lo_c)
        top = (vl >= lo) & (vl < hi) & (vu > hi)  # min(v, hi): chord from (vl, vl) to (vu, hi)
        k = (hi - vl) / torch.where(top, vu - vl, torch.ones_like(l))
        lo_s, lo_c = torch.where(top, k * m, lo_s), torch.where(top, vl - k * vl - k * e, lo_c)
        # upper bound of clamp(w): identity, flat at f_hi, or a corner
        up_s = torch.where((wl >= lo) & (wu <= hi), m.expand_as(l), zero)
        up_c = torch.where((wl >= lo) & (wu <= hi), e.expand_as(l), f_hi)
        bottom = (wl < lo) & (wu > lo) & (wu <= hi)  # max(w, lo): chord from (wl, lo) to (wu, wu)
        k = (wu - lo) / torch.where(bottom, wu - wl, torch.ones_like(l))
        up_s, up_c = torch.where(bottom, k * m, up_s), torch.where(bottom, lo - k * wl + k * e, up_c)
        cap = (wl >= lo) & (wl < hi) & (wu > hi) & (hi - wl >= wu - hi)  # y <= w beats y <= hi
        up_s, up_c = torch.where(cap, m.expand_as(l), up_s), torch.where(cap, e.expand_as(l), up_c)
        # a neuron whose output the bounds fix (a split of branch and bound) is that constant
        flat = f_lo == f_hi
        lo_s, up_s = torch.where(flat, zero, lo_s), torch.where(flat, zero, up_s)
        return lo_s, torch.where(flat, f_lo, lo_c), up_s, torch.where(flat, f_hi, up_c)

    def free_corners(self, l, u):
        """Where lines() picks between two sound lines, any mix of them is sound (alpha-CROWN):
        below the bottom corner f >= max(m acc - err, f_lo) >= a (m acc - err) + (1 - a) f_lo, and
        above the top one f <= min(m acc + err, f_hi) <= a (m acc + err) + (1 - a) f_hi, for
        a in [0, 1]. Returns (lower mask, upper mask, lines() with both masks' a at its pick,
        and the pieces (m, err, f_lo, f_hi)) for alpha_lines."""
        lines = self.lines(l, u)
        l, u = l - _TOL - 1e-12 * l.abs(), u + _TOL + 1e-12 * u.abs()
        f_lo, f_hi = self.ibp(l, u)
        m, e, lo, hi = self.m.to(l), self.err_over(l, u), self.lo, self.hi
        vl, vu, wl, wu = m * l - e, m * u - e, m * l + e, m * u + e
        flat = f_lo == f_hi
        low = (vl < lo) & (vu > lo) & (vu <= hi) & ~flat
        up = (wl >= lo) & (wl < hi) & (wu > hi) & ~flat
        return low, up, lines, (m.expand_as(l), e, f_lo, f_hi)

    @staticmethod
    def alpha_lines(corners, a_lo, a_up):
        """lines() with the free corners' lines mixed by a_lo, a_up (clamped to [0, 1])."""
        low, up, (lo_s, lo_c, up_s, up_c), (m, e, f_lo, f_hi) = corners
        a_lo, a_up = a_lo.clamp(0, 1), a_up.clamp(0, 1)
        lo_s = torch.where(low, a_lo * m, lo_s)
        lo_c = torch.where(low, (1 - a_lo) * f_lo - a_lo * e, lo_c)
        up_s = torch.where(up, a_up * m, up_s)
        up_c = torch.where(up, (1 - a_up) * f_hi + a_up * e, up_c)
        return lo_s, lo_c, up_s, up_c


class Table:
    """An element-wise int8 -> int8 map (the input normalisation's MUL/ADD/SUB by constants),
    tabulated from LiteRT's reference kernels on every int8 value: values (256, *shape) are
    the outputs (u_out) for inputs u = -128 - zp .. 127 - zp. Each element's map must be
    monotone (a product with a constant of one sign, a sum), so interval bounds are its ends;
    the linear relaxation is one line per element with the table's largest deviations from
    it as intercepts, sound over the whole int8 range."""

    def __init__(self, values, zp_in, shape):
        v = torch.as_tensor(values, dtype=torch.float64).reshape(256, -1)
        d = v.diff(dim=0)
        if not ((d >= 0).all(0) | (d <= 0).all(0)).all():
            raise VeriSparseError("an element-wise op at the input is not monotone in its input; "
                                  "the int8 verifier supports normalisation by constants only")
        self.values, self.offset, self.shape = v, 128 + int(zp_in), tuple(shape)
        u = torch.arange(256, dtype=torch.float64).unsqueeze(1) - self.offset
        self.slope = (v[-1] - v[0]) / 255.0
        dev = v - self.slope * u
        self.c_lo, self.c_hi = dev.min(0).values, dev.max(0).values

    def _at(self, u):
        idx = (u.flatten(1).round() + self.offset).clamp(0, 255).long()
        return self.values.to(u.device).gather(0, idx).reshape(u.shape)

    def forward(self, u):
        return self._at(u)

    def smooth(self, u):
        """The table's middle line: a differentiable stand-in for the attacks' surrogates."""
        k, c = (t.view(self.shape).to(u) for t in (self.slope, (self.c_lo + self.c_hi) / 2))
        return k * u + c

    def ibp(self, l, u):
        a, b = self._at(torch.ceil(l - _TOL)), self._at(torch.floor(u + _TOL))
        return torch.minimum(a, b), torch.maximum(a, b)

    def unstable(self, l, u):
        return torch.zeros_like(l, dtype=torch.bool)

    def lines(self, l, u):
        f_lo, f_hi = self.ibp(l, u)
        k = self.slope.view(self.shape).to(l).expand_as(l)
        lo_c, hi_c = (c.view(self.shape).to(l).expand_as(l) for c in (self.c_lo, self.c_hi))
        flat = f_lo == f_hi
        zero = torch.zeros_like(l)
        return (torch.where(flat, zero, k), torch.where(flat, f_lo, lo_c),
                torch.where(flat, zero, k), torch.where(flat, f_hi, hi_c))


class Pad2d:
    """Zero padding of u = q - zp (TFLite pads with the zero point), for asymmetric SAME pads."""

    def __init__(self, top, bottom, left, right, in_shape):
        self.pads, self.in_shape = (left, right, top, bottom), tuple(in_shape)

    def forward(self, x):
        return F.pad(x, self.pads)

    def ibp(self, l, u):
        return self.forward(l), self.forward(u)

    def backward(self, A):
        le, r, t, b = self.pads
        H, W = A.shape[-2:]
        return A[..., t:H - b, le:W - r], A.new_zeros(A.shape[:2])


class NHWCReshape:
    """TFLite RESHAPE of an NHWC tensor, on the NCHW tensors used here."""

    def __init__(self, in_shape, out_shape):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @staticmethod
    def _to_nhwc(x, shape):
        return x.permute(0, 2, 3, 1) if len(shape) == 3 else x

    @staticmethod
    def _to_nchw(x):
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x

    def forward(self, x):
        flat = self._to_nhwc(x, self.in_shape).reshape(x.shape[0], int(np.prod(self.in_shape)))
        out = self.out_shape
        nhwc = (out[1], out[2], out[0]) if len(out) == 3 else out
        return self._to_nchw(flat.reshape(x.shape[0], *nhwc)).contiguous()

    def ibp(self, l, u):
        return self.forward(l), self.forward(u)

    def backward(self, A):
        B, S = A.shape[:2]
        inv = NHWCReshape(self.out_shape, self.in_shape)
        return inv.forward(A.reshape(B * S, *self.out_shape)).reshape(B, S, *self.in_shape), A.new_zeros(B, S)


def margin_ibp(net: BoundedNet, l, u, C):
    """IBP lower bounds on the int8 margins C·q, with the last layer merged into the spec.

    Plain IBP bounds each logit alone and subtracts, which forgets that the logits share
    their inputs. Where the net ends in an affine op, a Requant and at most a reshape to
    (classes,), the margin q_y - q_j is also at least m_y·acc_y - m_j·acc_j - err_y - err_j,
    a linear function of the last hidden layer that IBP bounds as a whole — provided q_y is
    never clamped at the top and q_j never at the bottom (then clamping only helps), which
    the per-logit intervals decide. Returns the larger of the two bounds, from one interval
    pass; plain IBP where the net ends otherwise."""
    end = len(net.ops)
    last = net.ops[-1] if end else None
    if isinstance(last, NHWCReshape) and int(np.prod(last.in_shape)) == last.in_shape[0]:
        end -= 1  # (K, 1, 1) -> (K,) keeps the class order
    if end < 2 or not isinstance(net.ops[end - 1], Requant) or \
            not isinstance(net.ops[end - 2], (ops.Linear, ops.Conv2d)):
        return net.ibp(l, u, C)[0]
    rq, affine = net.ops[end - 1], net.ops[end - 2]
    for op in net.ops[:end - 2]:
        l, u = op.ibp(l, u)
    acc_l, acc_u = affine.ibp(l, u)
    f_l, f_u = (t.flatten(1) for t in rq.ibp(acc_l, acc_u))
    mid, rad = (f_u + f_l) / 2, (f_u - f_l) / 2
    plain = torch.einsum("bsk,bk->bs", C, mid) - torch.einsum("bsk,bk->bs", C.abs(), rad)
    m, err = rq.m.flatten().to(C), rq.err_over(acc_l, acc_u).flatten(1)
    A, const = affine.backward((C * m).view(*C.shape[:2], *rq.shape))
    merged = concretize(A, const, l, u, True) - torch.einsum("bsk,bk->bs", C.abs(), err)
    pos, neg = (C > 0).to(C), (C < 0).to(C)
    clamped = pos @ (f_u >= rq.hi).to(C).unsqueeze(-1) + neg @ (f_l <= rq.lo).to(C).unsqueeze(-1)
    return torch.where(clamped.squeeze(-1) > 0, plain, torch.maximum(plain, merged))


class Int8Model:
    """The integer network: BoundedNet over u = q - zp, plus the input/output quantization."""

    def __init__(self, net, in_scale, in_zp, in_shape_nchw, out_scale, out_zp, num_classes):
        self.net, self.in_scale, self.in_zp = net, in_scale, in_zp
        self.in_shape, self.out_scale, self.out_zp, self.num_classes = in_shape_nchw, out_scale, out_zp, num_classes

    def quantize(self, x, mode="away", nudge=0.0):
        """Pixel values -> int8 minus the zero point; mode 'away' is TFLite's rounding (half away
        from zero), 'even' numpy's, used to make input boxes hold for either. nudge moves
        x / scale by that relative amount first (outward rounding of a box end)."""
        v = np.asarray(x, np.float64) / self.in_scale
        v = v + nudge * np.abs(v)
        r = np.sign(v) * np.floor(np.abs(v) + 0.5) if mode == "away" else np.round(v)
        return np.clip(r + self.in_zp, -128, 127) - self.in_zp

    def input_box(self, x_l, x_u):
        """The int8 inputs (minus zp) that the pixel box [x_l, x_u] can quantize to, for
        either rounding of halves and for x / scale evaluated in float32 rather than exactly
        (off by a few float32 ulps: the 2^-20 relative nudge outward covers that)."""
        lo = np.minimum(self.quantize(x_l, "away", -QUANT_NUDGE), self.quantize(x_l, "even", -QUANT_NUDGE))
        hi = np.maximum(self.quantize(x_u, "away", QUANT_NUDGE), self.quantize(x_u, "even", QUANT_NUDGE))
        return torch.from_numpy(lo), torch.from_numpy(hi)

    def forward_int(self, u):
        """int8 outputs minus the output zero point for u (float64 NCHW), exactly."""
        return self.net.forward(u)


def from_graph(g, kernels="reference", data=None) -> Int8Model:
    """Build the Int8Model from a verisparse.tflite_graph.Graph; refuses what it cannot verify.
    kernels: whose requantization the bounds cover (KERNELS; Requant). data: the .tflite
    bytes, needed where the graph starts with MUL/ADD/SUB by constants (Table)."""
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise VeriSparseError("the int8 model must have one input and one output")
    t_in, t_out = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    for t, what in ((t_in, "input"), (t_out, "output")):
        if t.dtype != np.int8 or len(t.scale) != 1 or not t.scale[0] > 0:
            raise VeriSparseError(f"the model's {what} must be int8 with one scale (a full-integer model); "
                                  f"it is {np.dtype(t.dtype).name}")
    shape = _nchw(t_in.shape, "input")
    cur, result = g.inputs[0], []
    lead = _leading_elementwise(g)
    if lead:
        if kernels != "reference":
            raise VeriSparseError(f"the model starts with {'/'.join(g.operators[k].opcode for k in range(lead))}, "
                                  "whose XNNPACK arithmetic is not modelled; verify with --kernels reference")
        if data is None:
            raise VeriSparseError("element-wise ops at the input need the model's bytes to tabulate them")
        cur = g.operators[lead - 1].outputs[0]
        out_t = g.tensors[cur]
        if tuple(out_t.shape) != tuple(t_in.shape):
            raise VeriSparseError("an element-wise op at the input changes the shape (broadcasting the input)")
        result.append(Table(_tabulate(data, g, cur, t_in, out_t, shape), int(t_in.zero_point[0]), shape))
    for k, op in enumerate(g.operators):
        if k < lead:
            continue
        where = f"operator {k} ({op.opcode})"
        if not op.inputs or op.inputs[0] != cur or len(op.outputs) != 1:
            raise VeriSparseError(f"{where}: the graph is not a chain of supported ops")
        if any(i >= 0 and i != cur and g.tensors[i].data is None for i in op.inputs[1:]):
            raise VeriSparseError(f"{where}: only constant weights/biases are supported")
        out = g.tensors[op.outputs[0]]
        for i in (*op.inputs, *op.outputs):  # the same checks as the firmware generator's
            if i >= 0:
                check_quantization(g.tensors[i], where)
        if op.opcode == "RESHAPE":
            new = _nchw(out.shape, "reshape output")
            if int(np.prod(new)) != int(np.prod(shape)):
                raise VeriSparseError(f"{where}: cannot reshape {shape} into {new}")
            _same_quant(g.tensors[cur], out, where)
            result.append(NHWCReshape(shape, new))
            shape = new
        elif op.opcode == "PAD":
            pad = _pad(g, op, g.tensors[cur], out, shape, where)
            result.append(pad)
            shape = (shape[0], shape[1] + pad.pads[2] + pad.pads[3], shape[2] + pad.pads[0] + pad.pads[1])
            if _nchw(out.shape, "pad output") != shape:
                raise VeriSparseError(f"{where}: padding does not give the output shape {tuple(out.shape)}")
        elif op.opcode in ("CONV_2D", "FULLY_CONNECTED"):
            layer_ops, shape = _affine(g, op, g.tensors[cur], out, shape, where, kernels)
            result += layer_ops
        else:
            raise VeriSparseError(f"{where}: unsupported op; the int8 verifier supports {SUPPORTED}")
        cur = op.outputs[0]
    if cur != g.outputs[0] or len(shape) != 1:
        raise VeriSparseError(f"the graph must end in a (1, classes) int8 tensor; it ends in {shape}")
    model = Int8Model(BoundedNet(result), float(t_in.scale[0]), int(t_in.zero_point[0]),
                      _nchw(t_in.shape, "input"), float(t_out.scale[0]), int(t_out.zero_point[0]), shape[0])
    model.kernels = kernels
    return model


def _leading_elementwise(g):
    """How many operators at the start are MUL/ADD/SUB of the activation by a constant."""
    cur, k = g.inputs[0], 0
    while k < len(g.operators):
        op = g.operators[k]
        if op.opcode not in ELEMENTWISE or len(op.inputs) != 2 or op.inputs[0] != cur or \
                g.tensors[op.inputs[1]].data is None or op.options.get("fused_activation", "NONE") != "NONE":
            break
        cur, k = op.outputs[0], k + 1
    return k


def _tabulate(data, g, index, t_in, t_out, shape):
    """u_out of tensor index for every input whose elements all hold one int8 value, run by
    LiteRT's reference kernels (which keep every tensor): (256, *shape), NCHW."""
    from verisparse.int8_runtime import litert
    it = litert(data, reference=True, keep_tensors=True)
    inp = it.get_input_details()[0]["index"]
    rows = []
    for v in range(-128, 128):
        it.set_tensor(inp, np.full(tuple(t_in.shape), v, np.int8))
        it.invoke()
        rows.append(it.get_tensor(index).astype(np.float64) - float(t_out.zero_point[0]))
    t = np.stack(rows)[:, 0]
    return t.transpose(0, 3, 1, 2) if t.ndim == 4 else t.reshape(256, *shape)


def _nchw(shape, what):
    s = tuple(int(v) for v in shape)
    if len(s) == 4 and s[0] == 1:
        return (s[3], s[1], s[2])
    if len(s) == 2 and s[0] == 1:
        return (s[1],)
    raise VeriSparseError(f"{what} shape {s} is not (1, H, W, C) or (1, N)")


def _pad(g, op, t_in, t_out, shape, where) -> Pad2d:
    """TFLite PAD of height and width; int8 PAD fills with the zero point, which is u = 0."""
    if len(shape) != 3:
        raise VeriSparseError(f"{where}: PAD needs an image (NHWC) input, not {shape}")
    top, bottom, left, right = spatial_paddings(g, op, where)
    _same_quant(t_in, t_out, where)
    return Pad2d(top, bottom, left, right, shape)


def _same_quant(a, b, where):
    if not (np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)):
        raise VeriSparseError(f"{where}: changing the quantization is not supported")


def _affine(g, op, t_in, t_out, shape, where, kernels):
    """CONV_2D / FULLY_CONNECTED with int8 per-channel weights and int32 bias -> (ops, out shape)."""
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        raise VeriSparseError(f"{where}: the weights input is missing")
    w_t = g.tensors[op.inputs[1]]
    b_t = g.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if w_t.dtype != np.int8 or t_in.dtype != np.int8 or t_out.dtype != np.int8:
        raise VeriSparseError(f"{where}: only int8 activations and weights are supported")
    if np.any(w_t.zero_point != 0):
        raise VeriSparseError(f"{where}: weights must be symmetric (zero point 0)")
    out_ch = w_t.shape[0]
    if b_t is not None and (b_t.dtype != np.int32 or b_t.shape != (out_ch,)):
        raise VeriSparseError(f"{where}: bias must be int32 of shape ({out_ch},)")
    w_scale = np.broadcast_to(w_t.scale, (out_ch,)).astype(np.float64) if len(w_t.scale) in (1, out_ch) else None
    if w_scale is None or (len(w_t.scale) > 1 and w_t.quantized_dimension != 0):
        raise VeriSparseError(f"{where}: weight scales must be per-tensor or per output channel")
    # TFLite computes the effective scale in double from the float32 scales
    q, s = checked_multipliers(float(t_in.scale[0]) * w_scale / float(t_out.scale[0]), where)
    bias = torch.from_numpy((b_t.data if b_t is not None else np.zeros(out_ch, np.int32)).astype(np.float64))
    W = torch.from_numpy(np.array(w_t.data, dtype=np.float64))
    result = []
    if op.opcode == "FULLY_CONNECTED":
        n_in = int(np.prod(shape))
        if W.dim() != 2 or W.shape[1] != n_in or op.options.get("keep_num_dims"):
            raise VeriSparseError(f"{where}: weights {tuple(W.shape)} do not fit {n_in} inputs")
        if len(shape) != 1:
            result.append(NHWCReshape(shape, (n_in,)))
        result.append(ops.Linear(W, bias))
        out_shape = (out_ch,)
    else:
        if len(shape) != 3 or W.dim() != 4 or W.shape[3] != shape[0]:
            raise VeriSparseError(f"{where}: weights {tuple(W.shape)} do not fit input {shape}")
        o = op.options
        if o.get("dilation_h", 1) != 1 or o.get("dilation_w", 1) != 1:
            raise VeriSparseError(f"{where}: dilated convolution is not supported")
        sh, sw = o.get("stride_h", 0), o.get("stride_w", 0)
        if sh < 1 or sw < 1:
            raise VeriSparseError(f"{where}: strides must be positive")
        kh, kw = W.shape[1], W.shape[2]
        W = W.permute(0, 3, 1, 2).contiguous()  # OHWI -> OIHW
        (h, w), pads = shape[1:], (0, 0, 0, 0)
        if o.get("padding") == "SAME":
            oh, ow = -(-h // sh), -(-w // sw)
            th, tw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        elif o.get("padding") != "VALID":
            raise VeriSparseError(f"{where}: unknown padding {o.get('padding')}")
        if pads[0] == pads[1] and pads[2] == pads[3]:
            conv_in, padding = shape, (pads[0], pads[2])
        else:
            result.append(Pad2d(*pads, shape))
            conv_in, padding = (shape[0], h + pads[0] + pads[1], w + pads[2] + pads[3]), (0, 0)
        oh = (conv_in[1] + 2 * padding[0] - kh) // sh + 1
        ow = (conv_in[2] + 2 * padding[1] - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise VeriSparseError(f"{where}: kernel does not fit the input {shape}")
        result.append(ops.Conv2d(W, bias, (sh, sw), padding, conv_in))
        out_shape = (out_ch, oh, ow)
    # the input offset: acc = sum w (q_in - zp_in) + bias, and u already is q_in - zp_in
    act = op.options.get("fused_activation", "NONE")
    qmin, qmax = activation_range(act, t_out.scale[0], t_out.zero_point[0], where)
    result.append(Requant(q, s, int(t_out.zero_point[0]), qmin, qmax, out_shape,
                          both_roundings=op.opcode == "FULLY_CONNECTED", kernels=kernels))
    if len(t_out.scale) != 1:
        raise VeriSparseError(f"{where}: output activations must have one scale")
    return result, out_shape
