"""Soundness of the float verifier on many random small networks: nothing is called verified
that MILP, an attack or brute force breaks, and MILP is exact where brute force can check it."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from netgen import random_net, random_problem
from verisparse.trainer.layers import MaskedLinear
from verisparse.verify.attack import pgd
from verisparse.verify.bounds import input_box
from verisparse.verify.float_verify import verify_float
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.milp import MilpNet, verify_sample


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def _runtime(model):
    def run(x):
        with torch.no_grad():
            return model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    return run


@pytest.mark.parametrize("chunk", range(10))
def test_never_verified_where_a_counterexample_exists(chunk):
    """20 networks per chunk, 200 in all, mlp and cnn, 4 points each, eps spread so that every
    status occurs. The verifier must agree with an independent, heavier attack."""
    counts = {"verified": 0, "falsified": 0, "unknown": 0}
    for k in range(20):
        seed = chunk * 20 + k
        gen = torch.Generator().manual_seed(seed)
        model, shape = random_net("mlp" if seed % 4 else "cnn", gen)
        net = bounded_net(model, shape)
        x = torch.rand(4, *shape, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        y[0] = (y[0] + 1) % 4  # one misclassified point per network
        eps = float(torch.empty(1).uniform_(0.02, 0.4, generator=gen))
        # MILP (after alpha-CROWN) or branch and bound on the mlps; the cnns (hundreds of
        # unstable ReLUs at large eps) stop at alpha-CROWN
        method = ("alpha-crown", "bab", "milp", "milp")[seed % 4]
        res = verify_float(net, _runtime(model), x, y, eps, method, time_limit=2.0)
        adv, broken = pgd(model, x, y, eps, steps=60, restarts=3, generator=gen)
        x_l, x_u = input_box(x, eps)
        for r, b in zip(res, broken.tolist()):
            counts[r.status] += 1
            assert not (r.status == "verified" and b), (seed, r)
            if r.status == "falsified":  # a counterexample is real and inside the ball
                cx = torch.as_tensor(r.counterexample).unsqueeze(0)
                assert (cx >= x_l[r.index]).all() and (cx <= x_u[r.index]).all()
                with torch.no_grad():
                    assert int(model(cx).argmax(1)) != int(y[r.index])
            if r.status == "verified":
                assert r.margin_lower > 0
    assert counts["verified"] > 5 and counts["falsified"] > 5


def _tiny(gen, n_in, widths, classes=3):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    layers, w = [], n_in
    for h in widths:
        layers += [MaskedLinear(w, h), nn.ReLU()]
        w = h
    return nn.Sequential(*layers, MaskedLinear(w, classes)).eval()


def _brute_force_min(model, x_l, x_u, c):
    """min c . f(x) over the box, by enumerating ReLU activation patterns: fixed a pattern,
    f is affine on a polyhedron, so one LP per pattern gives the exact minimum. A neuron whose
    affine input has one sign on the whole box takes that side only: the other side's polyhedron
    is empty, and skipping its LPs (most of the patterns) leaves the minimum as it was."""
    Ws = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
          for m in model if isinstance(m, nn.Linear)]
    x_l, x_u = np.asarray(x_l, dtype=float), np.asarray(x_u, dtype=float)

    def patterns(layer, M, c0, A_ub, b_ub):
        """Yields (A_ub, b_ub, M, c0) for every pattern of the layers from `layer` on."""
        if layer == len(Ws) - 1:
            yield A_ub, b_ub, M, c0
            return
        W, b = Ws[layer]
        Z, z0 = W @ M, W @ c0 + b
        lo = np.minimum(Z * x_l, Z * x_u).sum(1) + z0  # exact range of each z over the box
        hi = np.maximum(Z * x_l, Z * x_u).sum(1) + z0
        sides = [(1,) if l > 1e-7 else (0,) if h < -1e-7 else (0, 1) for l, h in zip(lo, hi)]
        for pattern in itertools.product(*sides):
            p = np.array(pattern, dtype=float)
            sign = np.where(p == 1, -1.0, 1.0)  # active: z >= 0 -> -z <= 0; inactive: z <= 0
            yield from patterns(layer + 1, p[:, None] * Z, p * z0, A_ub + [sign[:, None] * Z], b_ub + [-sign * z0])

    best = np.inf
    W, b = Ws[-1]
    for A_ub, b_ub, M, c0 in patterns(0, np.eye(len(x_l)), np.zeros(len(x_l)), [], []):
        obj, off = c @ (W @ M), c @ (W @ c0 + b)
        r = linprog(obj, A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub), bounds=list(zip(x_l, x_u)),
                    method="highs")
        if r.status == 0:
            best = min(best, r.fun + off)
    return best


def test_milp_matches_brute_force_on_tiny_networks():
    gen = torch.Generator().manual_seed(7)
    checked = 0
    for trial in range(40):
        n_in = 2 + trial % 2
        model = _tiny(gen, n_in, [3, 3] if trial % 2 else [4])
        net = bounded_net(model, (n_in,))
        mnet = MilpNet(net, (n_in,), executed=False)  # the real-arithmetic encoding alone
        executed = MilpNet(net, (n_in,))
        x = torch.rand(1, n_in, generator=gen)
        x_l, x_u = input_box(x, 0.3)
        pre, errs = mnet.pre_bounds(x_l, x_u)
        pre0, errs0 = {i: (l[0], u[0]) for i, (l, u) in pre.items()}, [e[0] for e in errs]
        ex_pre, ex_errs = executed.pre_bounds(x_l, x_u)
        ex_pre0, ex_errs0 = {i: (l[0], u[0]) for i, (l, u) in ex_pre.items()}, [e[0] for e in ex_errs]
        for j in (1, 2):
            c = np.zeros(3)
            c[0], c[j] = 1.0, -1.0
            box = x_l[0].double().numpy(), x_u[0].double().numpy()
            bound, xs, value, status = mnet.solve(*box, pre0, errs0, c, 10.0)
            exact = _brute_force_min(model, *box, c)
            assert status == 0
            assert value == pytest.approx(exact, abs=1e-5)  # the optimum is the exact minimum
            assert bound <= exact + 1e-5  # and the dual bound never overshoots it
            # with the float32 runtime's error in the model, the proof only gets more careful
            ex_bound, _, ex_value, _ = executed.solve(*box, ex_pre0, ex_errs0, c, 10.0)
            assert ex_bound <= bound and ex_value <= value + 1e-9
            with torch.no_grad():  # the optimiser's point really attains it
                z = model(torch.as_tensor(xs, dtype=torch.float32)[None])[0].double().numpy()
            assert c @ z == pytest.approx(exact, abs=1e-4)
            checked += 1
    assert checked == 80


def test_milp_never_looser_than_crown_and_agrees_with_sampling():
    gen = torch.Generator().manual_seed(11)
    for _ in range(25):
        model, shape, net, x_l, x_u, C = random_problem("mlp", gen)
        with torch.no_grad():
            crown = torch.maximum(net.ibp(x_l, x_u, C)[0], net.crown(x_l, x_u, C))
        mnet = MilpNet(net, shape)
        pre, errs = mnet.pre_bounds(x_l, x_u)
        pts = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * torch.rand(2, 2000, *shape, generator=gen)
        with torch.no_grad():
            sampled = torch.einsum("bsk,bnk->bns", C, model(pts.flatten(0, 1)).view(2, 2000, -1)).min(1).values
        for b in range(2):
            for j in range(4):
                if j == b:  # random_problem labels sample b with class b
                    continue
                c = C[b, j].double().numpy()
                bound, _, value, status = mnet.solve(x_l[b].double().numpy(), x_u[b].double().numpy(),
                                                     {i: (l[b], u[b]) for i, (l, u) in pre.items()},
                                                     [e[b] for e in errs], c, 10.0)
                assert status == 0
                assert value >= float(crown[b, j]) - 1e-4  # complete is at least as tight
                assert value <= float(sampled[b, j]) + 1e-5  # and still below every sampled margin


def test_crown_stage_never_looser_than_ibp_stage():
    """verify_float takes CROWN together with IBP, so its crown verdicts contain IBP's."""
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        model, shape = random_net("cnn", gen)
        net = bounded_net(model, shape)
        x = torch.rand(6, *shape, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        r_ibp = verify_float(net, _runtime(model), x, y, 0.02, "ibp")
        r_crown = verify_float(net, _runtime(model), x, y, 0.02, "crown")
        for a, b in zip(r_ibp, r_crown):
            assert b.margin_lower >= a.margin_lower - 1e-6
            assert not (a.status == "verified" and b.status != "verified")


def test_verify_sample_marks_open_when_time_runs_out():
    gen = torch.Generator().manual_seed(3)
    model = _tiny(gen, 4, [6, 6])
    net = bounded_net(model, (4,))
    mnet = MilpNet(net, (4,))
    x = torch.rand(1, 4, generator=gen)
    x_l, x_u = input_box(x, 0.5)
    pre, errs = mnet.pre_bounds(x_l, x_u)
    pre = {i: (l[0], u[0]) for i, (l, u) in pre.items()}
    out = verify_sample(mnet, x_l[0].double().numpy(), x_u[0].double().numpy(), pre, [e[0] for e in errs], 0,
                        np.full(3, -1.0), 0.0, lambda x: False)
    assert out.status == "unknown"


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 4), (2, 0, 3), (1, 2, 3)])
def test_milp_conv_matrix_is_the_convolution(stride, padding, kernel):
    """The encoding's convolution matrix, built from the weights, maps every unit input to the
    conv's response there: the same entries, and no others, where a third of the weights are zero."""
    from verisparse.verify.milp import _op_matrix
    from verisparse.verify.ops import Conv2d
    gen = torch.Generator().manual_seed(stride * 10 + padding + kernel)
    w = torch.randn(4, 3, kernel, kernel, generator=gen, dtype=torch.float64)
    w[torch.rand(w.shape, generator=gen) < 0.3] = 0
    shape = (3, 7, 6)
    op = Conv2d(w, torch.randn(4, generator=gen, dtype=torch.float64), stride, padding, shape)
    M, c, out_shape = _op_matrix(op, shape)
    units = torch.eye(int(np.prod(shape)), dtype=torch.float64).reshape(-1, *shape)
    ref = torch.nn.functional.conv2d(units, w, None, stride, padding).flatten(1).T.numpy()
    assert tuple(out_shape) == tuple(op.forward(units[:1]).shape[1:])
    np.testing.assert_array_equal(M.toarray(), ref)
    assert M.nnz == np.count_nonzero(ref)
    np.testing.assert_array_equal(c, np.repeat(op.bias.numpy(), out_shape[1] * out_shape[2]))


def test_auto_builds_no_milp_encoding_for_samples_without_time_left(monkeypatch):
    """MILP's time is what branch and bound left of the sample's limit; with none left, the
    encoding (minutes on large models) is not built and the sample stays unknown."""
    import verisparse.verify.milp as milp
    from verisparse.verify import float_verify

    def refuse(*a, **k):
        raise AssertionError("the encoding was built for samples without time left")
    monkeypatch.setattr(milp, "MilpNet", refuse)
    status = np.array(["unknown", "verified"], dtype=object)
    x = torch.zeros(2, 4)
    out = float_verify._milp_stage(None, None, x, torch.zeros(2, dtype=torch.long), (x, x), (x, x), None,
                                   np.zeros(2), status, [None] * 2, [None] * 2, ["bab"] * 2, np.zeros(2),
                                   [None] * 2, np.array([0.0, 5.0]), None)
    assert out is None and list(status) == ["unknown", "verified"]
