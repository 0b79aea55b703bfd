"""Layers of the model zoo: linear/conv layers that carry sparsity masks, and the input
normalisation that keeps eps in pixel space."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Masked:
    """Mixin: weight_mask (weight-shaped) zeroes single weights, out_mask (one per output
    unit) zeroes whole neurons or filters together with their bias. Masks are buffers,
    so they live in the state dict and the checkpoint."""

    def _init_masks(self):
        self.register_buffer("weight_mask", torch.ones_like(self.weight))
        self.register_buffer("out_mask", torch.ones(self.weight.shape[0]))

    def _out_view(self):
        return self.out_mask.view(-1, *([1] * (self.weight.dim() - 1)))

    def effective_weight(self):
        return self.weight * self.weight_mask * self._out_view()

    def effective_bias(self):
        return None if self.bias is None else self.bias * self.out_mask


class MaskedLinear(Masked, nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_masks()

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.effective_bias())


class MaskedConv2d(Masked, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_masks()

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), self.effective_bias(), self.stride, self.padding)


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so eps keeps its pixel-space meaning."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def affine_params(self):
        return 1.0 / self.std, -self.mean / self.std

    def forward(self, x):
        view = (-1,) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(view)) / self.std.view(view)
