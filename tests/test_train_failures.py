"""How training fails: bad settings, divergence, interrupted runs and damaged run directories
all end in one clear VeriSparseError (CLI: one line, exit 2), never in silent nonsense."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import verisparse.trainer.train as train_module
from verisparse.errors import VeriSparseError
from verisparse.files import append_jsonl, write_jsonl
from verisparse.trainer.train import TrainConfig, load_run, train

FAST = dict(dataset="digits", arch="mlp_2layer", eps=0.05, batch_size=256, update_every=5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "verisparse", *args], capture_output=True, text=True)


def _strict_json(line):
    def refuse(name):
        raise AssertionError(f"{name} in a JSON log")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("setting", [
    dict(lr=math.inf), dict(lr=math.nan), dict(lr=0.0), dict(lr=-1e-3),
    dict(kappa_end=math.nan), dict(kappa_end=1.5), dict(kappa_start=-0.1),
    dict(update_fraction=5.0), dict(update_fraction=0.0), dict(update_fraction=math.nan),
    dict(warmup_epochs=-1), dict(ramp_epochs=-1), dict(warmup_epochs=3, ramp_epochs=3, epochs=4),
    dict(epochs=0), dict(batch_size=0), dict(update_every=0), dict(seed=-1),
    dict(baseline="prune-finetune", finetune_epochs=-1), dict(structure="structured", param_budget=0),
    dict(eval_crown_every=-2), dict(eval_every=0), dict(eps_train=math.nan), dict(eps_train=1.5), dict(eps=math.nan),
    dict(sparsity=math.nan), dict(lr_final=math.nan), dict(grad_clip=math.inf), dict(update_end=2.0),
    dict(epochs="5"), dict(lr="fast"), dict(batchnorm="yes"), dict(seed=1.5),
])
def test_every_setting_is_checked_in_one_place(tmp_path, setting):
    cfg = TrainConfig(**{**FAST, "epochs": 4, **setting})
    with pytest.raises(VeriSparseError):
        cfg.resolved()
    with pytest.raises(VeriSparseError):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_options_are_one_line_exit_2(tmp_path):
    for args, needle in ((["--update-every", "0"], "--update-every"), (["--lr", "nan"], "--lr"),
                         (["--lr", "inf"], "--lr"), (["--seed", "-1"], "--seed"),
                         (["--kappa-end", "nan"], "--kappa-end"), (["--warmup-epochs", "-1"], "--warmup-epochs"),
                         (["--update-fraction", "5"], "--update-fraction")):
        r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "2", "--quiet",
                 "--out", str(tmp_path / "x"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and needle in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x").exists()


def test_divergence_stops_cleanly_and_the_run_can_start_again(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(VeriSparseError, match=r"training diverged at epoch 1 step \d+; lower --lr"):
        train(TrainConfig(epochs=2, lr=1e30, **FAST), run, progress=False)
    assert not (run / "checkpoint.pt").exists()  # no NaN weights saved
    assert (run / "train_log.jsonl").read_text() == ""
    # Nothing was trained: the same --out takes a corrected run without --resume.
    log = train(TrainConfig(epochs=1, **FAST), run, progress=False)
    assert "from scratch" in capsys.readouterr().err
    assert len(log) == 1 and all(torch.isfinite(v).all() for v in load_run(run)[0].state_dict().values())
    for line in (run / "train_log.jsonl").read_text().splitlines():
        _strict_json(line)


def test_json_logs_refuse_nan(tmp_path):
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "a.jsonl", [dict(loss=math.nan)])
    with pytest.raises(ValueError):
        append_jsonl(tmp_path / "b.jsonl", dict(loss=math.inf))
    assert (tmp_path / "b.jsonl").read_text() == ""


class _Killed(BaseException):
    """Stands in for SIGKILL: raised from inside the loop, nothing after it runs."""


def _kill_at_evaluation(monkeypatch, number):
    calls = []
    real = train_module.evaluate

    def evaluate(*a, **kw):
        calls.append(1)
        if len(calls) == number:
            raise _Killed
        return real(*a, **kw)
    monkeypatch.setattr(train_module, "evaluate", evaluate)


def test_run_killed_in_its_first_epoch_restarts(tmp_path, monkeypatch, capsys):
    cfg = TrainConfig(epochs=2, **FAST)
    for resume in (True, False):
        run = tmp_path / f"resume-{resume}"
        with monkeypatch.context() as m:
            _kill_at_evaluation(m, 1)
            with pytest.raises(_Killed):
                train(cfg, run, progress=False)
        assert {p.name for p in run.iterdir()} == {"config.json", "train_log.jsonl"}
        with pytest.raises(VeriSparseError, match="another config"):
            train(TrainConfig(epochs=3, **FAST), run, resume=True, progress=False)
        log = train(cfg, run, resume=resume, progress=False)
        assert [r["epoch"] for r in log] == [1, 2]
        assert "from scratch" in capsys.readouterr().err
    # a real checkpoint still needs --resume, and a log with epochs is never trained over
    with pytest.raises(VeriSparseError, match="--resume"):
        train(cfg, run, progress=False)
    (run / "checkpoint.pt").unlink()
    for resume in (True, False):
        with pytest.raises(VeriSparseError, match="records trained epochs"):
            train(cfg, run, resume=resume, progress=False)


def test_resume_with_nothing_there_is_a_clear_error(tmp_path):
    with pytest.raises(VeriSparseError, match="nothing to resume"):
        train(TrainConfig(epochs=1, **FAST), tmp_path / "none", resume=True, progress=False)


@pytest.fixture
def killed_after_epoch_1(tmp_path, monkeypatch):
    """A run stopped after its first epoch's checkpoint and log line, during its second epoch."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_at_evaluation(m, 2)
        with pytest.raises(_Killed):
            train(TrainConfig(epochs=2, **FAST), run, progress=False)
    return run


def test_resume_drops_a_torn_last_log_line(killed_after_epoch_1):
    run = killed_after_epoch_1
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 0.4')  # killed halfway through the append
    log = train(TrainConfig(epochs=2, **FAST), run, resume=True, progress=False)
    assert [_strict_json(x)["epoch"] for x in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert [r["epoch"] for r in log] == [1, 2]


def test_resume_refuses_a_damaged_log(killed_after_epoch_1):
    run = killed_after_epoch_1
    lines = (run / "train_log.jsonl").read_text()
    (run / "train_log.jsonl").write_text("garbage\n" + lines)
    with pytest.raises(VeriSparseError, match="line 1 is not a log record"):
        train(TrainConfig(epochs=2, **FAST), run, resume=True, progress=False)


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.unlink(), "config.json is missing"),
    (lambda p: p.write_text('{"eps": 0.05,'), "not readable JSON"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not readable JSON"),
    (lambda p: p.write_text("[1, 2]"), "JSON object"),
    (lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), surprise=1))), "unknown keys"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "lr"})),
     "missing keys"),
    (lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), dataset_info=3))), "dataset_info"),
    (lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), seed=7))), "different runs"),
])
def test_resume_refuses_a_damaged_config(killed_after_epoch_1, damage, match):
    run = killed_after_epoch_1
    damage(run / "config.json")
    with pytest.raises(VeriSparseError, match=match):
        train(TrainConfig(epochs=2, **FAST), run, resume=True, progress=False)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_load_without_running_code(killed_after_epoch_1, tmp_path):
    run, marker = killed_after_epoch_1, tmp_path / "owned"
    ckpt = run / "checkpoint.pt"
    good = torch.load(ckpt, weights_only=True)
    cases = [(dict(good, model=_Payload(marker)), "not a readable checkpoint"),
             ({"weights": torch.zeros(3)}, "not a VeriSparse checkpoint"),
             ({k: v for k, v in good.items() if k != "optimizer"}, "damaged: optimizer"),
             (dict(good, epoch="1"), "damaged: epoch"),
             (dict(good, model={"nonsense": torch.zeros(2)}), "does not fit")]
    for state, match in cases:
        torch.save(state, ckpt)
        with pytest.raises(VeriSparseError, match=match):
            train(TrainConfig(epochs=2, **FAST), run, resume=True, progress=False)
        assert not marker.exists()
    torch.save(cases[0][0], ckpt)
    r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--eps", "0.05", "--batch-size", "256",
             "--update-every", "5", "--epochs", "2", "--quiet", "--out", str(run), "--resume")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not marker.exists()


def test_help_tells_the_default_method():
    r = _cli("train", "--help")
    assert r.returncode == 0 and "random mask, IBP" in r.stdout and "[default: ibp]" in r.stdout


def test_npz_with_mismatched_features_is_one_line_exit_2(tmp_path):
    p = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x_train=rng.random((20, 6)), y_train=np.arange(20) % 2, x_test=rng.random((5, 5)),
             y_test=np.arange(5) % 2)
    r = _cli("train", "--dataset", f"npz:{p}", "--arch", "mlp_2layer", "--eps", "0.05", "--epochs", "1",
             "--quiet", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "same features" in r.stderr, r.stderr
