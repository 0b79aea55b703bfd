"""The model zoo. Every model is an nn.Sequential of masked layers whose shapes adapt to
the dataset's input shape and class count."""
from __future__ import annotations

from torch import nn

from verisparse.errors import VeriSparseError

from .layers import MaskedConv2d, MaskedLinear, Normalize


def _mlp(in_shape, classes, widths):
    layers, width = [nn.Flatten()], _numel(in_shape)
    for w in widths:
        layers += [MaskedLinear(width, w), nn.ReLU()]
        width = w
    return layers + [MaskedLinear(width, classes)]


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _conv_out(hw, k, s, p):
    return (hw + 2 * p - k) // s + 1


def _cnn(in_shape, classes, convs, fcs, batchnorm):
    """convs: (channels, kernel, stride, padding) per conv layer; fcs: hidden widths."""
    if len(in_shape) != 3:
        raise VeriSparseError(f"convolutional models need image input (C, H, W); this dataset's is {in_shape}")
    layers, (c, h, w) = [], in_shape
    for out, k, s, p in convs:
        h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        if h < 1 or w < 1:
            raise VeriSparseError(f"input {in_shape} is too small for this architecture")
        layers += [MaskedConv2d(c, out, k, s, p)] + ([nn.BatchNorm2d(out)] if batchnorm else []) + [nn.ReLU()]
        c = out
    layers.append(nn.Flatten())
    width = c * h * w
    for f in fcs:
        layers += [MaskedLinear(width, f)] + ([nn.BatchNorm1d(f)] if batchnorm else []) + [nn.ReLU()]
        width = f
    return layers + [MaskedLinear(width, classes)]


ARCHS = {
    "mlp_2layer": lambda s, k, bn: _mlp(s, k, [256]),
    "mlp_3layer": lambda s, k, bn: _mlp(s, k, [256, 256]),
    "mlp_5layer": lambda s, k, bn: _mlp(s, k, [256] * 4),
    "cnn_4layer": lambda s, k, bn: _cnn(s, k, [(16, 4, 2, 1), (32, 4, 2, 1)], [100], bn),
    "cnn_7layer": lambda s, k, bn: _cnn(
        s, k, [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)], [512], bn),
}


def build_model(arch: str, in_shape, num_classes: int, normalize=None, batchnorm: bool = False) -> nn.Sequential:
    """normalize: (mean, std) per channel, or None for raw [0, 1] inputs."""
    if arch not in ARCHS:
        raise VeriSparseError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if batchnorm and arch.startswith("mlp"):
        raise VeriSparseError("--batchnorm is offered for the cnn architectures only")
    layers = ARCHS[arch](tuple(in_shape), num_classes, batchnorm)
    if normalize is not None:
        layers.insert(0, Normalize(*normalize))
    return nn.Sequential(*layers)


def prunable(model: nn.Sequential):
    """The masked layers in order: (index in the Sequential, module)."""
    return [(i, m) for i, m in enumerate(model) if isinstance(m, (MaskedLinear, MaskedConv2d))]
