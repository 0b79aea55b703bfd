import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from verisparse.errors import VeriSparseError
from verisparse.trainer.train import TrainConfig, load_run, train

FAST = dict(dataset="digits", eps=0.05, batch_size=64, update_every=10)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "verisparse", *args], capture_output=True, text=True, **kw)


def test_run_directory_contract(tmp_path):
    out = tmp_path / "run"
    log = train(TrainConfig(arch="cnn_4layer", epochs=4, sparsity=0.9, warmup_epochs=1, ramp_epochs=2, **FAST), out,
                progress=False)
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "train_log.jsonl"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sparsity"] == 0.9 and cfg["dataset_info"]["split"]["seed"] == 0
    assert cfg["dataset_info"]["split"]["test_sha256"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and "optimizer" in state
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert lines == log and len(lines) == 4
    dense = 16 * 16 + 32 * 16 * 16 + 100 * 32 * 2 * 2 + 10 * 100
    for r in lines:  # exact at every epoch, masks moving or not
        assert r["effective_params"] == round(0.1 * dense)
        for k in ("eps", "loss", "clean_acc", "ibp_verified_acc", "crown_ibp_verified_acc", "pgd_robust_acc",
                  "sparsity", "seconds"):
            assert k in r
        assert r["ibp_verified_acc"] <= r["crown_ibp_verified_acc"] <= r["pgd_robust_acc"] <= r["clean_acc"]
    assert "crown_verified_acc" not in lines[0]
    last = lines[-1]
    assert last["crown_ibp_verified_acc"] <= last["crown_verified_acc"] <= last["pgd_robust_acc"]
    assert lines[0]["eps_train_now"] == 0 and lines[-1]["eps_train_now"] == pytest.approx(0.075)
    model, c, ds = load_run(out)
    assert c.arch == "cnn_4layer" and model(ds.x_test[:2]).shape == (2, 10)


def test_attack_and_crown_ibp_run_every_eval_every_epochs_and_on_the_last(tmp_path):
    assert TrainConfig(epochs=100).resolved().eval_every == 5 and TrainConfig(epochs=30).resolved().eval_every == 1
    log = train(TrainConfig(arch="mlp_2layer", epochs=5, sparsity=0.9, eval_every=2, **FAST), tmp_path / "run",
                progress=False)
    attacked = [r["epoch"] for r in log if "pgd_robust_acc" in r]
    assert attacked == [r["epoch"] for r in log if "crown_ibp_verified_acc" in r] == [2, 4, 5]
    for r in log:  # clean and IBP-verified every epoch, and IBP still never above clean
        assert r["ibp_verified_acc"] <= r["clean_acc"]
    assert "crown_verified_acc" in log[-1]


def test_training_steps_flush_denormals_and_evaluation_keeps_ieee(tmp_path, monkeypatch):
    """Pruned weights' Adam momentum decays into denormals, slow on x86 (trainer/optim.py):
    the steps read them as zero; evaluation, whose bounds are reported, and the caller after
    train() keep IEEE arithmetic."""
    from verisparse.trainer import train as train_module
    tiny = torch.tensor([1e-40])  # a denormal float32

    def ieee():
        return bool((tiny * 1.0).item() != 0.0)

    seen = {"step": set(), "eval": set()}
    step_loss, evaluate = train_module.certified_loss, train_module.evaluate
    monkeypatch.setattr(train_module, "certified_loss",
                        lambda *a, **k: seen["step"].add(ieee()) or step_loss(*a, **k))
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: seen["eval"].add(ieee()) or evaluate(*a, **k))
    train(TrainConfig(epochs=2, sparsity=0.9, **FAST), tmp_path / "run", progress=False)
    assert seen == {"step": {False}, "eval": {True}} and ieee()


def test_masks_move_during_training(tmp_path):
    out = tmp_path / "run"
    torch.manual_seed(0)
    train(TrainConfig(arch="mlp_2layer", epochs=1, sparsity=0.9, **FAST), out / "a", progress=False)
    log = train(TrainConfig(arch="mlp_2layer", epochs=3, sparsity=0.9, **FAST), out / "b", progress=False)
    a = torch.load(out / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "b" / "checkpoint.pt", weights_only=True)["model"]
    moved = int((a["1.weight_mask"] != b["1.weight_mask"]).sum())
    assert moved > 0 and int(a["1.weight_mask"].sum()) == int(b["1.weight_mask"].sum())
    # the log says where sparsity sits and how much of the mask moved, epoch by epoch
    assert sum(r["mask_changes"] for r in log) >= moved > 0
    assert set(log[-1]["layer_sparsity"]) == {"1:Linear", "3:Linear"}
    assert all(0 < v < 1 for v in log[-1]["layer_sparsity"].values())


def test_structured_run_removes_units_within_budget(tmp_path):
    log = train(TrainConfig(arch="cnn_4layer", epochs=3, structure="structured", sparsity=0.5, **FAST),
                tmp_path / "s", progress=False)
    assert all(0.5 <= r["sparsity"] < 0.6 for r in log)
    model, _, _ = load_run(tmp_path / "s")
    assert float(model[0].out_mask.sum()) < 16


def test_baselines(tmp_path):
    dense = train(TrainConfig(arch="mlp_2layer", epochs=2, baseline="dense", **FAST), tmp_path / "d",
                  progress=False)
    assert all(r["sparsity"] == 0 and r["phase"] == "dense" for r in dense)
    pf = train(TrainConfig(arch="mlp_2layer", epochs=3, baseline="prune-finetune", sparsity=0.9,
                           finetune_epochs=2, **FAST), tmp_path / "pf", progress=False)
    assert [r["phase"] for r in pf] == ["dense"] * 3 + ["finetune"] * 2
    assert pf[2]["sparsity"] == 0 and all(r["sparsity"] == pytest.approx(0.9, abs=1e-4) for r in pf[3:])


@pytest.mark.parametrize("structure", ["unstructured", "structured"])
def test_dense_start_chooses_the_mask_by_magnitude(tmp_path, monkeypatch, structure):
    """--dense-epochs: dense epochs first, then the largest weights (or units) become the mask,
    at the exact budget, and the mask moves on from there as in any VeriSparse run."""
    from verisparse.trainer import sparsity as sp
    from verisparse.trainer import train as train_module
    chosen = []
    magnitude, units = sp.magnitude_unstructured, sp.select_units

    def spy_magnitude(model, sparsity):
        expected = [torch.topk((m.weight * m.weight_mask).abs().flatten(), n).indices.sort().values
                    for (_, m), n in zip(sp.prunable(model), sp.erk_counts(model, sparsity))]
        magnitude(model, sparsity)
        chosen.append(all(torch.equal(torch.nonzero(m.weight_mask.flatten()).flatten(), e)
                          for (_, m), e in zip(sp.prunable(model), expected)))

    def spy_units(model, counts, generator=None):
        chosen.append(generator is None)  # by norm, not at random
        units(model, counts, generator=generator)

    monkeypatch.setattr(train_module.sp, "magnitude_unstructured", spy_magnitude)
    monkeypatch.setattr(train_module.sp, "select_units", spy_units)
    log = train(TrainConfig(arch="mlp_2layer", epochs=4, dense_epochs=1, sparsity=0.9, structure=structure,
                            **FAST), tmp_path / "run", progress=False)
    assert [r["phase"] for r in log] == ["dense", "sparse", "sparse", "sparse"]
    assert log[0]["sparsity"] == 0 and chosen[0] is True
    if structure == "unstructured":
        assert all(r["sparsity"] == pytest.approx(0.9, abs=1e-4) for r in log[1:])
        assert log[2]["mask_changes"] > 0  # RigL still moves it
    else:
        assert all(0.9 <= r["sparsity"] < 0.95 for r in log[1:])


@pytest.mark.parametrize("settings", [dict(dense_epochs=3, epochs=3), dict(dense_epochs=-1),
                                      dict(dense_epochs=1, baseline="prune-finetune")])
def test_dense_start_settings_are_checked(settings):
    with pytest.raises(VeriSparseError, match="dense-epochs"):
        TrainConfig(**settings).resolved()


def test_gradual_pruning_thins_to_the_exact_budget_by_the_end_of_the_window(tmp_path, monkeypatch):
    """--initial-density: a random mask at that density, thinned by magnitude on the cubic
    schedule every update_every steps, RigL moving the mask meanwhile; exact at the window's end."""
    from verisparse.trainer import sparsity as sp
    from verisparse.trainer import train as train_module
    densities = []
    thin = sp.thin_unstructured

    def spy(model, density, final):
        densities.append(density)
        return thin(model, density, final)

    monkeypatch.setattr(train_module.sp, "thin_unstructured", spy)
    log = train(TrainConfig(arch="mlp_2layer", epochs=4, sparsity=0.9, initial_density=0.5, prune_window=0.5,
                            **FAST), tmp_path / "run", progress=False)
    steps = 2 * math.ceil(1438 / FAST["batch_size"])  # the window: half of 4 epochs
    assert len(densities) == (steps - 1) // FAST["update_every"] + 1
    assert densities[0] < 0.5 and densities[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(densities, densities[1:]))
    assert [r["phase"] for r in log] == ["gradual", "gradual", "sparse", "sparse"]
    dense = sp.sparsity_summary(load_run(tmp_path / "run")[0])["dense_params"]
    assert 0.5 < log[0]["sparsity"] < 0.9
    assert [r["effective_params"] for r in log[1:]] == [round(0.1 * dense)] * 3
    assert log[1]["mask_changes"] > 0 and log[2]["mask_changes"] > 0  # RigL moves it in and after the window


def test_structured_gradual_pruning_ends_at_the_structured_budget_with_a_shrinking_net(tmp_path):
    """--structure structured --initial-density 1: dense at first, whole units thinned by norm
    inside the window; at its end every layer keeps exactly the units a plain structured run of
    that sparsity keeps, and each epoch in the window costs fewer MACs than the one before."""
    from verisparse.trainer import sparsity as sp
    cfg = dict(FAST, arch="mlp_2layer", structure="structured", sparsity=0.9, epochs=4, eval_crown_every=-1)
    plain = train(TrainConfig(**dict(cfg, epochs=1)), tmp_path / "plain", progress=False)
    log = train(TrainConfig(initial_density=1.0, prune_window=0.75, **cfg), tmp_path / "gradual", progress=False)
    want = sp.kept_units(load_run(tmp_path / "plain")[0])
    assert sp.kept_units(load_run(tmp_path / "gradual")[0]) == want
    assert want[0] < 256  # units were removed
    assert [r["phase"] for r in log] == ["gradual"] * 3 + ["sparse"]
    assert log[0]["macs"] > log[1]["macs"] > log[2]["macs"] > log[3]["macs"]
    assert log[0]["sparsity"] < log[1]["sparsity"] < log[2]["sparsity"] == log[3]["sparsity"]
    assert log[2]["effective_params"] == plain[0]["effective_params"]


def test_structured_gradual_pruning_from_a_random_start(tmp_path, monkeypatch):
    """D < 1: a random structured mask at weight density D (not above it), thinned to the budget."""
    from verisparse.trainer import sparsity as sp
    from verisparse.trainer import train as train_module
    seen = []
    thin = sp.thin_structured

    def spy(model, target, final):  # the first call sees the mask as drawn (no re-mask in epoch 1)
        seen.append(sp.sparsity_summary(model)["sparsity"])
        return thin(model, target, final)

    monkeypatch.setattr(train_module.sp, "thin_structured", spy)
    log = train(TrainConfig(**dict(FAST, arch="mlp_2layer", structure="structured", sparsity=0.9, epochs=2,
                                   eval_crown_every=-1, initial_density=0.4)), tmp_path / "run", progress=False)
    assert 0.6 <= seen[0] < 0.7
    assert log[0]["sparsity"] < log[1]["sparsity"] and log[1]["sparsity"] == pytest.approx(0.9, abs=0.02)


@pytest.mark.parametrize("settings, needle", [
    (dict(initial_density=0.5, structure="structured", param_budget=5000), "initial-density"),
    (dict(initial_density=0.05, structure="structured", sparsity=0.95), "initial-density"),
    (dict(initial_density=1.01, structure="structured"), "initial-density"),
    (dict(initial_density=0.5, baseline="hydra"), "initial-density"),
    (dict(initial_density=0.5, dense_epochs=1), "initial-density"),
    (dict(initial_density=0.1, sparsity=0.9), "initial-density"),  # 1 - 0.9 is 0.0999... in floats
    (dict(initial_density=1.5), "initial-density"),
    (dict(initial_density=0.5, prune_window=0.0), "prune-window"),
    (dict(prune_window=float("nan")), "prune-window")])
def test_gradual_pruning_settings_are_checked(settings, needle):
    with pytest.raises(VeriSparseError, match=needle):
        TrainConfig(**settings).resolved()


def test_a_run_from_before_dense_epochs_still_loads_and_resumes(tmp_path):
    from verisparse.trainer.rundir import ADDED_SETTINGS
    out = tmp_path / "old"
    cfg = TrainConfig(arch="mlp_2layer", epochs=2, sparsity=0.9, **FAST)
    train(cfg, out, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    saved = json.loads((out / "config.json").read_text())
    for key in ADDED_SETTINGS:  # dense_epochs, initial_density, prune_window
        del state["config"][key], saved[key]
    torch.save(state, out / "checkpoint.pt")
    (out / "config.json").write_text(json.dumps(saved))
    assert load_run(out)[1].dense_epochs == 0 and load_run(out)[1].initial_density is None
    log = train(cfg, out, resume=True, progress=False)  # the config check passes; nothing is left to train
    assert [r["epoch"] for r in log] == [1, 2]


def _final_weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    args = ["train", "--dataset", "digits", "--arch", "cnn_4layer", "--eps", "0.05", "--epochs", "8",
            "--warmup-epochs", "1", "--ramp-epochs", "4", "--batch-size", "32", "--update-every", "10",
            "--quiet", "--out"]
    ref = _cli(*args, str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "verisparse", *args, str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert 2 <= done < 8, "the kill must land mid-run"
    res = _cli(*args, str(run), "--resume")
    assert res.returncode == 0, res.stderr
    a, b = _final_weights(tmp_path / "ref"), _final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == list(range(1, 9))


def test_bad_input_exits_2_without_traceback_or_damage(tmp_path):
    for args, needle in ((["--dataset", "imagenet"], "unknown dataset"), (["--arch", "resnet"], "unknown arch"),
                         (["--eps", "0"], "(0, 1]"), (["--eps", "1.5"], "(0, 1]"),
                         (["--sparsity", "1.0"], "[0, 1)"), (["--sparsity", "-0.1"], "[0, 1)"),
                         (["--dataset", "mnist", "--data-root", str(tmp_path / "none")], "not a readable"),
                         (["--dataset", f"npz:{tmp_path / 'none.npz'}"], "not found"),
                         (["--dataset", "digits", "--arch", "cnn_4layer", "--eps", "0.05", "--structure",
                           "structured", "--param-budget", "3"], "budget"),
                         (["--structure", "structured", "--sparsity", "0.9", "--initial-density", "0.1"],
                          "= (0.1, 1]; got 0.1")):
        r = _cli("train", "--out", str(tmp_path / "x"), "--epochs", "1", "--quiet", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    run = tmp_path / "r"
    r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "1", "--quiet", "--out", str(run))
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for extra in ([], ["--resume", "--epochs", "2"]):
        r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "1", "--quiet",
                 "--out", str(run), *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "r"
    train(TrainConfig(arch="mlp_2layer", epochs=1, **FAST), run, progress=False)
    (run / "checkpoint.pt").write_bytes(b"\x80garbage")
    with pytest.raises(VeriSparseError, match="not a readable checkpoint"):
        load_run(run)
    r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "1", "--quiet",
             "--out", str(run), "--resume")
    assert r.returncode == 2 and "not a readable checkpoint" in r.stderr


def test_cli_help_has_examples():
    r = _cli("train", "--help")
    assert r.returncode == 0 and "Examples:" in r.stdout and "--resume" in r.stdout
    assert "--structure structured --sparsity 0.95 --initial-density 1" in r.stdout  # no longer refused
    assert _cli("--help").returncode == 0
