"""Compacted structured training (trainer/compact.py) computes what the masked model computes."""
import copy
import dataclasses

import pytest
import torch

from verisparse.errors import VeriSparseError
from verisparse.trainer import sparsity as sp
from verisparse.trainer import train as train_module
from verisparse.trainer.certified import certified_loss
from verisparse.trainer.compact import Compacted, compactable
from verisparse.trainer.evaluate import evaluate
from verisparse.trainer.models import build_model, prunable
from verisparse.trainer.train import TrainConfig, train
from verisparse.verify.from_torch import bounded_net

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]
NETS = [("mlp_2layer", (1, 8, 8)), ("mlp_3layer", (1, 6, 6)), ("mlp_5layer", (1, 6, 6)),
        ("cnn_4layer", (1, 12, 12)), ("cnn_4layer", (3, 11, 9)), ("cnn_7layer", (3, 8, 8))]


def _random_structured(arch, shape, seed, device="cpu"):
    """A random zoo net (torch's init, random biases) with a random structured mask (some
    layers keep a single unit) and input normalisation."""
    torch.manual_seed(seed)
    model = build_model(arch, shape, 10, normalize=([0.4] * shape[0], [0.3] * shape[0]))
    gen = torch.Generator().manual_seed(seed)
    units = [m.weight.shape[0] for _, m in prunable(model)]
    counts = [int(torch.randint(1, max(2, u // 2), (1,), generator=gen)) for u in units[:-1]] + [units[-1]]
    sp.select_units(model, counts, generator=gen)
    with torch.no_grad():
        for _, m in prunable(model):
            m.bias.normal_(0, 0.1, generator=gen)
    return model.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,shape", NETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_net_gives_the_masked_logits_losses_and_gradients(arch, shape, seed, device):
    _assert_compact_equals_masked(_random_structured(arch, shape, seed, device), shape, seed, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,shape", NETS)
def test_compact_net_inside_the_gradual_pruning_window_equals_the_masked_one(arch, shape, device):
    """--initial-density with structured sparsity: a dense random net thinned by unit norm to
    the counts of a density halfway through the window (the net trainer.train gathers there)."""
    torch.manual_seed(3)
    masked = build_model(arch, shape, 10, normalize=([0.4] * shape[0], [0.3] * shape[0]))
    with torch.no_grad():
        for _, m in prunable(masked):
            m.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    final = sp.structured_counts(masked, 0.95)
    density = sp.gradual_density(50, 100, 1.0, 0.05)
    assert sp.thin_structured(masked, sp.gradual_structured_counts(masked, density, final), final) > 0
    assert all(f <= k < m.weight.shape[0] for f, k, (_, m) in zip(final, sp.kept_units(masked), prunable(masked)[:-1]))
    _assert_compact_equals_masked(masked.to(device), shape, 3, device)


def _assert_compact_equals_masked(masked, shape, seed, device):
    """Logits, certified losses and one step's gradients (scattered back) of the compact net
    equal the masked model's to 1e-5."""
    gen = torch.Generator().manual_seed(seed + 100)
    x, y = torch.rand(7, *shape, generator=gen).to(device), torch.randint(0, 10, (7,), generator=gen).to(device)
    close = dict(rtol=1e-5, atol=1e-5)
    for method, beta, kappa in (("ibp", 0.0, 0.3), ("crown-ibp", 0.6, 0.3), ("crown-ibp", 1.0, 0.0)):
        model, ref = copy.deepcopy(masked), copy.deepcopy(masked)
        # SGD at lr 1 makes each weight's change its gradient, scattered back by the public path.
        comp = Compacted(model, torch.optim.SGD(model.parameters(), lr=1.0), shape)
        assert sum(p.numel() for p in comp.model.parameters()) < sum(p.numel() for p in model.parameters())
        torch.testing.assert_close(comp.net.forward(x), masked(x), **close)
        torch.testing.assert_close(comp.model(x), bounded_net(masked, shape).forward(x), **close)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=1.0)
        ref_loss, ref_logits = certified_loss(bounded_net(ref, shape), x, y, 0.05, 10, method, beta, kappa)
        loss, logits = certified_loss(comp.net, x, y, 0.05, 10, method, beta, kappa)
        torch.testing.assert_close(loss, ref_loss, **close)
        torch.testing.assert_close(logits, ref_logits, **close)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        comp.opt.zero_grad()
        loss.backward()
        comp.opt.step()
        comp.scatter(replay_pruned=True)
        for p, r, m in zip(model.parameters(), ref.parameters(), masked.parameters()):
            # the gradient, scattered back; 1e-5 of its own scale (float32, summed in another order)
            scale = max(1.0, float((r - m).detach().abs().max()))
            torch.testing.assert_close(p - m, r - m, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("arch,shape", [("mlp_3layer", (1, 8, 8)), ("cnn_4layer", (1, 12, 12))])
def test_evaluation_of_the_compact_net_matches_the_masked_model(arch, shape, one_thread):
    masked = _random_structured(arch, shape, 4)
    comp = Compacted(masked, torch.optim.Adam(masked.parameters()), shape)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(60, *shape, generator=gen)
    y = masked(x).argmax(1)  # every sample classified correctly, so the bounds decide
    y[:10] = (y[:10] + 1) % 10
    partly = False  # some eps must leave the verdicts undecided by accuracy alone
    for eps in (0.002, 0.01, 0.03, 0.1):
        got = evaluate(comp.model, x, y, eps, 10)
        assert got == evaluate(masked, x, y, eps, 10)
        partly |= 0 < got["crown_verified_acc"] < got["clean_acc"]
    assert partly


def test_scatter_replays_adam_on_pruned_weights_as_masked_training_does():
    """Masked training steps pruned weights with zero gradients (Adam momentum still moves
    them); a unit that comes back must find the weights it would have had."""
    shape = (1, 12, 12)
    model = _random_structured("cnn_4layer", shape, 3)
    masked = copy.deepcopy(model)
    opt, ref_opt = torch.optim.Adam(model.parameters(), lr=0.01), torch.optim.Adam(masked.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(9, *shape, generator=gen), torch.randint(0, 10, (9,), generator=gen)
    # a dense-trained state first, so pruned weights carry momentum
    for m in (model, masked):
        for _, layer in prunable(m):
            layer.out_mask.fill_(1.0)
    for o, m in ((opt, model), (ref_opt, masked)):
        for _ in range(3):
            o.zero_grad()
            certified_loss(bounded_net(m, shape), x, y, 0.05, 10, "ibp", 0.0, 0.5)[0].backward()
            o.step()
    counts = [5, 3, 7, 10]
    sp.select_units(model, counts, generator=torch.Generator().manual_seed(0))
    sp.select_units(masked, counts, generator=torch.Generator().manual_seed(0))
    comp = Compacted(model, opt, shape)
    dead = model[1].out_mask == 0
    pruned_before = model[1].weight[dead].clone()
    for lr in (0.01, 0.005, 0.002):
        for o, net in ((comp.opt, comp.net), (ref_opt, bounded_net(masked, shape))):
            o.param_groups[0]["lr"] = lr
            o.zero_grad()
            certified_loss(net, x, y, 0.05, 10, "ibp", 0.0, 0.5)[0].backward()
            o.step()
    comp.scatter(replay_pruned=True)
    for p, r in zip(model.parameters(), masked.parameters()):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
        assert torch.equal(opt.state[p]["step"], ref_opt.state[r]["step"])
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][k], ref_opt.state[r][k], rtol=1e-5, atol=1e-8)
    assert opt.param_groups[0]["lr"] == 0.002
    # pruned weights did move (momentum), so this test can tell a replay from none
    assert (model[1].weight[dead] - pruned_before).abs().min() > 0


def test_compactable_and_its_refusals():
    model = build_model("cnn_4layer", (1, 12, 12), 10)
    assert not compactable(model)  # nothing pruned: nothing to gain
    sp.select_units(model, [8, 16, 50, 10], generator=torch.Generator().manual_seed(0))
    assert compactable(model)
    model[0].weight_mask[0, 0, 0, 0] = 0
    assert not compactable(model)
    with pytest.raises(VeriSparseError, match="purely structured"):
        Compacted(model, torch.optim.Adam(model.parameters()), (1, 12, 12))
    model[0].weight_mask.fill_(1.0)
    model[-1].out_mask[3] = 0
    with pytest.raises(VeriSparseError, match="last layer"):
        Compacted(model, torch.optim.Adam(model.parameters()), (1, 12, 12))


FAST = dict(dataset="digits", arch="cnn_4layer", eps=0.05, batch_size=64, structure="structured", sparsity=0.8,
            eval_crown_every=-1)


def _state(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _alive(run, arch="cnn_4layer"):
    """The weights that count (kept units, fed by kept units) and the masks of a run."""
    state = _state(run)
    model = build_model(arch, (1, 8, 8), 10)
    model.load_state_dict(state["model"])
    out = {}
    for i, m, alive in sp.alive_masks(model):
        out[f"{i}.weight"] = m.weight.detach() * alive
        out[f"{i}.bias"] = m.bias.detach() * m.out_mask
        out[f"{i}.out_mask"] = m.out_mask
    return out


@pytest.fixture
def float64(monkeypatch):
    """Whole training runs in float64. Over a few epochs Adam magnifies float32's rounding
    (a gradient near zero divided by its own running norm): the compact and masked runs,
    which sum in different orders, drift 1e-4 apart on one CPU and 1e-6 on another. In
    float64 they agree to 1e-15, so a tolerance of 1e-10 catches any real difference (one
    dropped Adam replay step moves the weights by 2e-6). Yields that tolerance."""
    real = train_module.load_dataset

    def load_dataset(*args, **kw):
        ds = real(*args, **kw)
        return dataclasses.replace(ds, x_train=ds.x_train.double(), x_test=ds.x_test.double())

    monkeypatch.setattr(train_module, "load_dataset", load_dataset)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield dict(rtol=1e-10, atol=1e-10)
    torch.set_default_dtype(default)


def _compact_and_masked_runs_match(cfg, tmp_path, close, arch="cnn_4layer"):
    """Train cfg compacted and masked; their masks are equal and live weights close. Returns
    {compact: log}."""
    logs = {c: train(cfg, tmp_path / str(c), progress=False, compact=c) for c in (True, False)}
    a, b = _alive(tmp_path / "True", arch), _alive(tmp_path / "False", arch)
    assert all(t.dtype == torch.float64 for t in a.values())
    for k in a:
        if k.endswith("mask"):
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], **close)
    return logs


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_compact_training_equals_masked_training(tmp_path, method, one_thread, float64):
    """Masks re-chosen every epoch (units leave and come back), then fixed: the compact run's
    masks and log equal the masked run's, its live weights to float64 rounding. (Once the masks are
    fixed, the compact run leaves pruned weights where they are, while masked training's
    Adam still drifts them: nothing reads them again, so only the live weights compare.)"""
    cfg = TrainConfig(epochs=4, warmup_epochs=0, ramp_epochs=2, update_end=0.75, method=method, **FAST)
    logs = _compact_and_masked_runs_match(cfg, tmp_path, float64)
    moved = sum(r["mask_changes"] for r in logs[True])
    assert moved == sum(r["mask_changes"] for r in logs[False]) and moved > 0
    for ra, rb in zip(logs[True], logs[False]):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-10)
        for k in ("clean_acc", "ibp_verified_acc", "sparsity", "effective_params"):
            assert ra[k] == rb[k], k


def test_compact_gradual_structured_pruning_equals_masked_training(tmp_path, monkeypatch, one_thread, float64):
    """--initial-density 1 with structured sparsity: the units are thinned every update_every
    steps (mid-epoch), the compact net is gathered anew after each thinning, and the run's
    masks, live weights and losses match the masked run's; its MACs fall as the net shrinks."""
    built = []
    monkeypatch.setattr(train_module.cp, "Compacted", lambda *a: built.append(1) or Compacted(*a))
    cfg = TrainConfig(epochs=4, warmup_epochs=0, ramp_epochs=2, update_end=0.75, initial_density=1.0,
                      prune_window=0.5, update_every=5, **FAST)
    logs = _compact_and_masked_runs_match(cfg, tmp_path, float64)
    # 46 window steps thinned at steps 5, 10, ..., 45 (nine re-gathers) plus epoch 3's re-mask
    assert len(built) >= 10
    log = logs[True]
    assert [r["phase"] for r in log] == ["gradual", "gradual", "sparse", "sparse"]
    assert log[0]["macs"] > log[1]["macs"] > log[2]["macs"] == log[3]["macs"]
    assert log[0]["sparsity"] < log[1]["sparsity"] == log[3]["sparsity"]
    assert all(ra["macs"] < rb["macs"] for ra, rb in zip(log, logs[False]))  # the masked net computes densely
    for ra, rb in zip(log, logs[False]):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-10)
        for k in ("clean_acc", "ibp_verified_acc", "sparsity", "effective_params", "mask_changes"):
            assert ra[k] == rb[k], k


def test_compact_finetune_of_prune_finetune_equals_masked(tmp_path, monkeypatch, one_thread, float64):
    """The structured prune-finetune baseline fine-tunes its pruned model compacted too."""
    built = []
    monkeypatch.setattr(train_module.cp, "Compacted", lambda *a: built.append(1) or Compacted(*a))
    cfg = TrainConfig(**dict(FAST, arch="mlp_2layer", baseline="prune-finetune", epochs=2, finetune_epochs=2,
                             warmup_epochs=0, ramp_epochs=1))
    logs = _compact_and_masked_runs_match(cfg, tmp_path, float64, "mlp_2layer")
    assert [r["phase"] for r in logs[True]] == ["dense"] * 2 + ["finetune"] * 2
    assert len(built) == 1  # gathered once when pruned, then kept: the mask no longer moves
    for ra, rb in zip(logs[True], logs[False]):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-10)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("gradual", [{}, dict(initial_density=1.0, prune_window=0.8, update_every=5)])
def test_compact_resume_is_bit_identical(tmp_path, monkeypatch, one_thread, gradual):
    """A run stopped after epoch 2 (masks still moving) or 4 (masks fixed, the compact net
    kept across epochs) and resumed ends bit-identical to an uninterrupted one; with gradual
    structured pruning both stops fall inside the window (its 110 steps end in epoch 5)."""
    cfg = TrainConfig(epochs=6, warmup_epochs=1, ramp_epochs=3, update_end=0.5, **FAST, **gradual)
    train(cfg, tmp_path / "ref", progress=False)
    ref = _state(tmp_path / "ref")
    real_evaluate = train_module.evaluate
    for stop in (2, 4):
        calls = []

        def evaluate(*args, **kw):
            calls.append(1)
            if len(calls) > stop:
                raise _Killed
            return real_evaluate(*args, **kw)

        run = tmp_path / f"stop{stop}"
        monkeypatch.setattr(train_module, "evaluate", evaluate)
        with pytest.raises(_Killed):
            train(cfg, run, progress=False)
        monkeypatch.setattr(train_module, "evaluate", real_evaluate)
        assert _state(run)["epoch"] == stop
        train(cfg, run, resume=True, progress=False)
        got = _state(run)
        assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
        for sa, sb in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert ref["optimizer"]["param_groups"] == got["optimizer"]["param_groups"]
