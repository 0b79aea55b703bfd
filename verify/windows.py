"""Linear functions of one conv-map neuron, pulled back as windows instead of whole maps.

A neuron of a conv layer depends on a small patch of the map below it (its receptive field),
so the linear function CROWN pulls back from it is zero outside a window that grows by one
kernel per conv layer. BoundedNet._refine bounds every unstable (sample, neuron) pair this
way when only convolutions, per-channel affine maps and ReLUs lie below: each pair costs its
window's size instead of the whole map's, which is most of full CROWN's time on a conv net.
The sums are the same terms as the whole-map pass (the entries outside a window are zeros),
so the bounds are the same up to the order of float additions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ops import Conv2d

# a window no smaller than this part of the map saves too little to pay for its gathers
MAX_WINDOW_FRACTION = 0.5


@dataclass
class Windows:
    A: torch.Tensor       # (U, C, h, w): each unit's linear function on its window
    top: torch.Tensor     # (U,) the window's first row in map coordinates (may be < 0)
    left: torch.Tensor    # (U,) its first column


def unit_windows(A, ops_below, max_fraction=MAX_WINDOW_FRACTION):
    """A (U, C, H, W), one linear function per unit on a conv map: the smallest common-size
    windows that hold each unit's nonzero entries, or None when windows would not pay."""
    if A.dim() != 4 or not any(isinstance(op, Conv2d) for op in ops_below):
        return None
    H, W = A.shape[-2:]
    support = A.ne(0).any(1)  # (U, H, W)
    rows, cols = support.any(2), support.any(1)
    top, bottom = _first(rows), H - 1 - _first(rows.flip(1))
    left, right = _first(cols), W - 1 - _first(cols.flip(1))
    h = int((bottom - top).max().clamp(min=0)) + 1
    w = int((right - left).max().clamp(min=0)) + 1
    if h * w > max_fraction * H * W:
        return None
    return Windows(gather(A, torch.arange(len(A), device=A.device), top, left, h, w), top, left)


def _first(mask):
    """Per row of a (U, N) bool mask, the first True index (0 where there is none)."""
    return torch.where(mask.any(1), mask.int().argmax(1), torch.zeros_like(mask[:, 0], dtype=torch.long))


def gather(T, sample, top, left, h, w):
    """Windows of per-sample maps T (N, C, H, W): (R, C, h, w) for rows taking sample[r]'s map
    from (top[r], left[r]); zero where a window leaves the map."""
    H, W = T.shape[-2:]
    pt, pl = max(0, -int(top.min())), max(0, -int(left.min()))
    pb, pr = max(0, int(top.max()) + h - H), max(0, int(left.max()) + w - W)
    Tp = F.pad(T, (pl, pr, pt, pb)) if pt or pl or pb or pr else T
    ih = (top + pt).unsqueeze(1) + torch.arange(h, device=T.device)  # (R, h)
    iw = (left + pl).unsqueeze(1) + torch.arange(w, device=T.device)
    out = Tp[sample[:, None, None], :, ih[:, :, None], iw[:, None, :]]  # (R, h, w, C)
    return out.permute(0, 3, 1, 2)


def _inside(top, left, h, w, H, W):
    """(R, 1, h, w) mask: which window entries lie on the map."""
    r = (top.unsqueeze(1) + torch.arange(h, device=top.device)).unsqueeze(2)
    c = (left.unsqueeze(1) + torch.arange(w, device=top.device)).unsqueeze(1)
    return ((r >= 0) & (r < H) & (c >= 0) & (c < W)).unsqueeze(1)


def backward_windows(ops, win: Windows, units, sample, end, lay, x_l, x_u):
    """Lower bounds by BoundedNet._backward for rows (unit units[r] of win, on sample
    sample[r]) through ops[:end], on windows, of both A and -A (spec rows 0 and 1). Returns
    (A (R, 2, ...), const (R, 2), box_l, box_u): the linear functions on the input window and
    the input box on the same window (zero off the input)."""
    from .bounds import _relaxed, _through_lines
    A, top, left = win.A[units], win.top[units], win.left[units]
    A = torch.stack([A, -A], 1)
    const = A.new_zeros(len(units), 2)
    for i in reversed(range(end)):
        op = ops[i]
        h, w = A.shape[-2:]
        if i in lay.err:
            e = gather(lay.err[i], sample, top, left, h, w)
            const = const - (A.abs() * e.unsqueeze(1)).flatten(2).sum(-1)
        if _relaxed(op):
            lines = tuple(t if t is None or t.dim() == 0 else gather(t, sample, top, left, h, w) for t in op.lines(*lay.pre[i]))
            A, c = _through_lines(A, lines, True)
        elif isinstance(op, Conv2d):
            (sh, sw), (ph, pw) = _pair(op.stride), _pair(op.padding)
            c = A.new_zeros(const.shape) if op.bias is None else torch.einsum("rschw,c->rs", A, op.bias)
            A = _adjoint(op, h, w, A.dtype, A.device).apply(A)
            top, left = top * sh - ph, left * sw - pw
            A = A * _inside(top, left, *A.shape[-2:], *op.in_shape[1:]).unsqueeze(1)
        else:  # per-channel affine: the window keeps its place
            A, c = op.backward(A)
        const = const + c
    h, w = A.shape[-2:]
    return A, const, gather(x_l, sample, top, left, h, w), gather(x_u, sample, top, left, h, w)


class _Adjoint:
    """A conv's adjoint on an (h, w) window as one matrix (the window's whole receptive field,
    padding included): one matrix product per batch of windows, which small convolutions on
    many tiny maps do not get from conv_transpose2d."""

    def __init__(self, op, h, w, dtype, device):
        C = op.weight.shape[0]
        eye = torch.eye(C * h * w, dtype=dtype, device=device).view(-1, C, h, w)
        out = F.conv_transpose2d(eye, op.weight.to(dtype=dtype, device=device), None, _pair(op.stride))
        self.shape = out.shape[1:]
        self.matrix = out.flatten(1)
        self.weight = op.weight

    def apply(self, A):
        return (A.flatten(2) @ self.matrix).view(*A.shape[:2], *self.shape)


def _adjoint(op, h, w, dtype, device):
    """op's window adjoint, cached on the op for fixed weights; weights being trained get a
    fresh one each call, through which gradients flow."""
    if op.weight.requires_grad and torch.is_grad_enabled():
        return _Adjoint(op, h, w, dtype, device)
    cache = op.__dict__.setdefault("_window_adjoints", {})
    key = (h, w, dtype, device)
    adj = cache.get(key)
    if adj is None or adj.weight is not op.weight:  # copies of an op (sound_net) share the dict
        adj = cache[key] = _Adjoint(op, h, w, dtype, device)
    return adj


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
