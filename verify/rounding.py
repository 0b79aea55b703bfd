"""Floating-point soundness: bounds that hold for the network a float32 runtime executes.

A verifier that computes bounds in float32 with round-to-nearest, on a network that a runtime
also executes in float32, can certify a point the runtime misclassifies: large biases that
cancel leave margins of 1e-5 on logits near 1,000, below float32's resolution there. So every
bound that is reported or certified is computed on sound_net(net), which accounts for two
kinds of rounding, each as an error interval added to an affine op's output (IBP widens by
it; CROWN pulls it back through |A|):

1. The runtime's. An affine op's output sums n products and a bias; in any order, blocked or
   with FMA, fl(w·x + b) lies within gamma(k)·(|w|·|x| + |b|) of the real value, where
   gamma(k) = k·u / (1 - k·u), u = 2^-24, and k counts the op's roundings (n, plus the
   constants a runtime folds in: `roundings` on the op). Higham, Accuracy and Stability of
   Numerical Algorithms, 2nd ed., §3.1.
2. The bound computation's own, in float32 or float64 (unit roundoff u_c). Every sum the
   bound rules form at an op, forward (W·mid + b, |W|·rad) or backward (A·W, A·b, and the
   ReLU relaxation's A·intercept, which is at most 2·|A|·|input|), is a sum of terms
   bounded by |A|·(|W|·h + |b|) with h = max(|l|, |u|) of the op's input: a computed CROWN
   coefficient differs from the exact one by at most gamma(m)·|A|·|W|, and the bound stays a
   bound once that times h is subtracted. So the same interval, with gamma over the op's
   fan-in, fan-out and the ops after it, covers it. Sums over the input box are charged
   where bounds are concretized (BoundedNet.unit). Each interval is enlarged by 1% for the
   rounding of its own computation.
ReLU, reshapes and comparisons are exact in floating point. TF32 (PyTorch's default for
float32 convolutions on recent GPUs) breaks the model of point 2, so bound computations run
with it off (no_tf32). The runtime is assumed to evaluate each op as such sums (ONNX Runtime's
MLAS and PyTorch's CPU kernels do); Winograd or FFT convolution is outside this model.

float32 bounds are fast and slightly looser; float64 ones (u_c = 2^-53) are as tight as
exact arithmetic allows, at several times the cost on CPU: the verifier and the trainer's
evaluation run float32 first and float64 on what that leaves open.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from .alpha_crown import alpha_crown
from .bounds import BoundedNet
from .ops import Conv2d, Linear

U32 = 2.0 ** -24


def gamma(k, u=U32):
    """Higham's gamma_k: the relative error bound of k rounding steps."""
    return k * u / (1 - k * u)


def converted(net: BoundedNet, dtype, device=None) -> BoundedNet:
    """A copy of net whose tensors have dtype (float32 weights upcast exactly to float64), on
    device (None: where they are)."""
    ops = []
    for op in net.ops:
        new = copy.copy(op)
        for k, v in vars(op).items():
            if isinstance(v, torch.Tensor):
                setattr(new, k, v.detach().to(device=device, dtype=dtype if v.is_floating_point() else None))
        ops.append(new)
    return BoundedNet(ops)


def net_device(net):
    return next((v.device for op in net.ops for v in vars(op).values() if isinstance(v, torch.Tensor)),
                torch.device("cpu"))


def _sizes(net, in_shape, dtype):
    """Per-sample element counts at each op's input and output."""
    device = net_device(net)
    x = torch.zeros(1, *in_shape, dtype=dtype, device=device)
    sizes = []
    for op in net.ops:
        y = op.forward(x)
        sizes.append((x.numel(), y.numel()))
        x = y
    return sizes


def _runtime_roundings(op):
    """The runtime's roundings per output neuron (broadcast over the op's output): a product
    with a zero weight is an exact zero, and adding one (or an FMA with it) leaves the sum as it
    is, in any order, so a pruned weight takes no rounding: a 90%-sparse layer's rows sum a tenth
    of the terms. Padding's zeros are such products too. The float weights are the exported
    ones, whose zeros ONNX Runtime multiplies as they are."""
    k = op.roundings
    if isinstance(op, Linear):
        return ((op.weight != 0).sum(1) + (k - op.weight.shape[1])).to(op.weight.dtype)
    if isinstance(op, Conv2d):
        nonzero = (op.weight != 0).flatten(1).sum(1)
        return (nonzero + (k - op.weight[0].numel())).to(op.weight.dtype).view(-1, 1, 1)
    return k


def _error_interval(op, g):
    def err(l, u):
        return g * op.magnitude(torch.maximum(l.abs(), u.abs()))
    return err


def sound_net(net: BoundedNet, in_shape, dtype=torch.float64, device=None) -> BoundedNet:
    """A copy of net in dtype (on device) whose bounds hold for the network as a float32
    runtime executes it, whatever the rounding of the bound arithmetic (see above)."""
    c = converted(net, dtype, device)
    u_c = torch.finfo(dtype).eps / 2
    depth = len(c.ops) + 8  # partial sums carried across ops, the spec's few terms
    errors = {}
    for i, (op, (n_in, n_out)) in enumerate(zip(c.ops, _sizes(c, in_shape, dtype))):
        k = getattr(op, "roundings", 0)
        if k:
            g = gamma(_runtime_roundings(op)) + gamma(k + n_out + depth, u_c) + 2 * gamma(n_in + depth, u_c)
            errors[i] = _error_interval(op, 1.01 * g)
    return BoundedNet(c.ops, errors=errors, unit=u_c)


@contextlib.contextmanager
def no_tf32():
    """Bound computations in full float32 on GPUs: TF32 keeps 10 bits of mantissa."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _inf(sign, like):
    """+-inf as a 0-d tensor of like's dtype on like's device (nextafter's direction)."""
    return torch.tensor(sign * np.inf, dtype=like.dtype, device=like.device)


def sound_box(x, eps, lo=0.0, hi=1.0):
    """The L-inf ball of radius eps around x (float32 inputs), as a float64 box rounded
    outward: it contains every float32 point within eps of x in real arithmetic."""
    x = torch.as_tensor(x).double()
    x_l = torch.nextafter(x - eps, _inf(-1, x))
    x_u = torch.nextafter(x + eps, _inf(1, x))
    return x_l.clamp(lo, hi), x_u.clamp(lo, hi)


def inner_box(x, eps, lo=0.0, hi=1.0):
    """The float32 points of that ball, as a float32 box rounded inward: where a
    counterexample must lie to be one."""
    x64 = torch.as_tensor(x).double()
    # float64 subtraction may round past the real end by an ulp: step one more inward
    want_l = torch.nextafter(x64 - eps, _inf(1, x64)).clamp(lo, hi)
    want_u = torch.nextafter(x64 + eps, _inf(-1, x64)).clamp(lo, hi)
    x_l, x_u = want_l.float(), want_u.float()
    x_l = torch.where(x_l.double() < want_l, torch.nextafter(x_l, _inf(1, x_l)), x_l)
    x_u = torch.where(x_u.double() > want_u, torch.nextafter(x_u, _inf(-1, x_u)), x_u)
    return x_l, x_u


def outward(x_l, x_u, dtype):
    """The box [x_l, x_u] in dtype, rounded outward."""
    lo, hi = x_l.to(dtype), x_u.to(dtype)
    lo = torch.where(lo.double() > x_l.double(), torch.nextafter(lo, _inf(-1, lo)), lo)
    hi = torch.where(hi.double() < x_u.double(), torch.nextafter(hi, _inf(1, hi)), hi)
    return lo, hi


class SoundBounds:
    """One network's sound bounds, float32 first and float64 on what that leaves open, on
    device (None: where net's tensors are); inputs and results stay where the caller has them."""

    def __init__(self, net: BoundedNet, in_shape, device=None):
        self.nets = {torch.float32: sound_net(net, in_shape, torch.float32, device),
                     torch.float64: sound_net(net, in_shape, torch.float64, device)}
        self.device = net_device(self.nets[torch.float32])

    def tighten(self, x_l, x_u, C, y, lb, todo, stages):
        """Raise the margin lower bounds lb (float64, (B, S)) of the rows in todo (bool) with
        each stage in turn, (dtype, 'ibp' | 'crown-ibp' | 'crown' | 'alpha-crown'), only on rows still
        unverified; returns the bool mask of rows some stage touched last, per stage."""
        from .bounds import verified
        touched = []
        with torch.no_grad(), no_tf32():
            for dtype, kind in stages:
                rows = (todo & ~verified(lb, y)).nonzero().squeeze(1)
                touched.append(rows)
                if not len(rows):
                    continue
                net = self.nets[dtype]
                lo, hi = (v.to(self.device) for v in outward(x_l[rows], x_u[rows], dtype))
                Cr = C[rows].to(device=self.device, dtype=dtype)
                if kind == "ibp":
                    new = net.ibp(lo, hi, Cr)[0]
                elif kind == "alpha-crown":
                    new = alpha_crown(net, lo, hi, Cr)
                else:
                    new = net.crown(lo, hi, Cr, "ibp" if kind == "crown-ibp" else "crown")
                lb[rows] = torch.maximum(lb[rows], new.double().to(lb.device))
        return touched
