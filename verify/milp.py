"""Complete verification by mixed-integer linear programming (scipy.optimize.milp / HiGHS).

The network is rewritten as alternating affine maps (float64 sparse matrices, built from
each op's own backward rule, so the MILP sees exactly the function the bound rules see) and
ReLUs. The runtime executes each affine map in float32, so its pre-activation is
z = W v + b + delta with |delta| <= e (verify.rounding bounds e per sample). Each ReLU with
pre-activation bounds l < 0 < u gets the big-M encoding
    a >= W v + b - e,  a >= 0,  a <= W v + b + e - l (1 - d),  a <= u d,  d in {0, 1},
stable ones are a = z (within e) or a = 0; the margin loses |c|·e of the logits. So a proof
covers the network as executed, not only its real-arithmetic twin. The bounds come from
CROWN, so M is as small as the incomplete verifier can make it. One MILP per wrong class j minimises the margin
z_y - z_j; HiGHS's dual bound is a proof (> 0) and its incumbent a candidate counterexample
that the caller confirms on the real runtime before calling a sample falsified.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .bounds import BoundedNet
from .ops import Conv2d, ReLU, conv_entries
from .rounding import no_tf32, sound_net

# HiGHS works to a primal feasibility tolerance of 1e-7, an integrality tolerance of 1e-6 and
# a relative gap of 1e-4; a proof must clear this margin, relative to the size of the terms
# in the objective, so that solver tolerances cannot turn a violated spec into "verified".
PROOF_MARGIN = 1e-5
_ROWS_PER_CHUNK = 2048  # rows of an op's matrix materialised at once (dense, float64)


def _op_matrix(op, in_shape):
    """(M, c) with op(x).flatten() = M @ x.flatten() + c: a convolution's from its weights,
    any other op's from its backward rule, probed a chunk of unit rows at a time (for a
    convolution, 25x slower on cnn_7layer's first layers)."""
    out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    m = int(np.prod(out_shape))
    if isinstance(op, Conv2d):
        rows, cols, vals, size = conv_entries(op, out_shape[1:], torch.float64, "cpu")
        M = sp.csr_matrix((vals.numpy(), (cols.numpy(), rows.numpy())), shape=size[::-1])
        bias = np.zeros(out_shape[0]) if op.bias is None else op.bias.double().cpu().numpy()
        return M, np.repeat(bias, m // out_shape[0]), out_shape
    blocks, consts = [], []
    for s in range(0, m, _ROWS_PER_CHUNK):
        k = min(_ROWS_PER_CHUNK, m - s)
        A = torch.zeros(1, k, m, dtype=torch.float64)
        A[0, torch.arange(k), torch.arange(s, s + k)] = 1.0
        A_in, c = op.backward(A.view(1, k, *out_shape))
        blocks.append(sp.csr_matrix(A_in.reshape(k, -1).numpy()))
        consts.append(c.reshape(-1).numpy())
    return sp.vstack(blocks).tocsr(), np.concatenate(consts), out_shape


@dataclass
class Layer:
    W: sp.csr_matrix  # (m, n): from the previous ReLU's output (or the input) to this layer
    b: np.ndarray
    relu_index: int | None  # index in net.ops of the ReLU that follows; None for the logits
    parts: list  # (op index, |matrix| of the op) for the ops composed into W, in order


class MilpNet:
    """executed=False models the real-arithmetic network alone (the runtime's error left out):
    for checking the encoding against brute force, never for a verdict."""

    def __init__(self, net: BoundedNet, in_shape, executed=True):
        self.net = sound_net(net, in_shape)
        self.executed = executed
        self.in_shape = tuple(in_shape)
        self.layers: list[Layer] = []
        shape, W, b, parts = self.in_shape, None, None, []
        for i, op in enumerate(self.net.ops):
            if isinstance(op, ReLU):
                self.layers.append(Layer(W, b, i, parts))
                W, b, parts = None, None, []
                continue
            M, c, shape = _op_matrix(op, shape)
            parts.append((i, abs(M)))
            W, b = (M, c) if W is None else ((M @ W).tocsr(), M @ b + c)
        if W is None:
            raise ValueError("the network must end in an affine layer")
        self.layers.append(Layer(W, b, None, parts))

    @torch.no_grad()
    @no_tf32()
    def pre_bounds(self, x_l, x_u):
        """Sound CROWN pre-activation bounds of the executed network, per ReLU op index, and
        the half-width of the runtime's error on each layer's output, per layer: (B, n) arrays."""
        net = self.net
        lay = net._ibp_layers(x_l.double(), x_u.double(), net.ops)
        if lay.pre:
            lay = net._refine(x_l.double(), x_u.double(), lay)
        pre = {i: (l.flatten(1).numpy(), u.flatten(1).numpy()) for i, (l, u) in lay.pre.items()}
        errs = []
        for layer in self.layers:  # an op's error passes through the ops composed after it
            e = np.zeros((len(x_l), 0))
            for i, M_abs in layer.parts:
                e = (M_abs @ e.T).T if e.shape[1] else np.zeros((len(x_l), M_abs.shape[0]))
                if i in lay.err and self.executed:
                    e = e + lay.err[i].flatten(1).numpy()
            errs.append(e)
        return pre, errs

    def solve(self, x_l, x_u, pre, errs, c, time_limit):
        """min c . logits(x) over the box [x_l, x_u] (flat float64 arrays), for the network as
        executed (errs: this sample's runtime error half-width per layer).
        Returns (lower bound, x at the incumbent or None, incumbent value or None, status)."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        n0 = x_l.size
        lb, ub, integ = [x_l], [x_u], [np.zeros(n0)]
        rows, lo, hi = [], [], []
        col, n_prev, prev_col = n0, n0, 0
        binaries = []  # (layer position, unstable mask) in the order their columns are added
        for layer in self.layers[:-1]:
            l, u = pre[layer.relu_index]
            m = layer.W.shape[0]
            active, inactive = l >= 0, u <= 0
            unstable = ~(active | inactive)
            a_lb = np.where(active, l, 0.0)
            a_ub = np.where(inactive, 0.0, u)
            lb.append(a_lb), ub.append(a_ub), integ.append(np.zeros(m))
            binaries.append((col, prev_col, n_prev, layer, l, u, active, unstable))
            prev_col, n_prev, col = col, m, col + m
        d_col = col
        n_bin = sum(int(b[-1].sum()) for b in binaries)
        total = d_col + n_bin
        for (a_col, v_col, n_v, layer, l, u, active, unstable), e in zip(binaries, errs):
            W, b = layer.W, layer.b
            idx_a, idx_u = np.flatnonzero(active), np.flatnonzero(unstable)
            k = len(idx_u)
            d_idx = d_col + np.arange(k)
            # active: a - W v = b, within the runtime's error e
            rows.append(_block(total, [(a_col + idx_a, sp.identity(len(idx_a))), (v_col, -W[idx_a])]))
            lo.append(b[idx_a] - e[idx_a]), hi.append(b[idx_a] + e[idx_a])
            if k:
                Wu = W[idx_u]
                eye = sp.identity(k)
                # a - W v >= b - e
                rows.append(_block(total, [(a_col + idx_u, eye), (v_col, -Wu)]))
                lo.append(b[idx_u] - e[idx_u]), hi.append(np.full(k, np.inf))
                # a - W v - l d <= b + e - l
                rows.append(_block(total, [(a_col + idx_u, eye), (v_col, -Wu), (d_idx, sp.diags(-l[idx_u]))]))
                lo.append(np.full(k, -np.inf)), hi.append(b[idx_u] + e[idx_u] - l[idx_u])
                # a - u d <= 0
                rows.append(_block(total, [(a_col + idx_u, eye), (d_idx, sp.diags(-u[idx_u]))]))
                lo.append(np.full(k, -np.inf)), hi.append(np.zeros(k))
            d_col += k
        last = self.layers[-1]
        obj = np.zeros(total)
        v_col, n_v = (binaries[-1][0], binaries[-1][3].W.shape[0]) if binaries else (0, n0)
        obj[v_col:v_col + n_v] = last.W.T @ c
        # the logits' own rounding can only lower the margin by |c|·e
        offset = float(c @ last.b - np.abs(c) @ errs[-1])
        a_max = np.maximum(np.abs(lb[-1]), np.abs(ub[-1]))
        slack = PROOF_MARGIN * (1 + float(np.abs(c) @ (abs(last.W) @ a_max + np.abs(last.b))))
        lb.append(np.zeros(n_bin)), ub.append(np.ones(n_bin)), integ.append(np.ones(n_bin))
        constraints = []
        if rows:
            constraints = [LinearConstraint(sp.vstack(rows).tocsr(), np.concatenate(lo), np.concatenate(hi))]
        start = time.perf_counter()
        # the problem always holds the clean point, so "infeasible" is a numerical failure of
        # presolve or of the tolerances: a second solve without presolve gets its own say
        for presolve in (True, False):
            left = max(time_limit - (time.perf_counter() - start), 0.01)
            with _quiet_stdout():
                res = milp(obj, integrality=np.concatenate(integ), bounds=Bounds(np.concatenate(lb), np.concatenate(ub)),
                           constraints=constraints, options=dict(time_limit=left, disp=False, presolve=presolve))
            if res.status != 2:
                break
        bound = getattr(res, "mip_dual_bound", None)
        if res.status == 0 and bound is None:
            bound = res.fun
        bound = -np.inf if bound is None or not np.isfinite(bound) or res.status == 2 else bound + offset - slack
        x = None if res.x is None else np.clip(res.x[:n0], x_l, x_u)
        value = None if res.x is None else float(res.fun + offset)
        return bound, x, value, int(res.status)


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS (as bundled with scipy) prints debugging lines to the C-level stdout even with
    disp=False; they would corrupt the verify table, so fd 1 points at /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _block(total, parts):
    """Rows whose column groups are given as (first column or column indices, matrix)."""
    mats = []
    for cols, M in parts:
        M = sp.coo_matrix(M)
        cols = np.asarray(cols)
        mapped = cols + M.col if cols.ndim == 0 else cols[M.col]
        mats.append(sp.coo_matrix((M.data, (M.row, mapped)), shape=(M.shape[0], total)))
    return sum(mats[1:], mats[0]).tocsr()


@dataclass
class MilpOutcome:
    status: str               # "verified" | "falsified" | "unknown"
    margin_lower: float       # a sound lower bound on min_j margin_j over the box
    counterexample: np.ndarray | None
    seconds: float
    note: str | None = None   # why a sample stayed open, where the solver said more than "time out"


def verify_sample(mnet: MilpNet, x_l, x_u, pre, errs, y, lower, time_limit, confirm):
    """Complete check of one sample. lower: (K,) known sound lower bounds of the margins
    (IBP/CROWN) that order the classes and skip proven ones. confirm(x) -> True when the real
    runtime misclassifies x."""
    start = time.perf_counter()
    note = None
    K = len(lower)
    best = np.array(lower, dtype=np.float64)
    best[y] = np.inf
    for j in np.argsort(best):
        if j == y or best[j] > 0:
            continue
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            break
        c = np.zeros(K)
        c[y], c[j] = 1.0, -1.0
        bound, x, value, solver_status = mnet.solve(x_l, x_u, pre, errs, c, left)
        best[j] = max(best[j], bound)
        if x is not None and value is not None and value < 0 and confirm(x):
            return MilpOutcome("falsified", float(best.min()), x, time.perf_counter() - start)
        if best[j] <= 0:
            if solver_status == 2:
                note = f"HiGHS reported the MILP for class {j} infeasible, with and without presolve"
            break  # this class is neither proven nor broken: the sample stays open
    status = "verified" if (best > 0).all() else "unknown"
    return MilpOutcome(status, float(best.min()), None, time.perf_counter() - start, note)
