"""IBP and CROWN over a sequence of ops (verify.ops), on L-inf boxes, batched.

Bounds are on spec rows C·logits; for robustness the rows are margins y_true - y_j
(margin_spec). A final Linear is merged with the spec before bounding, which tightens
both IBP and CROWN at no cost.
"""
from __future__ import annotations

import torch

from .ops import AvgPool2d, Conv2d, Linear


def _relaxed(op):
    """Nonlinear ops (ReLU; the int8 verifier's requantization) have lines(l, u) instead of
    backward: two linear bounds per neuron that depend on the neuron's input bounds."""
    return hasattr(op, "lines")


def _through_lines(A, lines, lower: bool):
    """Pull A back through lo_s·x + lo_c <= f(x) <= up_s·x + up_c (per neuron; tensors shaped
    like A without its spec dimension, or 0-d): a lower bound on A·f(x) takes the lower line
    where A > 0 and the upper one where A < 0; an upper bound the other way round."""
    lo_s, lo_c, up_s, up_c = (t.unsqueeze(1) if t.dim() else t for t in lines)
    if not lower:
        lo_s, lo_c, up_s, up_c = up_s, up_c, lo_s, lo_c
    pos = A > 0
    return A * torch.where(pos, lo_s, up_s), (A * torch.where(pos, lo_c, up_c)).flatten(2).sum(-1)

# Intermediate CROWN bounds are built a chunk of neurons at a time; this caps the
# elements of one chunk's linear-function tensor (about 4 bytes each).
_MAX_A_ELEMENTS = 40_000_000


def input_box(x, eps, lo=0.0, hi=1.0):
    """The L-inf ball of radius eps around x, clipped to the input domain [lo, hi]."""
    return (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)


def margin_spec(y, num_classes):
    """C (B, K, K) with row j = e_y - e_j; row y is zero so its bound is exactly 0."""
    eye = torch.eye(num_classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def verified(margin_lower, y):
    """A sample is verified when every margin y - j (j != y) is provably positive."""
    own = torch.nn.functional.one_hot(y, margin_lower.shape[1]).bool()
    return ((margin_lower > 0) | own).all(dim=1)


def concretize(A, const, x_l, x_u, lower: bool):
    mid, rad = ((x_u + x_l) / 2).unsqueeze(1), ((x_u - x_l) / 2).unsqueeze(1)
    centre = (A * mid).flatten(2).sum(-1)
    spread = (A.abs() * rad).flatten(2).sum(-1)
    return centre + const - spread if lower else centre + const + spread


class BoundedNet:
    """The network as a list of ops; computes forward values, IBP and CROWN bounds."""

    def __init__(self, ops):
        self.ops = list(ops)

    def forward(self, x):
        for op in self.ops:
            x = op.forward(x)
        return x

    def _split_spec(self, C):
        """Merge the spec with a final Linear: returns (ops before it, spec-linear W, b)."""
        last = self.ops[-1]
        if C is not None and isinstance(last, Linear):
            W = C @ last.weight
            b = C @ last.bias if last.bias is not None else None
            return self.ops[:-1], W, b
        return self.ops, C, None

    def ibp(self, x_l, x_u, C=None):
        """Interval bounds on C·f(x) (or f(x) when C is None); returns (lower, upper)."""
        l, u, _ = self._ibp_layers(x_l, x_u, self._split_spec(C)[0])
        return self._apply_spec(l, u, C)

    def _apply_spec(self, l, u, C):
        ops, W, b = self._split_spec(C)
        if W is None:
            return l, u
        mid, rad = (u + l) / 2, (u - l) / 2
        c = torch.einsum("bsi,bi->bs", W, mid.flatten(1))
        r = torch.einsum("bsi,bi->bs", W.abs(), rad.flatten(1))
        if b is not None:
            c = c + b
        return c - r, c + r

    def _ibp_layers(self, x_l, x_u, ops):
        """IBP through ops; also returns every ReLU's pre-activation bounds, by op index."""
        pre = {}
        l, u = x_l, x_u
        for i, op in enumerate(ops):
            if _relaxed(op):
                pre[i] = (l, u)
            l, u = op.ibp(l, u)
        return l, u, pre

    def _backward(self, A, end, pre, lower: bool, rows=None):
        """Pull linear functions A of ops[end-1]'s output back to the network input.
        rows: for each batch row of A, the sample whose pre-activation bounds apply."""
        const = A.new_zeros(A.shape[:2])
        for i in reversed(range(end)):
            op = self.ops[i]
            if _relaxed(op):
                lines = op.lines(*pre[i])  # once per sample, then one copy per row
                if rows is not None:
                    lines = tuple(t[rows] if t.dim() else t for t in lines)
                A, c = _through_lines(A, lines, lower)
            else:
                A, c = op.backward(A)
            const = const + c
        return A, const

    def _refine(self, x_l, x_u, pre):
        """Tighten IBP pre-activation bounds with CROWN where IBP leaves a neuron unstable.

        Work scales with the unstable (sample, neuron) pairs: the one-hot rows are pulled
        through the affine ops below the ReLU once for all samples (those ops do not depend
        on the sample), and only then expanded to one row per pair."""
        first = min(pre)
        mixing = sum(isinstance(op, (Linear, Conv2d, AvgPool2d)) for op in self.ops[:first])
        widest = max([x_l[0].numel()] + [p[0][0].numel() for p in pre.values()])
        for i in sorted(pre):
            if i == first and mixing <= 1:
                continue  # one affine map of a box: IBP is already exact there
            l, u = pre[i]
            flat_l, flat_u = l.flatten(1).clone(), u.flatten(1).clone()
            sample, neuron = self.ops[i].unstable(flat_l, flat_u).nonzero(as_tuple=True)
            if len(sample) == 0:
                continue
            units, which = torch.unique(neuron, return_inverse=True)
            A = torch.zeros(1, len(units), flat_l.shape[1], device=l.device, dtype=l.dtype)
            A[0, torch.arange(len(units)), units] = 1.0
            A, const = A.view(1, len(units), *l.shape[1:]), A.new_zeros(1, len(units))
            j = i
            while j > 0 and not _relaxed(self.ops[j - 1]):
                A, c = self.ops[j - 1].backward(A)
                const, j = const + c, j - 1
            for part in torch.arange(len(sample), device=l.device).split(max(1, _MAX_A_ELEMENTS // widest)):
                s, rows = sample[part], which[part]
                A_rows, c_rows = A[0, rows].unsqueeze(1), const[0, rows].unsqueeze(1)
                for lower, flat, pick in ((True, flat_l, torch.maximum), (False, flat_u, torch.minimum)):
                    Ar, cr = self._backward(A_rows, j, pre, lower, rows=s)
                    bound = concretize(Ar, cr + c_rows, x_l[s], x_u[s], lower).squeeze(1)
                    flat[s, neuron[part]] = pick(flat[s, neuron[part]], bound)
            pre[i] = (flat_l.view_as(l), flat_u.view_as(u))
        return pre

    def crown(self, x_l, x_u, C, intermediate: str = "crown", upper: bool = False, with_ibp: bool = False):
        """CROWN bounds on C·f(x). intermediate='ibp' gives CROWN-IBP (IBP pre-activation
        bounds, CROWN for the output); 'crown' refines them with CROWN first.
        Returns lower bounds (B, S), or (lower, upper) when upper=True; with_ibp=True also
        returns IBP's lower bound from the same interval pass (what CROWN-IBP training mixes)."""
        ops, W, b = self._split_spec(C)
        l, u, pre = self._ibp_layers(x_l, x_u, ops)
        if intermediate == "crown" and pre:
            pre = self._refine(x_l, x_u, pre)
        elif intermediate not in ("crown", "ibp"):
            raise ValueError(f"unknown intermediate bounds {intermediate!r}")
        const0 = b if b is not None else W.new_zeros(W.shape[:2])
        Al, cl = self._backward(W, len(ops), pre, lower=True)
        result = [concretize(Al, cl + const0, x_l, x_u, True)]
        if upper:
            Au, cu = self._backward(W, len(ops), pre, lower=False)
            result.append(concretize(Au, cu + const0, x_l, x_u, False))
        if with_ibp:
            result.append(self._apply_spec(l, u, C)[0])
        return result[0] if len(result) == 1 else tuple(result)
