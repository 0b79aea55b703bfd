"""Clean, IBP-verified and CROWN-verified accuracy on a split."""
from __future__ import annotations

import torch

from verisparse.verify.bounds import input_box, margin_spec, verified
from verisparse.verify.from_torch import bounded_net


@torch.no_grad()
def evaluate(model, x, y, eps, num_classes, crown=True, batch_size=200, device="cpu"):
    """Accuracies in [0, 1]. A sample counts as verified only if it is also classified
    correctly. Each margin's CROWN bound is taken together with IBP's (the larger of two
    sound lower bounds is sound), so CROWN-verified >= IBP-verified by construction; CROWN runs
    only on the samples IBP leaves open."""
    was_training = model.training
    model.eval()
    net = bounded_net(model, x.shape[1:])
    n_clean = n_ibp = n_crown = 0
    for s in range(0, len(y), batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        correct = net.forward(xb).argmax(1) == yb
        x_l, x_u = input_box(xb, eps)
        C = margin_spec(yb, num_classes)
        lb_ibp = net.ibp(x_l, x_u, C)[0]
        ok_ibp = verified(lb_ibp, yb) & correct
        n_clean += int(correct.sum())
        n_ibp += int(ok_ibp.sum())
        ok_crown = ok_ibp.clone()
        todo = (correct & ~ok_ibp).nonzero().squeeze(1)
        if crown and len(todo):
            lb = net.crown(x_l[todo], x_u[todo], C[todo], intermediate="crown")
            ok_crown[todo] = verified(torch.maximum(lb, lb_ibp[todo]), yb[todo])
        n_crown += int(ok_crown.sum())
    model.train(was_training)
    n = len(y)
    out = dict(clean_acc=n_clean / n, ibp_verified_acc=n_ibp / n)
    if crown:
        out["crown_verified_acc"] = n_crown / n
    return out
