"""alpha-CROWN's intermediate layers: the input bounds of every relaxed op, optimised too.

CROWN bounds an intermediate ReLU's input (pre-activation) by pulling a one-hot row back
through the ReLUs below it with fixed lower slopes. Here each unstable (sample, neuron) pair
of a layer gets two rows (its lower bound and, negated, its upper bound), each with its own
lower slopes in [0, 1] for every ReLU below: any choice is sound, so every step's bound is a
bound. A step computes the layers bottom-up, each from the ones below as that step has them,
and keeps the tighter of the new bound and the best so far (both sound), so the tensors are
differentiable in every slope below the output and the output's gradient tightens what it
leans on. Pairs CROWN already proves stable stay as they are: bounds only get tighter.
"""
from __future__ import annotations

import torch

from .bounds import _Layers
from .ops import AvgPool2d, Conv2d, Linear, ReLU

# slope entries (rows x neurons below) all intermediate layers may take together; deepest
# layers first (the output leans on them most, and they have the fewest unstable neurons)
MAX_INTERMEDIATE = 4_000_000


class Intermediate:
    """The optimisable input bounds of the relaxed ops of lay (CROWN's, from output_problem)."""

    def __init__(self, net, lay, x_l, x_u, relus, budget=MAX_INTERMEDIATE):
        self.net, self.lay, self.x_l, self.x_u = net, lay, x_l, x_u
        self.best = {i: (l.detach(), u.detach()) for i, (l, u) in lay.pre.items()}
        self.starts, self._cur = [], None
        first = min(lay.pre) if lay.pre else 0
        exact_first = sum(isinstance(op, (Linear, Conv2d, AvgPool2d)) for op in net.ops[:first]) <= 1
        used = 0
        for k in sorted(relus, reverse=True):
            if k == first and exact_first:
                continue  # one affine map of a box: its interval bounds are exact
            l, u = (t.flatten(1) for t in lay.pre[k])
            s, n = ReLU.unstable(l, u).nonzero(as_tuple=True)
            below = [j for j in relus if j < k]
            size = 2 * len(s) * sum(lay.pre[j][0][0].numel() for j in below)
            if not len(s) or not below or used + size > budget:
                continue
            used += size
            rows = l.new_zeros(len(s), 2, l.shape[1])
            rows[torch.arange(len(s)), 0, n] = 1.0
            rows[torch.arange(len(s)), 1, n] = -1.0
            rows = rows.view(len(s), 2, *lay.pre[k][0].shape[1:])
            alpha = {j: ReLU.lines(*lay.pre[j])[0][s].unsqueeze(1).expand(-1, 2, *lay.pre[j][0].shape[1:])
                     .clone().requires_grad_(True) for j in below}
            self.starts.append((k, s, n, rows, alpha))
        self.starts.reverse()  # bottom-up: a layer's bounds use this step's bounds below it

    def parameters(self):
        return [a for *_, alpha in self.starts for a in alpha.values()]

    def layers(self):
        """This step's layers: every optimised input bound computed again from its slopes."""
        cur = _Layers(self.lay.l, self.lay.u)
        cur.err, cur.pre = self.lay.err, dict(self.best)
        for k, s, n, rows, alpha in self.starts:
            slopes = {}
            for j, a in alpha.items():
                l, u = cur.pre[j]
                fixed = ReLU.lines(l.detach(), u.detach())[0][s].unsqueeze(1)
                slopes[j] = torch.where(ReLU.unstable(l, u)[s].unsqueeze(1), a, fixed)
            A, c = self.net._backward(rows, k, cur, True, rows=s, slopes=slopes)
            b = self.net._concretize(A, c, self.x_l[s], self.x_u[s], True)
            l, u = cur.pre[k]
            lf, uf = l.flatten(1), u.flatten(1)
            lf = lf.index_put((s, n), _tighter(b[:, 0], lf[s, n]))
            uf = uf.index_put((s, n), -_tighter(b[:, 1], -uf[s, n]))  # upper = -lower(-row)
            cur.pre[k] = (lf.view_as(l), uf.view_as(u))
        self._cur = cur
        return cur

    def remember(self):
        """Keep the last step's bounds (never looser than the best: they contain it)."""
        if self._cur is not None:
            self.best = {i: (l.detach(), u.detach()) for i, (l, u) in self._cur.pre.items()}


def _tighter(new, best):
    """max(new, best) in value, the gradient of new: where the best so far wins (often by a
    rounding, against _refine's differently ordered sums) the slopes below still learn."""
    return new + (best.detach() - new.detach()).clamp(min=0)
