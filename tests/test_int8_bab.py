"""int8 branch and bound and XNNPACK semantics: every proof is checked against an exhaustive
enumeration of a tiny int8 input grid (reference and float-requantizing kernels), the
XNNPACK-widened bounds contain what LiteRT's XNNPACK delegate computes, and the CLI's
certificate names the kernels it covers."""
import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.fixedpoint import quantize_multipliers
from verisparse.verify import ops
from verisparse.verify.bounds import BoundedNet, margin_spec
from verisparse.verify.int8_bab import beta_bound, prove_row
from verisparse.verify.int8_bounds import Requant

pytestmark = pytest.mark.usefixtures("one_thread")


class _Model:
    def __init__(self, net):
        self.net = net


def _xnnpack_like(rq, acc):
    """XNNPACK's fp32 requantization: float32 accumulator times a float32 scale, rounded to
    nearest even, plus the zero point, clamped."""
    scale = (rq.q.astype(np.float64) * np.exp2(rq.shift.astype(np.float64) - 31)).astype(np.float32)
    r = np.rint(acc.astype(np.float32) * scale.reshape((1, -1) + (1,) * (acc.ndim - 2)))
    return np.clip(r + rq.zp, rq.qmin, rq.qmax) - rq.zp


def _forward(net, u, xnnpack=False):
    for op in net.ops:
        if xnnpack and isinstance(op, Requant):
            u = torch.from_numpy(_xnnpack_like(op, u.round().numpy()).astype(np.float64))
        else:
            u = op.forward(u)
    return u


def _tiny_net(rng, kernels):
    """3 int8 inputs -> 8 -> 6 -> 3 classes, ReLU requantizations, sparse int8 weights."""
    def w(*shape):
        return torch.from_numpy((rng.integers(-127, 128, shape) * (rng.random(shape) < 0.7)).astype(np.float64))

    def rq(n, relu):
        zp = int(rng.integers(-128, -60)) if relu else int(rng.integers(-10, 10))
        q, s = quantize_multipliers(rng.uniform(2e-3, 2e-2, n))
        return Requant(q, s, zp, zp if relu else -128, 127, (n,), kernels=kernels)
    return BoundedNet([ops.Linear(w(8, 3), w(8) * 30), rq(8, True), ops.Linear(w(6, 8), w(6) * 30), rq(6, True),
                       ops.Linear(w(3, 6), w(3) * 30), rq(3, False)])


@pytest.mark.parametrize("kernels", ["reference", "all"])
def test_bab_proofs_hold_on_every_point_of_a_tiny_int8_grid(kernels):
    """Random tiny integer nets and boxes of at most 31^3 int8 inputs: every margin row branch
    and bound proves is >= 1 at every input (under reference and XNNPACK-like requantization
    for 'all'), every counterexample it returns breaks the row, and it proves rows that plain
    CROWN leaves open."""
    rng = np.random.default_rng(7 if kernels == "reference" else 8)
    beyond_crown = proved_rows = 0
    for _ in range(40):
        net = _tiny_net(rng, kernels)
        centre = rng.integers(-100, 100, 3)
        lo = torch.from_numpy(np.maximum(centre - rng.integers(0, 16, 3), -128).astype(np.float64))[None]
        hi = torch.from_numpy(np.minimum(centre + rng.integers(0, 16, 3), 127).astype(np.float64))[None]
        grid = torch.tensor(list(itertools.product(*[range(int(a), int(b) + 1) for a, b in zip(lo[0], hi[0])])),
                            dtype=torch.float64)
        with torch.no_grad():
            outs = [_forward(net, grid)] + ([_forward(net, grid, xnnpack=True)] if kernels == "all" else [])
        y = int(outs[0].mode(0).values.argmax())  # a class the box mostly gets
        C = margin_spec(torch.tensor([y]), 3).double()
        with torch.no_grad():
            crown = net.crown(lo, hi, C)[0]
        for j in range(3):
            if j == y:
                continue
            out = prove_row(_Model(net), lo, hi, C[0, j], time_limit=3.0,
                            counterexample=lambda u: bool((_forward(net, u) @ C[0, j]).item() <= 0))
            worst = min(float((o @ C[0, j]).min()) for o in outs)
            if out.proved:
                proved_rows += 1
                assert worst >= 1, (kernels, j, worst)
                beyond_crown += int(crown[j] <= 1e-3)
            if out.counterexample is not None:
                assert float(_forward(net, out.counterexample) @ C[0, j]) <= 0
    assert proved_rows > 10 and beyond_crown > 0, (proved_rows, beyond_crown)


def test_xnnpack_widening_contains_float_requantization_and_reference():
    rng = np.random.default_rng(3)
    q, s = quantize_multipliers(rng.uniform(1e-4, 0.9, 6))
    ref = Requant(q, s, -5, -128, 127, (6,))
    wide = Requant(q, s, -5, -128, 127, (6,), kernels="xnnpack")
    acc = torch.from_numpy(rng.integers(-300000, 300000, (5000, 6)).astype(np.float64))
    xnn = torch.from_numpy(_xnnpack_like(ref, acc.numpy().astype(np.int64)).astype(np.float64))
    r = ref.forward(acc)
    assert (xnn != r).any()  # the two really differ somewhere
    assert torch.equal(wide.forward(acc), r)  # forward stays the reference kernels'
    l, u = wide.ibp(acc, acc)
    assert (l <= torch.minimum(xnn, r)).all() and (u >= torch.maximum(xnn, r)).all()
    assert (u - l).max() <= 2  # never more than one step either side
    lo_s, lo_c, up_s, up_c = wide.lines(acc - 50, acc + 50)
    for shift in (-50, 0, 50):  # the linear relaxation holds over the range too
        a = acc + shift
        fx = torch.from_numpy(_xnnpack_like(ref, a.numpy().astype(np.int64)).astype(np.float64))
        assert (lo_s * a + lo_c <= fx + 1e-6).all() and (fx <= up_s * a + up_c + 1e-6).all()


# --- LiteRT's XNNPACK delegate on a trained, exported model

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("int8bab") / "cnn", "cnn_4layer", eps=0.05, epochs=8)


@pytest.mark.slow
def test_xnnpack_outputs_stay_inside_the_widened_bounds(digits_run):
    """Every test point: LiteRT's default (XNNPACK) and reference outputs lie inside the
    kernels='all' bounds of the point itself; a sample verified under 'all' survives an
    attack whose candidates run through the XNNPACK interpreter."""
    from verisparse.int8_runtime import quantize, run_litert
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    art = load_artifact(digits_run / "model_int8.tflite", kernels="all")
    model, data = art.extra["model"], art.path.read_bytes()
    ds = load_dataset("digits")
    x, y = ds.x_test, ds.y_test
    q = quantize(x.numpy().transpose(0, 2, 3, 1), model.in_scale, model.in_zp)
    u = torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64) - model.in_zp)
    ref, xnn = (run_litert(data, q, reference=r).astype(np.float64) - model.out_zp for r in (True, False))
    with torch.no_grad():
        lo, hi = model.net.ibp(u, u)
    for out in (ref, xnn):
        assert (lo.numpy() <= out).all() and (out <= hi.numpy()).all()
    res = art.verify(x[:60], y[:60], 0.02, "auto", time_limit=2.0)
    verified = [r.index for r in res if r.status == "verified"]
    assert len(verified) >= 3
    from verisparse.verify.int8_attack import integer_search
    from verisparse.verify.rounding import inner_box
    a_l, a_u = inner_box(x[verified], 0.02)
    r_l, r_u = (torch.from_numpy(model.quantize(v.numpy())) for v in (a_l, a_u))
    gen = torch.Generator().manual_seed(0)
    yv = y[verified]
    for start in range(4):  # the integer search's best points, and random ones, judged by XNNPACK
        u0 = (r_l + (r_u - r_l) * torch.rand(r_l.shape, generator=gen, dtype=r_l.dtype)).round()
        for cand in (integer_search(model, u0, r_l, r_u, yv, generator=gen)[0], u0):
            qc = (cand.numpy() + model.in_zp).astype(np.int8).transpose(0, 2, 3, 1)
            out = run_litert(data, qc, reference=False)
            assert (out.argmax(1) == yv.numpy()).all()


@pytest.mark.slow
def test_cli_kernels_certificate_names_and_rechecks_them(digits_run, tmp_path):
    tfl = digits_run / "model_int8.tflite"
    cert_path = tmp_path / "cert.json"
    r = CliRunner().invoke(main, ["verify", str(tfl), "--n", "30", "--eps", "0.02", "--kernels", "all",
                                  "--time-limit", "1", "--report", str(cert_path)])
    assert r.exit_code == 0, r.output
    cert = json.loads(cert_path.read_text())
    assert cert["kernels"] == "all" and "kernels all" in r.output
    r = CliRunner().invoke(main, ["verify", "--check", str(cert_path), str(tfl)])
    assert r.exit_code == 0, r.output
    cert["kernels"] = "cmsis"
    cert_path.write_text(json.dumps(cert))
    r = CliRunner().invoke(main, ["verify", "--check", str(cert_path), str(tfl)])
    assert r.exit_code == 2 and "kernels" in r.output
    r = CliRunner().invoke(main, ["verify", str(digits_run / "model.onnx"), "--n", "5", "--kernels", "xnnpack",
                                  "--report", str(tmp_path / "c2.json")])
    assert r.exit_code == 2 and "--kernels" in r.output


def _keras_normalised(tmp_path):
    """A Keras Rescaling layer (the converter makes it MUL and ADD by constants) before a CNN."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    import tensorflow as tf
    from firmware_zoo import _convert, _perturb
    from tensorflow.keras import layers
    tf.keras.utils.set_random_seed(3)
    inp = layers.Input((8, 8, 1), batch_size=1)
    x = layers.Rescaling(1 / 0.3, offset=-0.5)(inp)
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Dense(3)(layers.Flatten()(x))
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.3)
    path = tmp_path / "normalised.tflite"
    path.write_bytes(_convert(model, (8, 8, 1)))
    return path


@pytest.mark.slow
def test_input_normalisation_mul_add_is_exact_and_bounds_hold(tmp_path):
    """MUL/ADD at the input: the integer model is bit-exact with LiteRT and TFLM on random
    int8 inputs, and bounds on random boxes contain every sampled input's outputs."""
    from verisparse.int8_runtime import run_litert, run_tflm
    from verisparse.tflite_graph import read_tflite
    from verisparse.verify.int8_verify import load_tflite_artifact
    path = _keras_normalised(tmp_path)
    data = path.read_bytes()
    assert [op.opcode for op in read_tflite(data).operators][:2] == ["MUL", "ADD"]
    model = load_tflite_artifact(path, "0" * 64).extra["model"]
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (64, 8, 8, 1)).astype(np.int8)
    u = torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64) - model.in_zp)
    with torch.no_grad():
        ours = model.forward_int(u).numpy() + model.out_zp
        at_l, at_u = (t.numpy() + model.out_zp for t in model.net.ibp(u, u))
    lite, tflm = run_litert(data, q), run_tflm(data, q)
    # FULLY_CONNECTED rounds once in LiteRT, twice in TFLM: the model is one of them, the bounds hold both
    assert ((ours == lite) | (ours == tflm)).all() and (ours == tflm).mean() > 0.9
    assert (at_l <= np.minimum(lite, tflm)).all() and (np.maximum(lite, tflm) <= at_u).all()
    C = margin_spec(torch.zeros(8, dtype=torch.long), 3).double()
    lo, hi = (u[:8] - 6).clamp(-128 - model.in_zp, 127 - model.in_zp), (u[:8] + 6).clamp(max=127 - model.in_zp)
    with torch.no_grad():
        (il, iu), cl = model.net.ibp(lo, hi), model.net.crown(lo, hi, C)
        pts = (lo.unsqueeze(1) + ((hi - lo).unsqueeze(1) * torch.rand(8, 200, 1, 8, 8, dtype=torch.float64)).round())
        out = model.net.forward(pts.flatten(0, 1)).view(8, 200, 3)
    assert (il.unsqueeze(1) <= out).all() and (out <= iu.unsqueeze(1)).all()
    assert (cl.unsqueeze(1) <= torch.einsum("bsk,bnk->bns", C, out) + 1e-6).all()
    with pytest.raises(Exception, match="--kernels reference"):
        load_tflite_artifact(path, "0" * 64, kernels="all")


def test_early_stops_reach_the_last_hidden_layers_interval_bound():
    """beta_bound concretises at each requantization's output too: on random tiny nets its
    root bound is at least CROWN's over the last two ops from the exact interval of the last
    hidden layer (computed here independently), and beats plain CROWN somewhere."""
    rng = np.random.default_rng(5)
    better = 0
    for _ in range(30):
        net = _tiny_net(rng, "reference")
        centre = rng.integers(-100, 100, 3)
        lo = torch.from_numpy(np.maximum(centre - rng.integers(0, 30, 3), -128).astype(np.float64))[None]
        hi = torch.from_numpy(np.minimum(centre + rng.integers(0, 30, 3), 127).astype(np.float64))[None]
        y = int(rng.integers(0, 3))
        C = margin_spec(torch.tensor([y]), 3).double()
        relaxed = [i for i, op in enumerate(net.ops) if isinstance(op, Requant)]
        with torch.no_grad():
            h_l, h_u = BoundedNet(net.ops[:4]).ibp(lo, hi)
            tail = BoundedNet(net.ops[4:]).crown(h_l, h_u, C, "ibp")[0]
            plain = net.crown(lo, hi, C)[0]
            for j in (j for j in range(3) if j != y):
                end, W, const0, lay, slack = net.output_problem(lo, hi, C[:, j:j + 1], "crown")
                got = float(beta_bound(net, W, const0 - slack, end, lay, lo, hi,
                                       {i: lay.pre[i] for i in relaxed}, lay.pre, relaxed, {}, iterations=0))
                assert got >= float(tail[j]) - 1e-9 and got >= float(plain[j]) - 1e-9
                better += int(got > float(plain[j]) + 1e-6)
    assert better > 0
