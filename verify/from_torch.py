"""Build a BoundedNet from a torch nn.Sequential (the trainer's models).

Masked layers expose effective_weight()/effective_bias(); input normalisation exposes
affine_params(). Tensors are referenced, not copied, so bounds stay differentiable."""
from __future__ import annotations

import torch
from torch import nn

from verisparse.errors import VeriSparseError

from . import ops
from .bounds import BoundedNet


def _weight(m):
    return m.effective_weight() if hasattr(m, "effective_weight") else m.weight


def _bias(m):
    return m.effective_bias() if hasattr(m, "effective_bias") else m.bias


def bounded_net(model: nn.Sequential, in_shape) -> BoundedNet:
    result, shape = [], tuple(in_shape)
    for m in model:
        if isinstance(m, nn.Linear):
            op = ops.Linear(_weight(m), _bias(m))
        elif isinstance(m, nn.Conv2d):
            if m.dilation != (1, 1) or m.groups != 1 or m.padding_mode != "zeros":
                raise VeriSparseError(f"Conv2d with dilation/groups/padding_mode is not supported: {m}")
            op = ops.Conv2d(_weight(m), _bias(m), m.stride, m.padding, shape)
        elif isinstance(m, nn.ReLU):
            op = ops.ReLU()
        elif isinstance(m, nn.Flatten):
            op = ops.Flatten(shape)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            op = ops.BatchNorm(m)
        elif isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad or m.ceil_mode:
                raise VeriSparseError(f"AvgPool2d needs count_include_pad=True, ceil_mode=False: {m}")
            op = ops.AvgPool2d(m.kernel_size, m.stride, m.padding, shape[0], shape)
        elif hasattr(m, "affine_params"):
            op = ops.ChannelAffine(*m.affine_params())
        else:
            raise VeriSparseError(f"layer {type(m).__name__} has no bound rules; supported: "
                                  "Linear, Conv2d, ReLU, Flatten, BatchNorm, AvgPool2d, Normalize")
        result.append(op)
        shape = _out_shape(m, shape)
    return BoundedNet(result)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_shape(m, shape):
    if isinstance(m, nn.Linear):
        return (m.out_features,)
    if isinstance(m, nn.Flatten):
        return (int(torch.tensor(shape).prod()),)
    if isinstance(m, (nn.Conv2d, nn.AvgPool2d)):
        (kh, kw), (sh, sw), (ph, pw) = (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding))
        channels = m.out_channels if isinstance(m, nn.Conv2d) else shape[0]
        return (channels, (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)
    return shape
