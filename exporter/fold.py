"""Fold a trained masked model into the smaller dense model that ships.

Masks are applied, eval-mode BatchNorm is merged into the layer before it, and hidden units
that cannot matter are removed with the next layer's matching inputs: units a structured
mask pruned, units whose incoming weights are all zero (their constant output relu(b) is
moved into the next layer's bias where that is exact), and units nothing reads. Unstructured
zeros inside surviving units stay zeros; compressed storage is the firmware's business.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from verisparse.errors import VeriSparseError
from verisparse.trainer.layers import Normalize


@dataclass
class Block:
    """One affine layer (BatchNorm merged) and whether a ReLU follows it."""
    kind: str                 # "conv" | "linear"
    weight: torch.Tensor
    bias: torch.Tensor
    relu: bool
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    flatten_before: bool = False
    in_hw: tuple | None = None  # spatial size of a conv's input, or of the map a linear flattens


def _blocks(model: nn.Sequential, in_shape):
    """The model as [Normalize?] + blocks; raises on layers the exporter cannot fold."""
    norm, blocks, flatten, hw = None, [], False, tuple(in_shape[1:]) if len(in_shape) == 3 else None
    for m in model:
        if isinstance(m, Normalize):
            if blocks:
                raise VeriSparseError("Normalize is supported only as the first layer")
            norm = m
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.effective_weight() if hasattr(m, "effective_weight") else m.weight
            b = m.effective_bias() if hasattr(m, "effective_bias") else m.bias
            b = torch.zeros(w.shape[0]) if b is None else b
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise VeriSparseError(f"the exporter folds plain convolutions only, not {m}")
                blocks.append(Block("conv", w.detach().clone(), b.detach().clone(), False, m.stride, m.padding,
                                    in_hw=hw))
                hw = tuple((hw[i] + 2 * m.padding[i] - m.kernel_size[i]) // m.stride[i] + 1 for i in range(2))
            else:
                blocks.append(Block("linear", w.detach().clone(), b.detach().clone(), False,
                                    flatten_before=flatten, in_hw=hw if flatten else None))
                flatten, hw = False, None
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not blocks or blocks[-1].relu:
                raise VeriSparseError("BatchNorm must follow a Linear or Conv2d layer to be folded")
            scale = m.weight.detach() / torch.sqrt(m.running_var + m.eps)
            blk = blocks[-1]
            blk.weight = blk.weight * scale.view(-1, *([1] * (blk.weight.dim() - 1)))
            blk.bias = (blk.bias - m.running_mean) * scale + m.bias.detach()
        elif isinstance(m, nn.ReLU):
            if not blocks:
                raise VeriSparseError("a ReLU before the first layer cannot be exported")
            blocks[-1].relu = True
        elif isinstance(m, nn.Flatten):
            flatten = True
        else:
            raise VeriSparseError(f"the exporter does not support layer {type(m).__name__}; supported: "
                                  "Normalize, Linear, Conv2d, BatchNorm, ReLU, Flatten")
    if not blocks or blocks[-1].relu:
        raise VeriSparseError("the model must end with a Linear layer producing the logits")
    return norm, blocks


def _in_cols(blk: Block, unit: int):
    """Indices along the input axis of blk that read hidden unit (channel) `unit`."""
    if blk.flatten_before and blk.in_hw is not None:
        n = blk.in_hw[0] * blk.in_hw[1]
        return torch.arange(unit * n, (unit + 1) * n)
    return torch.tensor([unit])


def _constant_foldable(nxt: Block):
    """A constant input unit can move into nxt's bias exactly unless zero padding makes its
    contribution depend on position."""
    return nxt.kind == "linear" or all(p == 0 for p in nxt.padding)


def _remove_dead_units(blocks):
    changed = True
    while changed:
        changed = False
        for k in range(len(blocks) - 1):
            cur, nxt = blocks[k], blocks[k + 1]
            keep = []
            for i in range(cur.weight.shape[0]):
                cols = _in_cols(nxt, i)
                reads = nxt.weight.index_select(1, cols)
                if not reads.any():
                    continue  # nothing downstream reads it
                if cur.weight[i].any():
                    keep.append(i)
                    continue
                const = torch.relu(cur.bias[i]) if cur.relu else cur.bias[i]
                if const == 0:
                    continue
                if not _constant_foldable(nxt):
                    keep.append(i)
                    continue
                nxt.bias = nxt.bias + const * reads.flatten(1).sum(1)
            if len(keep) < cur.weight.shape[0]:
                idx = torch.tensor(keep, dtype=torch.long)
                cur.weight, cur.bias = cur.weight[idx], cur.bias[idx]
                cols = torch.cat([_in_cols(nxt, i) for i in keep]) if keep else torch.zeros(0, dtype=torch.long)
                nxt.weight = nxt.weight.index_select(1, cols)
                changed = True
    for k, blk in enumerate(blocks[:-1]):
        if blk.weight.shape[0] == 0:
            raise VeriSparseError(f"layer {k} has no live unit left: the model computes a constant")
    return blocks


def fold(model: nn.Sequential, in_shape) -> nn.Sequential:
    """The folded plain torch model (Normalize?, Conv2d/Linear, ReLU, Flatten) in eval mode."""
    with torch.no_grad():
        norm, blocks = _blocks(model.eval(), in_shape)
        blocks = _remove_dead_units(blocks)
        layers = [Normalize(norm.mean.clone(), norm.std.clone())] if norm is not None else []
        for blk in blocks:
            if blk.flatten_before:
                layers.append(nn.Flatten())
            out_f, in_f = blk.weight.shape[:2]
            if blk.kind == "conv":
                layer = nn.Conv2d(in_f, out_f, tuple(blk.weight.shape[2:]), blk.stride, blk.padding)
            else:
                layer = nn.Linear(in_f, out_f)
            layer.weight.copy_(blk.weight)
            layer.bias.copy_(blk.bias)
            layers.append(layer)
            if blk.relu:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def layer_table(model: nn.Sequential, in_shape):
    """Per Linear/Conv2d layer: shape, parameters, non-zero weights, dense and effective MACs."""
    rows, x = [], torch.zeros(1, *in_shape)
    with torch.no_grad():
        for m in model:
            y = m(x)
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.effective_weight() if hasattr(m, "effective_weight") else m.weight
                positions = y[0, 0].numel() if isinstance(m, nn.Conv2d) else 1
                nz = int((w != 0).sum())
                rows.append(dict(layer=type(m).__name__, weight_shape=list(w.shape),
                                 params=w.numel() + (m.bias.numel() if m.bias is not None else 0),
                                 nonzero_weights=nz, sparsity=round(1 - nz / w.numel(), 6),
                                 dense_macs=w.numel() * positions, effective_macs=nz * positions))
            x = y
    return rows
