"""Floating-point soundness: bounds that hold for the network a float32 runtime executes.

A verifier that computes bounds in float32 with round-to-nearest, on a network that a runtime
also executes in float32, can certify a point the runtime misclassifies: large biases that
cancel leave margins of 1e-5 on logits near 1,000, below float32's resolution there. So every
bound that is reported or certified is computed on sound_net(net):

1. Bound arithmetic in float64. TF32 (PyTorch's default for float32 convolutions on recent
   GPUs) never applies to float64. The remaining float64 rounding is charged as
   TAU · magnitude, where the magnitude of a quantity bounds the sum of the absolute values
   of every term it was computed from (the network of absolute weights and biases, with each
   ReLU's relaxation intercept counted as another |input|): any order of summation of n terms
   errs by at most n·u64 times that sum (Higham, Accuracy and Stability of Numerical
   Algorithms, 2nd ed., §3.1), and TAU takes n as the widest layer, times the number of ops,
   times 8 for the several passes a CROWN bound makes.
2. The runtime's float32 rounding. An affine op's output sums n products and a bias; in any
   order, blocked or with FMA, fl(w·x + b) lies within gamma(k)·(|w|·|x| + |b|) of the real
   value, gamma(k) = k·u / (1 - k·u), u = 2^-24, k = the op's `roundings` (n plus the
   roundings of constants a runtime folds in). So each affine op gets an interval of that
   half-width added to its output, from its own input bounds: IBP widens by it, CROWN pulls
   it back through |A|, and the verified margin is that of the executed network. ReLU,
   reshapes and comparisons are exact in floating point.
The assumption is that the runtime evaluates each op as such sums (ONNX Runtime's MLAS and
PyTorch's CPU kernels do); an algorithm that transforms the arithmetic (Winograd or FFT
convolution) is outside this model.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .bounds import BoundedNet

U32 = 2.0 ** -24
U64 = 2.0 ** -53


def gamma(k, u=U32):
    """Higham's gamma_k: the relative error bound of k rounding steps."""
    return k * u / (1 - k * u)


def to_float64(net: BoundedNet) -> BoundedNet:
    """A copy of net whose tensors are float64 (weights are upcast exactly)."""
    ops = []
    for op in net.ops:
        new = copy.copy(op)
        for k, v in vars(op).items():
            if isinstance(v, torch.Tensor):
                setattr(new, k, v.detach().double())
        ops.append(new)
    return BoundedNet(ops)


def _widest(net, in_shape):
    device = next((v.device for op in net.ops for v in vars(op).values() if isinstance(v, torch.Tensor)), "cpu")
    x = torch.zeros(1, *in_shape, dtype=torch.float64, device=device)
    widest = x.numel()
    for op in net.ops:
        x = op.forward(x)
        widest = max(widest, x.numel())
    return widest


def tau(net: BoundedNet, in_shape) -> float:
    """The relative error charged to float64 bound arithmetic (point 1 above)."""
    return 8 * (len(net.ops) + 2) * gamma(_widest(net, in_shape) + 2, U64)


def _runtime_error(op, g):
    def err(l, u):
        return g * op.magnitude(torch.maximum(l.abs(), u.abs()))
    return err


def sound_net(net: BoundedNet, in_shape) -> BoundedNet:
    """float64 copy of net with the float32 runtime's rounding and the bound arithmetic's own
    rounding accounted for: its bounds hold for the network as executed (see above)."""
    f64 = to_float64(net)
    t = tau(f64, in_shape)
    # each op's interval also absorbs tau on its own IBP arithmetic
    errors = {i: _runtime_error(op, gamma(op.roundings) + t) for i, op in enumerate(f64.ops)
              if getattr(op, "roundings", 0)}
    return BoundedNet(f64.ops, errors=errors, tau=t)


def sound_box(x, eps, lo=0.0, hi=1.0):
    """The L-inf ball of radius eps around x (float32 inputs), as a float64 box rounded
    outward: it contains every float32 point within eps of x in real arithmetic."""
    x = torch.as_tensor(x).double()
    x_l = torch.nextafter(x - eps, torch.tensor(-np.inf, dtype=torch.float64))
    x_u = torch.nextafter(x + eps, torch.tensor(np.inf, dtype=torch.float64))
    return x_l.clamp(lo, hi), x_u.clamp(lo, hi)


def inner_box(x, eps, lo=0.0, hi=1.0):
    """The float32 points of that ball, as a float32 box rounded inward: where a
    counterexample must lie to be one."""
    x64 = torch.as_tensor(x).double()
    # float64 subtraction may round past the real end by an ulp: step one more inward
    want_l = torch.nextafter(x64 - eps, torch.tensor(np.inf, dtype=torch.float64)).clamp(lo, hi)
    want_u = torch.nextafter(x64 + eps, torch.tensor(-np.inf, dtype=torch.float64)).clamp(lo, hi)
    x_l, x_u = want_l.float(), want_u.float()
    x_l = torch.where(x_l.double() < want_l, torch.nextafter(x_l, torch.tensor(np.inf)), x_l)
    x_u = torch.where(x_u.double() > want_u, torch.nextafter(x_u, torch.tensor(-np.inf)), x_u)
    return x_l, x_u
