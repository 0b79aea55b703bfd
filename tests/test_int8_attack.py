"""The int8 falsifier searches the integer box itself: whatever a plain random search over
the int8 inputs of the ball breaks, verify reports falsified (with LiteRT's confirmation),
and it never calls a point falsified that LiteRT does not misclassify, or (noted as a tie)
score another class exactly as high as the label."""
import numpy as np
import pytest
import torch

from conftest import trained_digits_export
from verisparse.int8_runtime import quantize, run_litert
from verisparse.verify.rounding import inner_box

EPS = 0.05


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    # half the natural loss keeps it accurate enough to leave samples for the attacks to settle
    return trained_digits_export(tmp_path_factory.mktemp("int8atk") / "cnn", "cnn_4layer", eps=0.03, epochs=10,
                                 lr=5e-3, kappa_end=0.5)


def _random_integer_search(model, x, y, rng, points=1500):
    """Corners and interior points of the int8 box the ball's float32 points reach, through
    the integer network (byte-exact with LiteRT); True where some point is misclassified."""
    a_l, a_u = inner_box(x, EPS)
    lo, hi = (torch.from_numpy(model.quantize(v.numpy())) for v in (a_l, a_u))
    broken = []
    for i in range(len(y)):
        shape = (points, *lo.shape[1:])
        pts = torch.from_numpy(rng.integers(lo[i].numpy(), hi[i].numpy() + 1, shape).astype(np.float64))
        corners = torch.from_numpy(rng.random(shape) < 0.5)
        pts[: points // 2] = torch.where(corners, lo[i], hi[i])[: points // 2]
        with torch.no_grad():
            broken.append(bool((model.forward_int(pts).argmax(1) != y[i]).any()))
    return broken


@pytest.mark.slow
def test_int8_falsifier_finds_what_random_integer_search_finds(int8_run):
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    art = load_artifact(int8_run / "model_int8.tflite")
    model, data = art.extra["model"], art.path.read_bytes()
    ds = load_dataset("digits")
    x, y = ds.x_test[:100], ds.y_test[:100]
    res = art.verify(x, y, EPS, "crown")
    by = {r.index: r for r in res}
    randomly_broken = _random_integer_search(model, x, y, np.random.default_rng(0))
    missed = [i for i, b in enumerate(randomly_broken) if b and by[i].status != "falsified"]
    assert not missed, missed  # also: nothing random search breaks was called verified
    searched = [r for r in res if r.decided_by == "int8-search"]
    assert searched, "the integer search decided nothing: the test is not testing it"
    for r in res:
        if r.status == "falsified":  # every counterexample is one for LiteRT, inside the ball
            lo, hi = (t[r.index].numpy() for t in inner_box(x, EPS))
            assert ((r.counterexample >= lo) & (r.counterexample <= hi)).all()
            q = quantize(r.counterexample[None].transpose(0, 2, 3, 1), model.in_scale, model.in_zp)
            out, label = run_litert(data, q)[0].astype(int), int(y[r.index])
            if r.note and "tie" in r.note:  # the label keeps the first maximum only by the tie-break
                assert int(np.argmax(out)) == label and out[label] == np.delete(out, label).max()
            else:
                assert int(np.argmax(out)) != label
