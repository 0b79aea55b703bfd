"""Full-integer int8 TFLite from a folded model, with TensorFlow's converter.

The folded torch model is re-expressed as a tf.function over NHWC tensors with the weights
as constants: convolution kernels go (O, I, kh, kw) -> (kh, kw, I, O), and the Linear layer
that reads a flattened feature map gets its columns permuted from torch's C,H,W order to
TFLite's H,W,C order, so no TRANSPOSE op is needed. Symmetric padding becomes SAME where
SAME pads exactly the same, else an explicit PAD.

Dense layers are written as 1x1 CONV_2D over a [1, 1, 1, F] map rather than FULLY_CONNECTED:
LiteRT's FULLY_CONNECTED rounds the requantization once while TFLM (and so the firmware)
rounds twice, so their outputs differ by one step on some inputs; their CONV_2D kernels agree
bit for bit, and the arithmetic (per-channel weights, int32 bias) is the same."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import warnings

import numpy as np
from torch import nn

from verisparse.errors import VeriSparseError
from verisparse.trainer.layers import Normalize


def _same_equivalent(size, k, s, p):
    out_torch = (size + 2 * p - k) // s + 1
    out_same = math.ceil(size / s)
    pad_total = max((out_same - 1) * s + k - size, 0)
    return out_torch == out_same and pad_total // 2 == p


def _program(model: nn.Sequential, in_shape):
    """[(op, params)] over NHWC tensors, and the NHWC input shape."""
    prog, shape = [], tuple(in_shape)  # torch (C, H, W) or (F,)
    flat_from = None  # the (C, H, W) map the next Linear reads flattened
    for m in model:
        if isinstance(m, Normalize):
            prog.append(("affine", (1.0 / m.std).numpy(), (-m.mean / m.std).numpy()))
        elif isinstance(m, nn.Conv2d):
            (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
            _, h, w = shape
            kernel = m.weight.detach().numpy().transpose(2, 3, 1, 0)
            if (ph, pw) == (0, 0):
                pad = "VALID"
            elif _same_equivalent(h, kh, sh, ph) and _same_equivalent(w, kw, sw, pw):
                pad = "SAME"
            else:
                prog.append(("pad", ph, pw))
                pad = "VALID"
            prog.append(("conv", kernel, m.bias.detach().numpy(), (sh, sw), pad))
            shape = (m.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        elif isinstance(m, nn.Flatten):
            prog.append(("flatten", int(np.prod(shape))))
            flat_from = shape if len(shape) == 3 else None
            shape = (int(np.prod(shape)),)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().numpy()
            if flat_from is not None:
                c, h, wd = flat_from  # columns in torch's C,H,W order -> H,W,C
                w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
                flat_from = None
            prog.append(("dense", w.T[None, None].copy(), m.bias.detach().numpy()))
            shape = (m.out_features,)
        elif isinstance(m, nn.ReLU):
            prog.append(("relu",))
        else:
            raise VeriSparseError(f"the int8 exporter does not support layer {type(m).__name__}")
    if not isinstance(model[-1], nn.Linear):
        raise VeriSparseError("the int8 exporter expects the model to end with a Linear layer")
    nhwc = (in_shape[1], in_shape[2], in_shape[0]) if len(in_shape) == 3 else tuple(in_shape)
    if len(in_shape) == 1:  # an MLP reads [1, 1, 1, F] maps throughout
        prog.insert(0, ("flatten", in_shape[0]))
    return prog, nhwc


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@contextlib.contextmanager
def _captured_native_output():
    """TensorFlow's C++ core logs straight to fds 1 and 2; keep that off the user's terminal,
    and hand it back for the error message when the conversion fails."""
    with tempfile.TemporaryFile() as log:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def convert_int8(model: nn.Sequential, in_shape, calibration: np.ndarray) -> bytes:
    """The int8-in, int8-out TFLite flatbuffer, calibrated on `calibration` (torch layout)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")

    prog, nhwc = _program(model, in_shape)

    def forward(x):
        for op in prog:
            kind = op[0]
            if kind == "affine":
                x = x * tf.constant(op[1]) + tf.constant(op[2])
            elif kind == "pad":
                x = tf.pad(x, [[0, 0], [op[1], op[1]], [op[2], op[2]], [0, 0]])
            elif kind == "conv":
                x = tf.nn.conv2d(x, tf.constant(op[1]), strides=[1, *op[3], 1], padding=op[4]) + op[2]
            elif kind == "flatten":
                x = tf.reshape(x, [-1, 1, 1, op[1]])
            elif kind == "dense":
                x = tf.nn.conv2d(x, tf.constant(op[1]), strides=[1, 1, 1, 1], padding="VALID") + op[2]
            elif kind == "relu":
                x = tf.nn.relu(x)
        return tf.reshape(x, [-1, x.shape[-1]])

    fn = tf.function(forward, input_signature=[tf.TensorSpec([1, *nhwc], tf.float32)])
    samples = to_nhwc(calibration.astype(np.float32))

    def representative():
        for i in range(len(samples)):
            yield [samples[i:i + 1]]

    holder = tf.Module()  # the converter's current path wants the object that owns the function
    holder.forward = fn
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with _captured_native_output() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return conv.convert()
        except Exception as e:  # the converter raises many types; all mean the same to the user
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise VeriSparseError(f"TensorFlow's converter failed: {e}\n{tail}") from None
