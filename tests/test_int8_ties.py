"""An exact tie between the label and another class is a counterexample to an int8 proof
(margin >= 1 step), even where the first-maximum argmax keeps the label: on random tiny
integer nets, enumerated over every int8 input of the box, no sample whose box reaches a
margin <= 0 is verified, samples that reach only ties end falsified with a tie note, every
counterexample's outputs break the label, and an unknown noted "margin >= 0 proved" has no
misclassifying input."""
import itertools

import numpy as np
import pytest
import torch

from verisparse.fixedpoint import quantize_multipliers
from verisparse.verify import ops
from verisparse.verify.bounds import BoundedNet
from verisparse.verify.float_verify import breaks
from verisparse.verify.int8_bounds import Int8Model, Requant
from verisparse.verify.int8_verify import verify_int8
from verisparse.verify.rounding import inner_box, sound_box

pytestmark = pytest.mark.usefixtures("one_thread")

IN_SCALE, IN_ZP = 1 / 255, -128


def test_breaks_counts_ties_and_misclassifications():
    out = np.array([[3.0, 1.0, 2.0], [2.0, 2.0, 0.0], [1.0, 2.0, 2.0], [0.0, 5.0, 1.0]])
    assert breaks(out, [0, 0, 2, 0]).tolist() == [False, True, True, True]


def _tiny_model(rng):
    """3 int8 inputs -> 6 -> 3 classes; the output requantization is coarse so that ties are common."""
    def w(*shape):
        return torch.from_numpy((rng.integers(-127, 128, shape) * (rng.random(shape) < 0.8)).astype(np.float64))
    q1, s1 = quantize_multipliers(rng.uniform(2e-3, 1e-2, 6))
    q2, s2 = quantize_multipliers(rng.uniform(2e-4, 1e-3, 3))
    zp = int(rng.integers(-128, -60))
    net = BoundedNet([ops.Linear(w(6, 3), w(6) * 30), Requant(q1, s1, zp, zp, 127, (6,)),
                      ops.Linear(w(3, 6), w(3) * 30), Requant(q2, s2, 0, -128, 127, (3,))])
    return Int8Model(net, IN_SCALE, IN_ZP, (3,), 0.1, 0, 3)


def _runtime(model):
    def run(x):
        u = torch.from_numpy(model.quantize(np.asarray(x, np.float32)))
        with torch.no_grad():
            return (model.net.forward(u) * model.out_scale).numpy()
    return run


def _margins(model, lo, hi, y):
    """The integer margin q_y - max_j q_j at every int8 input of the box [lo, hi] (u = q - zp)."""
    grid = torch.tensor(list(itertools.product(*[range(int(a), int(b) + 1) for a, b in zip(lo, hi)])),
                        dtype=torch.float64)
    with torch.no_grad():
        out = model.net.forward(grid)
    return (out[:, y:y + 1] - out).masked_fill(torch.arange(3) == y, float("inf")).min(1).values


def test_reachable_ties_are_never_verified_and_are_falsified_with_a_note():
    rng = np.random.default_rng(11)
    tie_only = tie_falsified = verified = 0
    for _ in range(4):
        model = _tiny_model(rng)
        run = _runtime(model)
        x = torch.from_numpy(rng.uniform(0.2, 0.8, (16, 3)).astype(np.float32))
        y = torch.from_numpy(run(x.numpy()).argmax(1))  # the first maximum: tied points stay "correct" here
        eps = 0.04
        res = verify_int8(model, run, x, y, eps, "auto", time_limit=0.5)
        x_l, x_u = sound_box(x, eps)
        u_l, u_u = model.input_box(x_l.numpy(), x_u.numpy())
        a_l, a_u = inner_box(x, eps)
        r_l, r_u = (model.quantize(v.numpy()) for v in (a_l, a_u))
        for k, r in enumerate(res):
            worst = float(_margins(model, u_l[k], u_u[k], int(y[k])).min())
            reach = float(_margins(model, r_l[k], r_u[k], int(y[k])).min())
            if r.status == "verified":
                verified += 1
                assert worst >= 1, (k, worst)
            if r.status == "falsified":
                assert reach <= 0
                xc = r.counterexample[None]
                assert (xc >= a_l[k].numpy()).all() and (xc <= a_u[k].numpy()).all()
                assert bool(breaks(run(xc), [int(y[k])])[0])
                if r.note:
                    assert "tie" in r.note and int(run(xc).argmax()) == int(y[k])
                    tie_falsified += 1
            if reach == 0:
                tie_only += 1
                assert r.status != "verified"
            if r.status == "unknown" and r.note:  # "margin >= 0 proved": no misclassification anywhere
                assert worst >= 0, (k, worst)
    assert verified > 10 and tie_only > 1 and tie_falsified > 0, (verified, tie_only, tie_falsified)
