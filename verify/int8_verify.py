"""Verification of the int8 TFLite model that ships, on its integer arithmetic.

Cascade per batch (each stage on what the one before left open):
  clean check   LiteRT (reference kernels, TFLM's arithmetic) on the quantized point;
  int8-ibp      exact per-neuron integer intervals, the last layer merged into the margins
                (method ibp stops here);
  int8-crown    CROWN over the integer network's relaxation (methods crown and auto);
  attack        PGD on a rounding-free surrogate of the integer network, then a search of the
                integer box itself (verify.int8_attack), scored by the integer network; the
                best input runs through LiteRT: only LiteRT's verdict makes a sample falsified;
  int8-bab      branch and bound over accumulator splits (verify.int8_bab), per open margin
                row, time-limited per sample, its leaves' worst points tried on LiteRT
                (methods bab and auto).
The bounds use the eps-ball rounded outward and quantized outward; attacks stay on the float32
points of the ball (rounded inward) and the int8 inputs those quantize to.
The int8 margin is an integer, so a lower bound above a float-noise slack proves >= 1:
no tie, hence no argmax tie-break, can change the class. The other side of that rule: an
input whose output bytes tie the label with another class (LiteRT confirming them) is a
counterexample even where LiteRT's first-maximum argmax keeps the label, since another
tie-break would not (VNN-LIB's unsafe set, Y_j >= Y_label); such samples carry a note.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from verisparse.errors import VeriSparseError

from .attack import pgd
from .bounds import margin_spec
from .float_verify import SampleResult, _min_margin, breaks
from .int8_attack import integer_search
from .int8_bounds import margin_ibp
from .rounding import inner_box, no_tf32, sound_box

METHODS = ("ibp", "crown", "bab", "auto")
PROOF_SLACK = 1e-3  # float64 error on an integer margin bound is far below this
RESTARTS = 8  # random restarts of the integer search before branch and bound


def load_tflite_artifact(path, digest, kernels="reference"):
    """kernels: whose arithmetic the bounds cover (int8_bounds.KERNELS). The runtime that
    confirms counterexamples is LiteRT's reference kernels, or its default XNNPACK ones for
    'xnnpack'; under 'all' a reference counterexample falsifies (it breaks one covered kernel)."""
    from verisparse.int8_runtime import dequantize, quantize, run_litert
    from verisparse.tflite_graph import read_tflite

    from .artifact import Artifact
    from .int8_bounds import KERNELS, from_graph
    if kernels not in KERNELS:
        raise VeriSparseError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    data = path.read_bytes()
    model = from_graph(read_tflite(data), kernels, data)
    reference = kernels != "xnnpack"
    run_litert(data, np.zeros((1, *_nhwc(model.in_shape)), np.int8), reference)  # LiteRT must load it too

    def runtime(x):
        q = quantize(_to_nhwc(np.asarray(x, np.float32)), model.in_scale, model.in_zp)
        return dequantize(run_litert(data, q, reference), model.out_scale, model.out_zp)

    meta = _sidecar_metadata(path)  # verify is set by verify.artifact, which sizes the batches
    return Artifact(path, "tflite", digest, model.in_shape, model.num_classes, meta, None, METHODS, runtime,
                    extra=dict(model=model, kernels=kernels))


def _sidecar_metadata(path):
    """TFLite files carry no eps/dataset: read them from export.json / config.json beside it."""
    from verisparse.files import read_json
    for name in ("export.json", "config.json"):
        p = path.parent / name
        if p.is_file():
            try:
                d = read_json(p)
                return {k: d[k] for k in ("eps", "dataset", "seed") if k in d}
            except (OSError, ValueError):
                continue
    return {}


def _nhwc(shape):
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def _to_nhwc(x):
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def surrogate(model):
    """The integer network with rounding removed (requant = clamp(acc * m)), differentiable,
    on pixel inputs: what the attack climbs before LiteRT judges the quantized point."""
    from .int8_bounds import Requant

    def forward(x):
        u = x.double() / model.in_scale
        for op in model.net.ops:
            if isinstance(op, Requant):
                u = torch.clamp(u * op.m.to(u), op.lo, op.hi)
            else:
                u = op.smooth(u) if hasattr(op, "smooth") else op.forward(u)
        return u
    return forward


def verify_int8(model, runtime, x, y, eps, method="crown", indices=None, batch_size=200, attack_steps=40,
                attack_restarts=2, seed=0, time_limit=10.0):
    indices = list(range(len(y))) if indices is None else list(indices)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for s in range(0, len(y), batch_size):
        out = _batch(model, runtime, x[s:s + batch_size], y[s:s + batch_size], eps, method, gen,
                     attack_steps, attack_restarts, time_limit)
        for k, r in enumerate(out):
            r.index = indices[s + k]
        results += out
    return results


def _batch(model, runtime, xb, yb, eps, method, gen, steps, restarts, time_limit):
    B = len(yb)
    t0 = time.perf_counter()
    logits = torch.as_tensor(runtime(xb.numpy()))
    correct = ~breaks(logits, yb)
    x_l, x_u = sound_box(xb, eps)
    u_l, u_u = model.input_box(x_l.numpy(), x_u.numpy())
    a_l, a_u = inner_box(xb, eps)
    C = margin_spec(yb, model.num_classes).double()
    stage = ["int8-ibp"] * B
    # float64 on integer values is exact whatever the TF32 flags; no_tf32 keeps that so if a
    # float32 step is ever added here
    with torch.no_grad(), no_tf32():
        lb = margin_ibp(model.net, u_l, u_u, C)
        ok = (_min_margin(lb, yb) > PROOF_SLACK) & correct
        for intermediate in ("ibp", "crown") if method != "ibp" else ():  # CROWN-IBP, then full CROWN
            todo = (correct & ~ok).nonzero().squeeze(1)
            if len(todo):
                lb[todo] = torch.maximum(lb[todo], model.net.crown(u_l[todo], u_u[todo], C[todo], intermediate))
                ok[todo] = _min_margin(lb[todo], yb[todo]) > PROOF_SLACK
                for i in todo.tolist():
                    stage[i] = "int8-crown"
    seconds = np.full(B, (time.perf_counter() - t0) / B)
    status = np.where(ok.numpy(), "verified", "unknown").astype(object)
    cex, cex_margin, notes = [None] * B, [None] * B, [None] * B
    clean_margin = _min_margin(torch.einsum("bsk,bk->bs", C.float(), logits.float()), yb)
    for i in (~correct).nonzero().squeeze(1).tolist():
        status[i], cex[i], cex_margin[i], stage[i] = "falsified", xb[i].numpy(), float(clean_margin[i]), "clean"
        notes[i] = _tie_note(logits[i].numpy(), int(yb[i]))
    open_ = (correct & ~ok).nonzero().squeeze(1)
    if len(open_):
        t1 = time.perf_counter()
        lo, hi = a_l[open_].numpy(), a_u[open_].numpy()
        adv, _ = pgd(surrogate(model), xb[open_].double(), yb[open_], eps, steps=steps, restarts=restarts,
                     generator=gen)
        adv = np.minimum(np.maximum(adv.float().numpy(), lo), hi)
        # the int8 inputs that the ball's float32 points reach, under the runtime's own rounding
        r_l, r_u = (torch.from_numpy(model.quantize(v)) for v in (lo, hi))
        u_adv, _ = integer_search(model, torch.from_numpy(model.quantize(adv)), r_l, r_u, yb[open_], generator=gen)
        found = np.minimum(np.maximum((u_adv.numpy() * model.in_scale).astype(np.float32), lo), hi)
        # every candidate is judged by LiteRT, whatever the integer network or surrogate said
        for what, cand in (("pgd", adv), ("int8-search", found)):
            real = torch.as_tensor(runtime(cand))
            broken = breaks(real, yb[open_])
            m = _min_margin(torch.einsum("bsk,bk->bs", C[open_].float(), real.float()), yb[open_])
            for k, i in enumerate(open_.tolist()):
                note = _tie_note(real[k].numpy(), int(yb[i]))
                # a misclassification replaces a tie found before: the stronger counterexample
                if broken[k] and (status[i] != "falsified" or (notes[i] and not note)):
                    status[i], cex[i], cex_margin[i], stage[i], notes[i] = "falsified", cand[k], float(m[k]), what, note
        seconds[open_.numpy()] += (time.perf_counter() - t1) / len(open_)
    if method in ("bab", "auto"):
        todo = ((status == "unknown") & correct.numpy()).nonzero()[0]
        if len(todo):  # random restarts of the integer search first: a counterexample ends a sample at once
            t1 = time.perf_counter()
            for what, cand in _restarts(model, a_l[todo], a_u[todo], yb[todo], gen):
                real = torch.as_tensor(runtime(cand))
                m = _min_margin(torch.einsum("bsk,bk->bs", C[todo].float(), real.float()), yb[todo])
                broken = breaks(real, yb[todo])
                for k, i in enumerate(todo.tolist()):
                    note = _tie_note(real[k].numpy(), int(yb[i]))
                    if broken[k] and (status[i] != "falsified" or (notes[i] and not note)):
                        status[i], cex[i], cex_margin[i], stage[i], notes[i] = ("falsified", cand[k], float(m[k]),
                                                                                 what, note)
            seconds[todo] += (time.perf_counter() - t1) / len(todo)
        for i in ((status == "unknown") & correct.numpy()).nonzero()[0].tolist():
            t1 = time.perf_counter()
            verdict, proof = _bab_sample(model, runtime, u_l[i:i + 1], u_u[i:i + 1], a_l[i:i + 1], a_u[i:i + 1],
                                         C[i], lb[i], int(yb[i]), time_limit)
            seconds[i] += time.perf_counter() - t1
            if verdict == "verified":
                status[i], stage[i] = "verified", "int8-bab"
                lb[i] = torch.maximum(lb[i], proof)
            elif verdict is not None:
                status[i], cex[i], cex_margin[i], stage[i] = "falsified", verdict[0], verdict[1], "int8-bab"
                notes[i] = verdict[2]
    worst = _min_margin(lb, yb)
    for i in range(B):  # an integer margin bound above -1 rules out every misclassification, not a tie
        if status[i] == "unknown" and bool(correct[i]) and float(worst[i]) > PROOF_SLACK - 1:
            notes[i] = "margin >= 0 proved (no input scores another class higher); a reachable tie is open"
    margins = worst.numpy() * model.out_scale  # in logit units, as the float reports
    return [SampleResult(-1, int(yb[i]), str(status[i]), stage[i], float(margins[i]), cex_margin[i],
                         float(seconds[i]), cex[i], notes[i]) for i in range(B)]


def _tie_note(out, y):
    """What a counterexample's outputs (one row, breaking the label) show, when the label still
    has the first maximum: an exact tie, which another argmax tie-break resolves against it."""
    if int(np.argmax(out)) != y or not any(out[j] == out[y] for j in range(len(out)) if j != y):
        return None
    return "an exact tie with another class at the counterexample: the class depends on the argmax's tie-break"


def _restarts(model, a_l, a_u, y, gen, count=RESTARTS):
    """The integer search from random int8 points of the reachable box: (stage, inputs) each."""
    lo, hi = a_l.numpy(), a_u.numpy()
    r_l, r_u = (torch.from_numpy(model.quantize(v)) for v in (lo, hi))
    for _ in range(count):
        u0 = (r_l + (r_u - r_l) * torch.rand(r_l.shape, generator=gen, dtype=r_l.dtype)).round()
        u, _ = integer_search(model, u0, r_l, r_u, y, steps=60, greedy_rounds=200, generator=gen)
        yield "int8-search", np.minimum(np.maximum((u.numpy() * model.in_scale).astype(np.float32), lo), hi)


def _bab_sample(model, runtime, u_l, u_u, a_l, a_u, C, lb, y, time_limit):
    """Branch and bound on each margin row of one sample the bounds left open, sharing
    time_limit. Returns ("verified", the rows' proved bound), ((x, margin, note), None) for a
    counterexample LiteRT confirms, or (None, None)."""
    from .int8_bab import prove_row
    reach = tuple(torch.from_numpy(model.quantize(v.numpy())) for v in (a_l, a_u))
    found = {}

    def counterexample(u):
        x = np.minimum(np.maximum((u.numpy() * model.in_scale).astype(np.float32), a_l.numpy()), a_u.numpy())
        out = np.asarray(runtime(x), np.float64)[0]
        if bool(breaks(out[None], [y])[0]):
            found["x"] = (x[0], float(out[y] - np.max(np.delete(out, y))), _tie_note(out, y))
            return True
        return False
    deadline = time.perf_counter() + time_limit
    rows = [j for j in range(len(lb)) if j != y and float(lb[j]) <= PROOF_SLACK]
    for j in sorted(rows, key=lambda j: float(lb[j])):  # the weakest row first: most likely to fail
        left = deadline - time.perf_counter()
        if left <= 0:
            return None, None
        out = prove_row(model, u_l, u_u, C[j], left, reach, counterexample)
        if out.counterexample is not None:
            return found["x"], None
        if not out.proved:
            return None, None
    proved = lb.clone()
    proved[rows] = 1.0  # an integer margin proved positive is at least one step
    return "verified", proved
