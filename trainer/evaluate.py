"""Clean, IBP-verified and CROWN-verified accuracy on a split."""
from __future__ import annotations

import torch

from verisparse.verify.attack import pgd
from verisparse.verify.bounds import margin_spec, verified
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.rounding import SoundBounds, no_tf32, sound_box


@torch.no_grad()
@no_tf32()  # every figure here is reported as verified: the clean pass too runs in full float32
def evaluate(model, x, y, eps, num_classes, full_crown=True, batch_size=200, device="cpu", attack=True):
    """Accuracies in [0, 1]. A sample counts as verified only if it is also classified
    correctly. attack=False stops after IBP (clean and IBP-verified accuracy only): while
    IBP verifies little, the PGD attack on every point it leaves open is most of a training
    run's evaluation time. full_crown=False stops after CROWN-IBP: full CROWN on a
    half-trained network (robust enough to resist PGD, with many unstable neurons) costs
    about a minute per 1,000 mnist5k samples on 2 cores. Each margin's CROWN bound is taken
    together with IBP's (the larger of two sound lower bounds is sound), so CROWN-verified >=
    IBP-verified by construction. Each stage runs only on what the cheaper one before it left
    open: IBP, a PGD attack (a point it breaks cannot be verified by anything sound),
    CROWN-IBP (IBP intermediate bounds), then CROWN. pgd_robust_acc is the attack's upper
    bound on the verified accuracy.
    The bounds are verify.rounding's sound ones (the model's float32 rounding and their own
    charged; never TF32; full CROWN ends in float64), so the reported figures are claims the
    verifier would make."""
    was_training = model.training
    model.eval()
    net = bounded_net(model, x.shape[1:])
    sound = SoundBounds(net, x.shape[1:])
    n_clean = n_ibp = n_pgd = 0
    n_ver = {"ibp": 0, "crown": 0}
    gen = torch.Generator().manual_seed(0)
    for s in range(0, len(y), batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        correct = net.forward(xb).argmax(1) == yb
        x_l, x_u = sound_box(xb, eps)
        C = margin_spec(yb, num_classes).double()
        lb = torch.full(C.shape[:2], -torch.inf, dtype=torch.float64, device=C.device)
        sound.tighten(x_l, x_u, C, yb, lb, correct, [(torch.float32, "ibp")])
        ok_ibp = verified(lb, yb) & correct
        n_clean += int(correct.sum())
        n_ibp += int(ok_ibp.sum())
        open_ = correct & ~ok_ibp
        if not attack:
            continue
        if open_.any():
            _, broken = pgd(net.forward, xb[open_], yb[open_], eps, generator=gen)
            open_[open_.clone()] = ~broken
        n_pgd += int((ok_ibp | open_).sum())
        for kind, stages in (("ibp", [(torch.float32, "crown-ibp")]),
                             ("crown", [(torch.float32, "crown"), (torch.float64, "crown")])):
            if kind == "crown" and not full_crown:
                break
            sound.tighten(x_l, x_u, C, yb, lb, open_, stages)
            n_ver[kind] += int((verified(lb, yb) & correct & (open_ | ok_ibp)).sum())
    model.train(was_training)
    n = len(y)
    out = dict(clean_acc=n_clean / n, ibp_verified_acc=n_ibp / n)
    if attack:
        out.update(crown_ibp_verified_acc=n_ver["ibp"] / n, pgd_robust_acc=n_pgd / n)
    if attack and full_crown:
        out["crown_verified_acc"] = n_ver["crown"] / n
    return out
