"""Verification of a float network, sample by sample: verified, falsified or unknown.

Stages run cheapest first and each runs only on what the one before left open:
  clean check    a misclassified point is its own counterexample;
  IBP            interval bounds (method ibp stops here);
  CROWN          linear bounds, taken together with IBP's: CROWN-IBP first, then CROWN
                 with CROWN intermediate bounds where that left a sample open (method crown
                 stops here);
  PGD            a counterexample the real runtime confirms makes the sample falsified;
  alpha-CROWN    CROWN with its ReLU lower lines optimised per spec row (verify.alpha_crown),
                 on what PGD could not break (methods alpha-crown, bab, milp and auto);
  BaB            branch and bound over ReLU splits (verify.bab), complete up to its time
                 limit per sample (methods bab and auto: auto gives it half the time limit
                 and MILP the samples and the time it leaves);
  MILP           complete, with a time limit per sample that covers its share of building
                 the encoding and of the pre-activation bounds (methods milp and auto).
A bound stage can only say "verified"; only a runtime-confirmed counterexample says
"falsified". Bounds are verify.rounding's sound ones (the float32 runtime's rounding and the
bound arithmetic's own charged; float32 first, float64 on what that leaves open) on an input
box rounded outward; counterexamples live in the float32 points of the ball (rounded inward).
The attack always runs on the samples the bounds left open, so every report
carries verified <= exact <= attack-robust.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .attack import pgd
from .bounds import BoundedNet, margin_spec, verified
from .rounding import SoundBounds, inner_box, no_tf32, outward, sound_box

METHODS = ("ibp", "crown", "alpha-crown", "bab", "milp", "auto")
IBP_STAGES = ((torch.float32, "ibp"), (torch.float64, "ibp"))
# CROWN-IBP first (IBP intermediate bounds, ~50x cheaper), full CROWN on what is left
CROWN_STAGES = ((torch.float32, "crown-ibp"), (torch.float32, "crown"), (torch.float64, "crown"))
ALPHA_STAGES = ((torch.float32, "alpha-crown"),)


@dataclass
class SampleResult:
    index: int
    label: int
    status: str                    # verified | falsified | unknown
    decided_by: str                # the stage that settled it (or the last one tried)
    margin_lower: float            # sound lower bound on min_j (z_y - z_j) over the ball
    margin_at_counterexample: float | None
    seconds: float
    counterexample: np.ndarray | None = None
    note: str | None = None        # why an open sample stayed open, when more is known than "time"

    def record(self):
        r = dict(index=self.index, label=self.label, status=self.status, decided_by=self.decided_by,
                 margin_lower=_finite(self.margin_lower), seconds=round(self.seconds, 6))
        if self.margin_at_counterexample is not None:
            r["margin_at_counterexample"] = self.margin_at_counterexample
        if self.note:
            r["note"] = self.note
        return r


def _finite(v):
    return float(v) if np.isfinite(v) else None


def _min_margin(lb, y):
    own = torch.nn.functional.one_hot(y, lb.shape[1]).bool()
    return lb.masked_fill(own, float("inf")).min(1).values


def breaks(out, y):
    """(B,) True where another class scores at least the label's: a misclassification, or an
    exact tie that leaves the class to the argmax's tie-break. This is VNN-LIB's unsafe set
    (some Y_j >= Y_label) and the negation of what the proofs claim (every margin > 0)."""
    out = torch.as_tensor(np.asarray(out, np.float64))
    y = torch.as_tensor(np.asarray(y, np.int64))
    return _min_margin(out.gather(1, y[:, None]) - out, y) <= 0


def verify_float(net: BoundedNet, runtime, x, y, eps, method="crown", indices=None, time_limit=10.0,
                 batch_size=200, attack_steps=40, attack_restarts=2, seed=0, device="cpu"):
    """runtime(x: np.ndarray float32 batch) -> logits from the artifact's own executor (ONNX
    Runtime for ONNX files); counterexamples count only when it confirms them. The IBP and
    CROWN stages run on device (TF32 off); the attack and MILP on the CPU."""
    if method not in METHODS:
        raise ValueError(method)
    indices = list(range(len(y))) if indices is None else list(indices)
    results = []
    gen = torch.Generator().manual_seed(seed)
    mnet = None
    sound = SoundBounds(net, x.shape[1:], device)
    for s in range(0, len(y), batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        out, mnet = _batch(net, sound, runtime, xb, yb, eps, method, time_limit, gen, attack_steps,
                           attack_restarts, mnet)
        for k, r in enumerate(out):
            r.index = indices[s + k]
        results += out
    return results


def _batch(net, sound, runtime, xb, yb, eps, method, time_limit, gen, steps, restarts, mnet):
    B = len(yb)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = torch.as_tensor(runtime(xb.numpy()), dtype=torch.float32)
    K = logits.shape[1]
    correct = logits.argmax(1) == yb
    x_l, x_u = sound_box(xb, eps)  # float64, for the bounds
    a_l, a_u = inner_box(xb, eps)  # float32, for counterexamples
    C = margin_spec(yb, K).double()
    lb = torch.full(C.shape[:2], -torch.inf, dtype=torch.float64)
    stage = ["ibp"] * B
    sound.tighten(x_l, x_u, C, yb, lb, correct, IBP_STAGES)
    if method != "ibp":
        for rows in sound.tighten(x_l, x_u, C, yb, lb, correct, CROWN_STAGES):
            for i in rows.tolist():
                stage[i] = "crown"
    ok = verified(lb, yb) & correct
    per_sample = (time.perf_counter() - t0) / B  # the batched stages, shared evenly
    status = np.where(ok.numpy(), "verified", "unknown").astype(object)
    status[~correct.numpy()] = "falsified"
    cex = [None] * B
    cex_margin = [None] * B
    clean_margin = _min_margin(torch.einsum("bsk,bk->bs", C.float(), logits), yb)
    for i in (~correct).nonzero().squeeze(1).tolist():
        cex[i], cex_margin[i], stage[i] = xb[i].numpy(), float(clean_margin[i]), "clean"
    seconds = np.full(B, per_sample)
    # the attack, on what the bounds left open
    open_ = (correct & ~ok).nonzero().squeeze(1)
    if len(open_):
        t1 = time.perf_counter()
        adv, broken = pgd(net.forward, xb[open_], yb[open_], eps, steps=steps, restarts=restarts, generator=gen)
        hits = open_[broken]
        if len(hits):
            adv_np = _into_box(adv[broken].numpy(), a_l[hits].numpy(), a_u[hits].numpy())
            real = torch.as_tensor(runtime(adv_np), dtype=torch.float32)
            m = _min_margin(torch.einsum("bsk,bk->bs", C[hits].float(), real), yb[hits])
            for k, i in enumerate(hits.tolist()):
                if m[k] < 0:
                    status[i], cex[i], cex_margin[i], stage[i] = "falsified", adv_np[k], float(m[k]), "pgd"
        seconds[open_.numpy()] += (time.perf_counter() - t1) / len(open_)
    if method in ("alpha-crown", "bab", "milp", "auto"):
        _alpha_stage(sound, x_l, x_u, C, yb, lb, status, stage, seconds)
    notes = [None] * B
    before_bab = seconds.copy()
    if method in ("bab", "auto"):
        _bab_stage(sound, runtime, xb, yb, (x_l, x_u), (a_l, a_u), C, lb, status, cex, cex_margin, stage, seconds,
                   notes, time_limit if method == "bab" else time_limit / 2)
    margins = _min_margin(lb, yb).numpy().astype(np.float64)
    if method in ("milp", "auto"):
        # auto: MILP gets what branch and bound left of the sample's time limit
        limits = time_limit - (seconds - before_bab)
        mnet = _milp_stage(net, runtime, xb, yb, (x_l, x_u), (a_l, a_u), lb, margins, status, cex, cex_margin,
                           stage, seconds, notes, limits, mnet)
    return [SampleResult(-1, int(yb[i]), str(status[i]), stage[i], float(margins[i]), cex_margin[i],
                         float(seconds[i]), cex[i], notes[i]) for i in range(B)], mnet


def _alpha_stage(sound, x_l, x_u, C, yb, lb, status, stage, seconds):
    todo = torch.as_tensor(status == "unknown")
    if not todo.any():
        return
    t0 = time.perf_counter()
    sound.tighten(x_l, x_u, C, yb, lb, todo, ALPHA_STAGES)
    seconds[todo.numpy()] += (time.perf_counter() - t0) / int(todo.sum())
    for i in (todo & verified(lb, yb)).nonzero().squeeze(1).tolist():
        status[i], stage[i] = "verified", "alpha-crown"


def _bab_stage(sound, runtime, xb, yb, box, inner, C, lb, status, cex, cex_margin, stage, seconds, notes,
               time_limit):
    from .alpha_crown import Optimised, optimise
    from .bab import prove_row
    (x_l, x_u), (a_l, a_u) = box, inner
    # float64: float32's own rounding charge leaves near-zero neurons unstable (5x as many in the
    # default model's first layer) and costs more margin than the slower bounds cost subdomains
    net = sound.nets[torch.float64]
    for i in [i for i in range(len(yb)) if status[i] == "unknown"]:
        t0 = time.perf_counter()
        y = int(yb[i])
        lo, hi = (v.to(sound.device) for v in outward(x_l[i:i + 1], x_u[i:i + 1], torch.float64))

        confirm = _confirmer(runtime, xb.shape[1:], a_l[i:i + 1].numpy(), a_u[i:i + 1].numpy(), y)
        rows = sorted((j for j in range(C.shape[1]) if j != y and lb[i, j] <= 0), key=lambda j: float(lb[i, j]))
        proved, stage[i] = True, "bab"
        with torch.no_grad(), no_tf32():
            Ci = C[i:i + 1, rows].to(device=sound.device, dtype=torch.float64)
            root = optimise(net, lo, hi, Ci, time_limit=time_limit / 2)  # intermediate bounds once for all rows
            for r, j in enumerate(rows):
                left = time_limit - (time.perf_counter() - t0)
                row_root = Optimised(root.lower[:, r:r + 1], root.pre, {k: v[:, r:r + 1] for k, v in root.slopes.items()})
                out = prove_row(net, lo, hi, Ci[0, r], left, lambda x: confirm(x.cpu().numpy()), row_root)
                lb[i, j] = max(float(lb[i, j]), out.lower)
                if out.counterexample is not None:
                    status[i], (cex[i], cex_margin[i]) = "falsified", confirm.found
                if not out.proved:
                    proved, notes[i] = False, out.note
                    break
        if proved:
            status[i] = "verified"
        seconds[i] += time.perf_counter() - t0


def _milp_stage(net, runtime, xb, yb, box, inner, lb, margins, status, cex, cex_margin, stage, seconds, notes,
                limits, mnet):
    """limits: each sample's seconds for this stage, its share of building the encoding (once
    per process) and of the pre-activation bounds included."""
    from .milp import MilpNet, verify_sample
    todo = [i for i in range(len(yb)) if status[i] == "unknown" and limits[i] > 0]
    if not todo:
        return mnet
    (x_l, x_u), (a_l, a_u) = box, inner
    t0 = time.perf_counter()
    mnet = mnet or MilpNet(net, xb.shape[1:])
    idx = torch.tensor(todo)
    pre, errs = mnet.pre_bounds(x_l[idx], x_u[idx])
    shared = (time.perf_counter() - t0) / len(todo)
    for k, i in enumerate(todo):
        seconds[i] += shared
        if limits[i] <= shared:
            notes[i] = "the time limit ran out before MILP could solve"
            continue
        y = int(yb[i])
        box_l, box_u = x_l[i].flatten().numpy(), x_u[i].flatten().numpy()

        confirm = _confirmer(runtime, xb.shape[1:], a_l[i:i + 1].numpy(), a_u[i:i + 1].numpy(), y)
        res = verify_sample(mnet, box_l, box_u, {j: (l[k], u[k]) for j, (l, u) in pre.items()},
                            [e[k] for e in errs], y, lb[i].numpy(), limits[i] - shared, confirm)
        stage[i], notes[i] = "milp", res.note
        seconds[i] += res.seconds
        margins[i] = max(margins[i], res.margin_lower)
        status[i] = res.status
        if res.status == "falsified":
            cex[i], cex_margin[i] = confirm.found
    return mnet


def _confirmer(runtime, shape, lo, hi, y):
    """confirm(x) -> whether the runtime misclassifies x (any array of one sample's elements),
    clipped into the float32 ball (lo, hi); the last such point and its margin: confirm.found."""
    def confirm(x):
        x32 = _into_box(np.asarray(x).reshape(1, *shape), lo, hi)
        z = np.asarray(runtime(x32), dtype=np.float64)[0]
        margin = float(z[y] - np.delete(z, y).max())
        if margin < 0:
            confirm.found = (x32[0], margin)
        return margin < 0
    return confirm


def _into_box(x, lo, hi):
    """float32 points clipped into the box, so a counterexample is inside the ball as stored."""
    return np.minimum(np.maximum(x.astype(np.float32), lo), hi)
