"""IBP and CROWN over a sequence of ops (verify.ops), on L-inf boxes, batched.

Bounds are on spec rows C·logits; for robustness the rows are margins y_true - y_j
(margin_spec). A final Linear is merged with the spec before bounding, which tightens
both IBP and CROWN at no cost.
"""
from __future__ import annotations

import torch

from .ops import AvgPool2d, ChannelAffine, Conv2d, Linear
from .windows import backward_windows, unit_windows


def _relaxed(op):
    """Nonlinear ops (ReLU; the int8 verifier's requantization) have lines(l, u) instead of
    backward: two linear bounds per neuron that depend on the neuron's input bounds."""
    return hasattr(op, "lines")


def _through_lines(A, lines, lower: bool):
    """Pull A back through lo_s·x + lo_c <= f(x) <= up_s·x + up_c (per neuron; tensors shaped
    like A without its spec dimension, or 0-d; an intercept may be None for 0): a lower bound on
    A·f(x) takes the lower line where A > 0 and the upper one where A < 0; an upper bound the other
    way round. A tensor that already has the spec dimension (alpha-CROWN's slopes, one per spec
    row) is used as it is."""
    lo_s, lo_c, up_s, up_c = (t.unsqueeze(1) if t is not None and t.dim() == A.dim() - 1 else t for t in lines)
    if not lower:
        lo_s, lo_c, up_s, up_c = up_s, up_c, lo_s, lo_c
    # A·where(A > 0, lo, up) as two products, one of them exactly 0 per entry: fewer passes.
    # where, not clamp: at A = 0 (a pruned unit's row) the gradient must take the upper line,
    # as the single-where form did; clamp would pass it to both.
    pos = torch.where(A > 0, A, A.new_zeros(()))
    neg = A - pos
    return pos * lo_s + neg * up_s, _dot(pos, lo_c) + _dot(neg, up_c)


def _dot(A, c):
    """Per (row, spec) sum of A·c; c None (zero), 0-d (one intercept for every neuron) or per neuron."""
    if c is None:
        return A.new_zeros(A.shape[:2])
    if c.dim() == 0:
        return A.flatten(2).sum(-1) * c
    # one intercept per neuron for every spec row: a batched mat-vec (15% faster full CROWN);
    # training keeps the elementwise sum, whose order compacted and masked networks share
    if c.shape[1] == 1 and not torch.is_grad_enabled():
        return (A.flatten(2) @ c.flatten(2).transpose(1, 2)).squeeze(-1)
    return (A * c).flatten(2).sum(-1)

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


def _gamma(k, unit):
    return k * unit / (1 - k * unit)


def concretize(A, const, x_l, x_u, lower: bool):
    mid, rad = ((x_u + x_l) / 2).unsqueeze(1), ((x_u - x_l) / 2).unsqueeze(1)
    centre = (A * mid).flatten(2).sum(-1)
    spread = (A.abs() * rad).flatten(2).sum(-1)
    return centre + const - spread if lower else centre + const + spread


def _windowable(op):
    """Ops a window of a linear function passes through on its own (verify.windows)."""
    return _relaxed(op) or isinstance(op, (Conv2d, ChannelAffine))


class _Layers:
    """What one interval pass learns: output bounds l, u; pre: each relaxed op's input
    bounds; err: each error interval's half-width, by op index."""

    def __init__(self, l, u):
        self.l, self.u = l, u
        self.pre, self.err = {}, {}


# Samples per full-CROWN pass on the CPU: each sample's bound is its own, and the intermediate
# passes' working set outgrows the caches with the batch (default model, 2 cores: 64 samples
# 510-690 samples/s, 200 samples 380-450).
CPU_CROWN_CHUNK = 64


class BoundedNet:
    """The network as a list of ops; computes forward values, IBP and CROWN bounds."""

    def __init__(self, ops, errors=None, unit=0.0):
        """errors: {op index: fn(l_in, u_in) -> half-width of an interval added to the op's
        output}: a runtime's rounding and the bound arithmetic's own (verify.rounding);
        unit: the unit roundoff of the bound arithmetic, charged where bounds are concretized
        over the input box (0: exact arithmetic assumed, as in training)."""
        self.ops = list(ops)
        self.errors = dict(errors or {})
        self.unit = unit

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
        lay = self._ibp_layers(x_l, x_u, self._split_spec(C)[0])
        return self._apply_spec(lay, C)

    def _apply_spec(self, lay, C):
        l, u = lay.l, lay.u
        ops, W, b = self._split_spec(C)
        if W is None:
            return l, u
        mid, rad = (u + l) / 2, (u - l) / 2
        c = torch.einsum("bsi,bi->bs", W, mid.flatten(1))
        r = torch.einsum("bsi,bi->bs", W.abs(), rad.flatten(1)) + self._spec_slack(lay, C)
        if b is not None:
            c = c + b
        return c - r, c + r

    def _ibp_layers(self, x_l, x_u, ops, clips=None):
        """IBP through ops: the output bounds, every ReLU's pre-activation bounds and every
        error interval (by op index). clips: {op index: (lo, hi)} per row, what branch and
        bound's splits assume of a relaxed op's input (its bounds are intersected with them)."""
        lay = _Layers(x_l, x_u)
        l, u = x_l, x_u
        for i, op in enumerate(ops):
            if _relaxed(op):
                if clips and i in clips:
                    l, u = torch.maximum(l, clips[i][0]), torch.minimum(u, clips[i][1])
                lay.pre[i] = (l, u)
            if i in self.errors:
                e = lay.err[i] = self.errors[i](l, u)
                l, u = op.ibp(l, u)
                l, u = l - e, u + e
            else:
                l, u = op.ibp(l, u)
        lay.l, lay.u = l, u
        return lay

    def _spec_slack(self, lay, C):
        """What C·(the final op's output) can lose to rounding when that op is merged into
        the spec (its error interval was not part of the interval pass)."""
        ops, W, _ = self._split_spec(C)
        last = len(self.ops) - 1
        if len(ops) == last and last in self.errors:
            return torch.einsum("bsk,bk->bs", C.abs(), self.errors[last](lay.l, lay.u))
        return torch.zeros(W.shape[:2], dtype=W.dtype, device=W.device)

    def _concretize(self, A, const, x_l, x_u, lower: bool, n_in=None):
        """concretize, less what its own sums over the input can round away (unit > 0).
        n_in: the input's size when A and the box are windows of it."""
        bound = concretize(A, const, x_l, x_u, lower)
        if self.unit:
            h = torch.maximum(x_l.abs(), x_u.abs()).unsqueeze(1)
            n = (n_in or x_l[0].numel()) + 4
            slack = _gamma(n, self.unit) * (A.abs() * h).flatten(2).sum(-1) + _gamma(4, self.unit) * const.abs()
            bound = bound - slack if lower else bound + slack
        return bound

    def _backward(self, A, end, lay, lower: bool, rows=None, slopes=None, trace=None, betas=None):
        """Pull linear functions A of ops[end-1]'s output back to the network input.
        rows: for each batch row of A, the sample whose pre-activation bounds apply.
        slopes: {op index: lower-line slopes shaped like A} replacing CROWN's (alpha-CROWN).
        trace: a dict that receives A at each relaxed op's output (branching scores).
        betas: {op index: terms shaped like A} added to A at that relaxed op's input, after its
        lines: beta-CROWN's multipliers of split constraints (verify.bab)."""
        pre = lay.pre
        const = A.new_zeros(A.shape[:2])
        for i in reversed(range(end)):
            op = self.ops[i]
            if i in lay.err:  # the runtime adds some e with |e| <= err[i] to this op's output
                e = lay.err[i] if rows is None else lay.err[i][rows]
                spread = (A.abs() * e.unsqueeze(1)).flatten(2).sum(-1)
                const = const - spread if lower else const + spread
            if _relaxed(op):
                if trace is not None:
                    trace[i] = A
                lines = op.lines(*pre[i])  # once per sample, then one copy per row
                if rows is not None:
                    lines = tuple(t[rows] if t is not None and t.dim() else t for t in lines)
                if slopes is not None and i in slopes:
                    lines = (slopes[i],) + tuple(lines[1:])
                A, c = _through_lines(A, lines, lower)
                if betas is not None and i in betas:
                    A = A + betas[i]
            else:
                A, c = op.backward(A)
            const = const + c
        return A, const

    def _refine(self, x_l, x_u, lay):
        """Tighten IBP pre-activation bounds with CROWN where IBP leaves a neuron unstable.

        Work scales with the unstable (sample, neuron) pairs: the one-hot rows are pulled
        through the affine ops below the ReLU once for all samples (those ops do not depend
        on the sample), and only then expanded to one row per pair."""
        pre = lay.pre
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
            spread = l.new_zeros(len(units), len(l))  # runtime errors, per (unit, sample)
            j = i
            while j > 0 and not _relaxed(self.ops[j - 1]):
                if j - 1 in lay.err:
                    spread = spread + A[0].abs().flatten(1) @ lay.err[j - 1].flatten(1).T
                A, c = self.ops[j - 1].backward(A)
                const, j = const + c, j - 1
            win = unit_windows(A[0], self.ops[:j]) if all(map(_windowable, self.ops[:j])) else None
            n_in = x_l[0].numel()
            for part in torch.arange(len(sample), device=l.device).split(max(1, _MAX_A_ELEMENTS // (2 * widest))):
                s, rows = sample[part], which[part]
                # lower and upper bounds in one pass: upper(A·f) = -lower(-A·f), exactly in floats
                c_rows = torch.stack([const[0, rows], -const[0, rows]], 1)
                if win is None:
                    Ar = A[0, rows].unsqueeze(1)
                    Ar, cr = self._backward(torch.cat([Ar, -Ar], 1), j, lay, True, rows=s)
                    box_l, box_u = x_l[s], x_u[s]
                else:
                    Ar, cr, box_l, box_u = backward_windows(self.ops, win, rows, s, j, lay, x_l, x_u)
                cr = cr + c_rows - spread[rows, s].unsqueeze(1)
                bound = self._concretize(Ar, cr, box_l, box_u, True, n_in)
                n = neuron[part]
                flat_l[s, n] = torch.maximum(flat_l[s, n], bound[:, 0])
                flat_u[s, n] = torch.minimum(flat_u[s, n], -bound[:, 1])
            pre[i] = (flat_l.view_as(l), flat_u.view_as(u))
        return lay

    def crown(self, x_l, x_u, C, intermediate: str = "crown", upper: bool = False, with_ibp: bool = False):
        """CROWN bounds on C·f(x). intermediate='ibp' gives CROWN-IBP (IBP pre-activation
        bounds, CROWN for the output); 'crown' refines them with CROWN first.
        Returns lower bounds (B, S), or (lower, upper) when upper=True; with_ibp=True also
        returns IBP's lower bound from the same interval pass (what CROWN-IBP training mixes)."""
        k = CPU_CROWN_CHUNK
        if intermediate == "crown" and len(x_l) > k and x_l.device.type == "cpu" and not torch.is_grad_enabled():
            parts = [self.crown(x_l[s:s + k], x_u[s:s + k], None if C is None else C[s:s + k], intermediate,
                                upper, with_ibp) for s in range(0, len(x_l), k)]
            return torch.cat(parts) if torch.is_tensor(parts[0]) else tuple(map(torch.cat, zip(*parts)))
        end, W, const0, lay, slack = self.output_problem(x_l, x_u, C, intermediate)
        result = [self.output_bound(W, const0, end, lay, slack, x_l, x_u, True)]
        if upper:
            result.append(self.output_bound(W, const0, end, lay, slack, x_l, x_u, False))
        if with_ibp:
            result.append(self._apply_spec(lay, C)[0])
        return result[0] if len(result) == 1 else tuple(result)

    def output_problem(self, x_l, x_u, C, intermediate="crown", clips=None):
        """What bounding C·f(x) linearly needs: (number of ops before the spec, spec-linear W,
        its constant, the layers' bounds, the merged op's rounding slack)."""
        ops, W, b = self._split_spec(C)
        lay = self._ibp_layers(x_l, x_u, ops, clips)
        if intermediate == "crown" and lay.pre:
            lay = self._refine(x_l, x_u, lay)
        elif intermediate not in ("crown", "ibp"):
            raise ValueError(f"unknown intermediate bounds {intermediate!r}")
        const0 = b if b is not None else W.new_zeros(W.shape[:2])
        slack = self._spec_slack(lay, C) if C is not None else 0
        return len(ops), W, const0, lay, slack

    def output_bound(self, W, const0, end, lay, slack, x_l, x_u, lower: bool, slopes=None, trace=None,
                     betas=None):
        keep = _live_rows(W, const0) if slopes is None and trace is None and betas is None else None
        if keep is None:
            bound = self._linear_bound(W, const0, end, lay, x_l, x_u, lower, slopes, trace, betas)
        else:  # a spec row that is zero (a margin's own class) bounds to exactly 0: skip it
            W_live = W.gather(1, keep.view(*keep.shape, *[1] * (W.dim() - 2)).expand(*keep.shape, *W.shape[2:]))
            part = self._linear_bound(W_live, const0.gather(1, keep), end, lay, x_l, x_u, lower)
            bound = W.new_zeros(W.shape[:2]).scatter(1, keep, part)
        return bound - slack if lower else bound + slack

    def _linear_bound(self, W, const0, end, lay, x_l, x_u, lower, slopes=None, trace=None, betas=None):
        A, c = self._backward(W, end, lay, lower, slopes=slopes, trace=trace, betas=betas)
        if trace is not None:
            trace["input"] = A
        return self._concretize(A, c + const0, x_l, x_u, lower)


def _live_rows(W, const0):
    """(B, S') indices of the spec rows that are not zero, when every sample has S' < S of
    them (margin specs: all but the true class); None otherwise."""
    live = W.flatten(2).ne(0).any(-1) | const0.ne(0)
    n = live.sum(1)
    if not len(n) or not bool((n == n[0]).all()) or int(n[0]) == W.shape[1]:
        return None
    return live.nonzero()[:, 1].view(len(n), -1)
