"""Floating-point soundness: float32 rounding never makes a breakable point "verified".

Networks with large biases that cancel leave margins far below float32's resolution at the
logits' size; a bound computed in float32 without outward rounding certified such points
although ONNX Runtime misclassifies a float32 input of the ball. The nets here are searched
for exactly that: one input, so every float32 point of the ball near its worst end can be run
through ONNX Runtime, the ground truth."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from verisparse.verify.artifact import load_artifact
from verisparse.verify.bounds import input_box, margin_spec, verified
from verisparse.verify.onnx_import import import_onnx
from verisparse.verify.rounding import inner_box, sound_box

EPS = 0.1
X0 = np.float32(125 / 255)


def _gemm_net(layers, path):
    """x (N, 1) -> Gemm -> Relu -> ... -> Gemm, float32, opset 17: layers = [(W, b), ...]."""
    inits, nodes, cur = [], [], "x"
    for k, (W, b) in enumerate(layers):
        inits += [numpy_helper.from_array(np.asarray(W, np.float32), f"W{k}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{k}")]
        out = f"h{k}" if k < len(layers) - 1 else "y"
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [out], transB=1))
        if k < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            cur = f"r{k}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(layers[-1][1])])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _issue_net(path):
    """The red team's net: IBP in float32 said verified with margin 6.1e-5; x = 0.39019608
    gives ONNX Runtime logits [932.50250, 932.50244], class 0."""
    return _gemm_net([([[1.0552809]], [1201.7795]), ([[1.1852441]], [-492.38766]),
                      ([[0.0], [1.0]], [932.5025, 0.0])], path)


def _worst_runtime_margin(path, label, window=20000):
    """min over the float32 points of the ball nearest each end (the nets are monotone in
    real arithmetic, so a rounding-made counterexample sits near an end) of ORT's margin."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lo, hi = (float(t) for t in inner_box(torch.tensor([X0]), EPS))
    worst = np.inf
    for end, direction in ((lo, np.inf), (hi, -np.inf)):
        pts = [np.float32(end)]
        for _ in range(window - 1):
            pts.append(np.nextafter(pts[-1], np.float32(direction)))
        z = sess.run(None, {"x": np.array(pts, np.float32)[:, None]})[0].astype(np.float64)
        worst = min(worst, float((z[:, label] - np.delete(z, label, axis=1).max(1)).min()))
    return worst


def test_issue_net_is_not_verified_by_any_method(tmp_path):
    path = _issue_net(tmp_path / "issue.onnx")
    assert _worst_runtime_margin(path, 1) < 0  # the runtime really is broken in the ball
    art = load_artifact(path)
    x, y = torch.tensor([[X0]]), torch.tensor([1])
    for method in art.methods:
        (r,) = art.verify(x, y, EPS, method, time_limit=5.0)
        assert r.status != "verified", method
        assert r.margin_lower < 0


def _random_cancelling_net(rng, path):
    """Two hidden ReLU layers on one input with large biases; the logits sit near 100-1,000
    and the margin of class 1 is within a few float32 steps of 0 over the ball."""
    w1, b1 = rng.uniform(0.5, 2.0), rng.uniform(200, 2000)
    w2, b2 = rng.uniform(0.5, 2.0), -rng.uniform(0.1, 0.9) * b1
    z = lambda x: w2 * max(w1 * x + b1, 0) + b2  # real arithmetic, increasing in x
    low = z(float(X0) - EPS)
    scale = np.spacing(np.float32(low))
    const = np.float32(low + rng.integers(-4, 5) * scale / 2)
    return _gemm_net([([[w1]], [b1]), ([[w2]], [b2]), ([[0.0], [1.0]], [const, 0.0])], path)


@pytest.mark.slow
def test_random_cancelling_nets_are_never_verified_where_the_runtime_breaks(tmp_path):
    rng = np.random.default_rng(0)
    claimed_by_float32, broken, verified_count = 0, 0, 0
    x, y = torch.tensor([[X0]]), torch.tensor([1])
    C = margin_spec(y, 2)
    for k in range(120):
        path = _random_cancelling_net(rng, tmp_path / f"n{k}.onnx")
        worst = _worst_runtime_margin(path, 1, window=4000)
        art = load_artifact(path)
        results = {m: art.verify(x, y, EPS, m, time_limit=5.0)[0] for m in ("ibp", "crown", "milp")}
        for method, r in results.items():
            if r.status == "verified":
                verified_count += 1
                assert worst > 0, (k, method, worst, r.margin_lower)  # soundness
        if worst < 0:
            broken += 1
            # what the float32 bounds without outward rounding said about this net
            net = import_onnx(onnx.load(path)).net
            claimed_by_float32 += int(verified(net.ibp(*input_box(x, EPS), C)[0], y)[0])
    # the search must reach the cases the test is about, or it proves nothing
    assert broken >= 20 and claimed_by_float32 >= 1 and verified_count >= 10, \
        (broken, claimed_by_float32, verified_count)


def test_sound_box_holds_every_float32_point_of_the_ball():
    x = torch.rand(500, dtype=torch.float32)
    for eps in (0.1, 1 / 255, 0.3):
        x_l, x_u = sound_box(x, eps)
        a_l, a_u = inner_box(x, eps)
        assert a_l.dtype == torch.float32
        assert (x_l <= a_l.double()).all() and (a_u.double() <= x_u).all()
        # the inner box's ends are in the ball, their outer float32 neighbours are not
        x64 = x.double()
        assert ((a_l.double() >= x64 - eps) | (a_l == 0)).all() and ((a_u.double() <= x64 + eps) | (a_u == 1)).all()
        below = torch.nextafter(a_l, torch.tensor(-1.0)).double()
        above = torch.nextafter(a_u, torch.tensor(2.0)).double()
        assert ((below < x64 - eps) | (a_l == 0)).all() and ((above > x64 + eps) | (a_u == 1)).all()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_sound_bounds_contain_float32_executions(kind):
    """The sound net's bounds hold for the float32 torch model (the runtime of a checkpoint),
    and cost at most a hair of the plain bounds on ordinary nets."""
    from netgen import random_net

    from verisparse.verify.from_torch import bounded_net
    from verisparse.verify.rounding import sound_net
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        model, shape = random_net(kind, gen)
        net = bounded_net(model, shape)
        sound = sound_net(net, shape)
        x = torch.rand(3, *shape, generator=gen)
        y = torch.tensor([0, 1, 2])
        C = margin_spec(y, 4)
        x_l, x_u = sound_box(x, 0.05)
        with torch.no_grad():
            plain = net.crown(*input_box(x, 0.05), C).double()
            lo, hi = sound.crown(x_l, x_u, C.double(), upper=True)
            pts = x_l.unsqueeze(1).float() + (x_u - x_l).unsqueeze(1).float() * torch.rand(3, 300, *shape, generator=gen)
            z = torch.einsum("bsk,bnk->bns", C, model(pts.flatten(0, 1)).view(3, 300, -1)).double()
        assert (z >= lo.unsqueeze(1)).all() and (z <= hi.unsqueeze(1)).all()
        assert (lo <= plain + 1e-9).all() and (plain - lo).max() < 1e-3


def test_sparse_rows_are_charged_their_nonzero_terms_and_hold_in_any_summation_order():
    """A pruned weight's product is an exact zero, so a row's rounding charge counts its nonzero
    weights only: the interval shrinks with sparsity and still holds for float32 sums of the
    row taken in random orders, zeros interleaved, sequentially and pairwise."""
    from verisparse.verify.ops import Linear
    from verisparse.verify.rounding import gamma, sound_net
    from verisparse.verify.bounds import BoundedNet
    rng = np.random.default_rng(3)
    n = 400
    W = rng.normal(size=(6, n)) * (rng.random((6, n)) < 0.1)
    W[0, :] = 0.0
    W[0, :3] = [1e4, -1e4, 1.0]  # cancelling terms: a large relative error in row 0
    b = rng.normal(size=6)
    net = sound_net(BoundedNet([Linear(torch.tensor(W, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))]),
                    (n,), torch.float64)
    W32, b32 = W.astype(np.float32), b.astype(np.float32)
    for _ in range(20):
        x = rng.uniform(-1, 1, size=n).astype(np.float32)
        xt = torch.tensor(x, dtype=torch.float64).view(1, -1)
        err = net.errors[0](xt, xt)[0].numpy()
        dense = 1.01 * gamma(n + 4) * (np.abs(W32).astype(np.float64) @ np.abs(x) + np.abs(b32))
        assert (err[1:] < 0.3 * dense[1:]).all()  # a tenth of the terms, a tenth of the charge (and margin)
        exact = W32.astype(np.float64) @ x.astype(np.float64) + b32
        for _ in range(10):
            order = rng.permutation(n)
            terms = (W32[:, order] * x[order]).astype(np.float32)
            seq = np.zeros(6, np.float32)
            for t in terms.T:
                seq = (seq + t).astype(np.float32)
            pair = terms
            while pair.shape[1] > 1:
                if pair.shape[1] % 2:
                    pair = np.concatenate([pair, np.zeros((6, 1), np.float32)], 1)
                pair = (pair[:, ::2] + pair[:, 1::2]).astype(np.float32)
            for s in (seq, pair[:, 0]):
                out = (s + b32).astype(np.float32).astype(np.float64)
                assert (np.abs(out - exact) <= err).all()
