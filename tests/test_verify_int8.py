"""Integer-exact int8 verification: the bounds contain every integer the arithmetic can
produce (random integer networks), the integer model is bit-exact with LiteRT, and no int8
input inside a certified box, sampled or attacked and run through LiteRT, changes the class."""
import numpy as np
import pytest
import torch

from verisparse.fixedpoint import multiply_by_quantized_multiplier, quantize_multipliers
from verisparse.verify import ops
from verisparse.verify.bounds import BoundedNet, margin_spec
from verisparse.verify.int8_bounds import NHWCReshape, Pad2d, Requant, margin_ibp, single_rounding


def _random_int8_net(gen, classes=4):
    """conv (asymmetric pad) -> requant(RELU) -> reshape -> dense -> requant(RELU) -> dense ->
    requant(NONE), with int8 weights, int32 biases and random fixed-point multipliers."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))

    def w(*shape):
        return torch.from_numpy((rng.integers(-127, 128, shape) * (rng.random(shape) < 0.6)).astype(np.float64))

    def rq(ch, shape, relu, fc=False):
        zp = int(rng.integers(-128, 0)) if relu else int(rng.integers(-20, 20))
        q, s = quantize_multipliers(rng.uniform(2e-4, 5e-3, ch))
        return Requant(q, s, zp, zp if relu else -128, 127, shape, both_roundings=fc)

    c, h = 2, 5
    layers = [Pad2d(0, 1, 1, 0, (c, h, h)), ops.Conv2d(w(3, c, 3, 3), w(3) * 40, (2, 2), (0, 0), (c, h + 1, h + 1)),
              rq(3, (3, 2, 2), True), NHWCReshape((3, 2, 2), (12,)),
              ops.Linear(w(6, 12), w(6) * 40), rq(6, (6,), True, fc=True),
              ops.Linear(w(classes, 6), w(classes) * 40), rq(classes, (classes,), False)]
    return BoundedNet(layers), (c, h, h)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


@pytest.mark.parametrize("chunk", range(4))
def test_int8_bounds_contain_every_reachable_integer_output(chunk):
    """200 random integer networks; boxes of integer inputs; every sampled integer input (box
    corners included) has outputs and margins inside the IBP and CROWN bounds, and margins
    above the int8 stage's bound (last layer merged), which is tighter than plain IBP somewhere."""
    tighter = 0
    for k in range(50):
        gen = torch.Generator().manual_seed(1000 + chunk * 50 + k)
        net, shape = _random_int8_net(gen)
        centre = torch.randint(-128, 128, (3, *shape), generator=gen).double()
        r = int(torch.randint(1, 40, (1,), generator=gen))
        lo, hi = (centre - r).clamp(-128, 127), (centre + r).clamp(-128, 127)
        y = torch.randint(0, 4, (3,), generator=gen)
        C = margin_spec(y, 4).double()
        with torch.no_grad():
            ibp_l, ibp_u = net.ibp(lo, hi, C)
            cr_l, cr_u = net.crown(lo, hi, C, upper=True)
            merged = margin_ibp(net, lo, hi, C)
        u = torch.rand(3, 300, *shape, generator=gen).double()
        u[:, :100] = u[:, :100].round()
        pts = (lo.unsqueeze(1) + ((hi - lo).unsqueeze(1) * u).round()).flatten(0, 1)
        with torch.no_grad():
            out = net.forward(pts).view(3, 300, -1)
        m = torch.einsum("bsk,bnk->bns", C, out)
        for lo_b, hi_b in ((ibp_l, ibp_u), (cr_l, cr_u)):
            assert (lo_b.unsqueeze(1) <= m + 1e-6).all()
            assert (m <= hi_b.unsqueeze(1) + 1e-6).all()
        assert (merged.unsqueeze(1) <= m + 1e-6).all()
        tighter += int((merged > ibp_l + 1e-6).sum())
        assert (out == out.round()).all()  # the forward really is integer arithmetic
    assert tighter > 0


def test_merged_margin_bound_respects_saturated_logits():
    """Logits 2x and x for x in [100, 127] at multiplier 1: the first saturates at 127, so
    the margin is 0 at x = 127 although 2x - x >= 100; the merged bound must not claim it."""
    q, s = quantize_multipliers(np.array([1.0, 1.0]))
    weight, bias = torch.tensor([[2.0], [1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    net = BoundedNet([ops.Linear(weight, bias), Requant(q, s, 0, -128, 127, (2,))])
    lo, hi = torch.full((1, 1), 100.0, dtype=torch.float64), torch.full((1, 1), 127.0, dtype=torch.float64)
    C = margin_spec(torch.tensor([0]), 2).double()
    margin = net.forward(hi) @ C[0].T
    assert margin[0, 1] == 0
    assert margin_ibp(net, lo, hi, C)[0, 1] <= 0
    # below saturation the merged bound is the tight one: 2x - x - 2 * err
    lo, hi = lo - 60, hi - 70
    assert margin_ibp(net, lo, hi, C)[0, 1] > net.ibp(lo, hi, C)[0][0, 1]


def test_requant_matches_tflite_fixed_point_and_its_ibp_is_exact():
    rng = np.random.default_rng(0)
    q, s = quantize_multipliers(rng.uniform(1e-4, 0.9, 5))
    op = Requant(q, s, -7, -128, 127, (5,))
    acc = torch.from_numpy(rng.integers(-200000, 200000, (400, 5)).astype(np.float64))
    ref = np.clip(multiply_by_quantized_multiplier(acc.numpy().astype(np.int64), q, s) - 7, -128, 127) + 7
    assert np.array_equal(op.forward(acc).numpy(), ref)
    lo, hi = acc[:200], acc[:200] + torch.from_numpy(rng.integers(0, 5000, (200, 5)).astype(np.float64))
    l, u = op.ibp(lo, hi)
    assert torch.equal(l, op.forward(lo)) and torch.equal(u, op.forward(hi))


def test_fully_connected_hull_covers_both_roundings():
    rng = np.random.default_rng(1)
    q, s = quantize_multipliers(rng.uniform(1e-3, 0.2, 3))
    op = Requant(q, s, 0, -128, 127, (3,), both_roundings=True)
    acc = rng.integers(-30000, 30000, (2000, 3))
    double = np.clip(multiply_by_quantized_multiplier(acc, q, s), -128, 127)
    single = np.clip(single_rounding(acc, q, s), -128, 127)
    assert (double != single).any()  # the two runtimes really differ somewhere
    t = torch.from_numpy(acc.astype(np.float64))
    l, u = op.ibp(t, t)
    assert (l.numpy() <= np.minimum(double, single)).all() and (u.numpy() >= np.maximum(double, single)).all()


# --- the real thing: a trained digits model, exported by the project's exporter, run by LiteRT

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("int8") / "cnn", "cnn_4layer", eps=0.05, epochs=8)


@pytest.mark.slow
def test_int8_model_is_bit_exact_with_litert_and_certified_boxes_hold(digits_run):
    from verisparse.int8_runtime import quantize, run_litert
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    art = load_artifact(digits_run / "model_int8.tflite")
    model, data = art.extra["model"], art.path.read_bytes()
    ds = load_dataset("digits")
    x, y = ds.x_test, ds.y_test
    # bit-exact on the whole test split
    q = quantize(x.numpy().transpose(0, 2, 3, 1), model.in_scale, model.in_zp)
    u = torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64) - model.in_zp)
    assert np.array_equal(model.forward_int(u).numpy() + model.out_zp, run_litert(data, q).astype(np.float64))
    eps = 0.02
    res = art.verify(x[:120], y[:120], eps, "crown")
    done = [r for r in res if r.status == "verified"]
    assert len(done) >= 10
    _certified_boxes_hold(art, x[:120], y[:120], eps, res, np.random.default_rng(0), points=60)
    for r in res:  # falsified samples carry a counterexample LiteRT confirms
        if r.status == "falsified":
            assert int(np.argmax(art.run(r.counterexample[None])[0])) != int(y[r.index])


@pytest.mark.slow
def test_attacked_points_never_break_a_certified_int8_sample(digits_run):
    """PGD on the surrogate, quantized, through LiteRT: certified samples never break."""
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    from verisparse.verify.attack import pgd
    from verisparse.verify.int8_verify import surrogate
    art = load_artifact(digits_run / "model_int8.tflite")
    ds = load_dataset("digits")
    eps = 0.03
    res = art.verify(ds.x_test[:150], ds.y_test[:150], eps, "crown")
    idx = torch.tensor([r.index for r in res if r.status == "verified"])
    assert len(idx) > 0
    gen = torch.Generator().manual_seed(1)
    adv, _ = pgd(surrogate(art.extra["model"]), ds.x_test[idx].double(), ds.y_test[idx], eps, steps=60, restarts=3,
                 generator=gen)
    x_l, x_u = (ds.x_test[idx] - eps).clamp(0, 1), (ds.x_test[idx] + eps).clamp(0, 1)
    adv = np.minimum(np.maximum(adv.float().numpy(), x_l.numpy()), x_u.numpy())
    assert (art.run(adv).argmax(1) == ds.y_test[idx].numpy()).all()


def _certified_boxes_hold(art, x, y, eps, res, rng, points=40):
    """Every int8 input in a verified sample's box (corners and random points) keeps its class in LiteRT."""
    from verisparse.int8_runtime import run_litert
    from verisparse.verify.bounds import input_box
    model, data = art.extra["model"], art.path.read_bytes()
    x_l, x_u = input_box(x, eps)
    for r in res:
        if r.status != "verified":
            continue
        i = r.index
        lo, hi = model.input_box(x_l[i:i + 1].numpy(), x_u[i:i + 1].numpy())
        lo, hi = lo[0].numpy() + model.in_zp, hi[0].numpy() + model.in_zp  # int8 values
        pts = rng.integers(lo[None], hi[None] + 1, (points, *lo.shape))
        pts[:points // 4] = np.where(rng.random((points // 4, *lo.shape)) < 0.5, lo, hi)  # corners
        pts = (pts.transpose(0, 2, 3, 1) if pts.ndim == 4 else pts).astype(np.int8)
        assert (run_litert(data, pts).argmax(1) == int(y[i])).all(), i


@pytest.mark.slow
def test_every_zoo_export_is_bit_exact_and_sound_in_the_int8_verifier(zoo_exports):
    """The integer IR of every zoo model in every sparsity mode (cnn_7layer brings PAD) computes
    LiteRT's bytes on the digits test split, and its IBP certificates hold in LiteRT."""
    from verisparse.int8_runtime import quantize, run_litert
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    ds = load_dataset("digits")
    x, y = ds.x_test, ds.y_test
    rng = np.random.default_rng(0)
    verified = 0
    for (arch, mode), (run, _) in zoo_exports.items():
        art = load_artifact(run / "model_int8.tflite")
        model, data = art.extra["model"], art.path.read_bytes()
        q = quantize(x.numpy().transpose(0, 2, 3, 1), model.in_scale, model.in_zp)
        u = torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64) - model.in_zp)
        ref = run_litert(data, q).astype(np.float64)
        assert np.array_equal(model.forward_int(u).numpy() + model.out_zp, ref), (arch, mode)
        res = art.verify(x[:60], y[:60], 0.01, "ibp")
        verified += sum(r.status == "verified" for r in res)
        _certified_boxes_hold(art, x[:60], y[:60], 0.01, res, rng, points=20)
    assert verified >= 100  # the check above really ran on certified samples


def test_unsupported_and_hostile_tflite_give_one_clear_error(tmp_path):
    from verisparse.errors import VeriSparseError
    from verisparse.verify.artifact import load_artifact
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(VeriSparseError):
        load_artifact(p)
    p.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(VeriSparseError, match="TFLite"):
        load_artifact(p)
