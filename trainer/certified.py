"""Certified training objective (IBP and CROWN-IBP) and its schedules.

The loss mixes natural and robust cross-entropy: kappa * CE(logits) + (1 - kappa) * CE(-lb),
where lb are lower bounds on the margins y_true - y_j over the eps-ball. For CROWN-IBP,
lb = beta * CROWN-IBP bound + (1 - beta) * IBP bound, with beta annealed from 1 to 0 over
the eps ramp (Zhang et al., 2020).
"""
from __future__ import annotations

import torch.nn.functional as F

from verisparse.verify.bounds import input_box, margin_spec


def ramp_progress(step, warmup_steps, ramp_steps):
    """0 during warm-up, rising to 1 at the end of the ramp."""
    if step < warmup_steps:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - warmup_steps) / ramp_steps)


def smooth_ramp(t):
    """Slow start, slow finish (smoothstep): large eps jumps early destabilise IBP training."""
    return t * t * (3 - 2 * t)


def robust_lower_bounds(net, x, y, eps, num_classes, method, beta):
    x_l, x_u = input_box(x, eps)
    C = margin_spec(y, num_classes)
    if method == "ibp" or beta <= 0:
        return net.ibp(x_l, x_u, C)[0]
    lb_crown, lb_ibp = net.crown(x_l, x_u, C, intermediate="ibp", with_ibp=True)
    return beta * lb_crown + (1 - beta) * lb_ibp


def certified_loss(net, x, y, eps, num_classes, method="crown-ibp", beta=0.0, kappa=1.0):
    """Returns (loss, clean logits). At eps 0 this is plain cross-entropy."""
    logits = net.forward(x)
    natural = F.cross_entropy(logits, y)
    if eps <= 0 or kappa >= 1:
        return natural, logits
    lb = robust_lower_bounds(net, x, y, eps, num_classes, method, beta)
    robust = F.cross_entropy(-lb, y)
    return kappa * natural + (1 - kappa) * robust, logits
