"""alpha-CROWN: CROWN whose ReLU lower lines are optimised instead of chosen by rule.

CROWN bounds an unstable ReLU (l < 0 < u) from below by alpha·x for a fixed alpha (0 or 1);
every alpha in [0, 1] gives a sound bound, so alpha can be chosen per neuron, separately for
each spec row, by gradient ascent on the bound itself (Xu et al., "Fast and Complete", ICLR
2021). Each step's bound is a sound bound in its own right, so the best seen per row is
returned: never below CROWN's (the first step is CROWN), and as sound as CROWN whatever the
optimiser does. Intermediate bounds stay CROWN's; only the output's lines are optimised.
"""
from __future__ import annotations

import torch

from .bounds import BoundedNet
from .ops import ReLU

ITERATIONS = 20
LEARNING_RATE = 0.25


def alpha_crown(net: BoundedNet, x_l, x_u, C, iterations=ITERATIONS, lr=LEARNING_RATE, stop_at=0.0):
    """Lower bounds (B, S) on C·f(x) over the box; rows whose bound passes stop_at stop moving."""
    with torch.no_grad():
        end, W, const0, lay, slack = net.output_problem(x_l, x_u, C, "crown")
    relus = {i: lay.pre[i] for i in lay.pre if isinstance(net.ops[i], ReLU)}
    S = W.shape[1]
    live = C.abs().flatten(2).sum(-1) > 0  # a zero row (the true class's own margin) is exactly 0
    # per spec row: alpha (B, S, *neuron) starting at CROWN's slope; stable neurons keep theirs
    fixed, unstable, alpha = {}, {}, {}
    for i, (l, u) in relus.items():
        slope = net.ops[i].lines(l, u)[0].unsqueeze(1)
        fixed[i], unstable[i] = slope, ReLU.unstable(l, u).unsqueeze(1)
        alpha[i] = slope.expand(-1, S, *slope.shape[2:]).clone().requires_grad_(True)
    with torch.no_grad():
        best = net.output_bound(W, const0, end, lay, slack, x_l, x_u, True)
    if not alpha:
        return best
    opt = torch.optim.Adam(alpha.values(), lr=lr)

    def slopes():  # alpha where a neuron is unstable, CROWN's exact line elsewhere
        return {i: torch.where(unstable[i], alpha[i], fixed[i]) for i in alpha}

    with torch.enable_grad():
        for _ in range(iterations):
            open_rows = (best <= stop_at) & live
            if not open_rows.any():
                break
            bound = net.output_bound(W, const0, end, lay, slack, x_l, x_u, True, slopes=slopes())
            best = torch.maximum(best, bound.detach())
            # grads of the slopes only: the net's own tensors (a model's weights) stay untouched
            grads = torch.autograd.grad(-bound[open_rows].sum(), list(alpha.values()))
            for a, g in zip(alpha.values(), grads):
                a.grad = g
            opt.step()
            with torch.no_grad():
                for a in alpha.values():
                    a.clamp_(0.0, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, net.output_bound(W, const0, end, lay, slack, x_l, x_u, True, slopes=slopes()))
    return best
