"""Data-parallel training (torchrun + DDP, gloo on CPU): two processes train the same model as
one process with the same global batch and seed; a killed rank is resumed; errors stop every
rank with the CLI's exit codes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from verisparse.trainer.datasets import load_dataset
from verisparse.trainer.distributed import Ranks
from verisparse.trainer.train import load_run

# digits: small and shipped with scikit-learn. Full CROWN is skipped (-1): the comparison is
# about training, and rank 0 alone evaluates anyway.
COMMON = ["--dataset", "digits", "--eps", "0.05", "--epochs", "2", "--warmup-epochs", "0", "--ramp-epochs", "1",
          "--eval-crown-every", "-1", "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "verisparse", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _torchrun(nproc, *args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "verisparse", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def test_slices_cover_every_global_batch_once_and_weight_to_its_mean():
    losses = torch.rand(64, dtype=torch.float64)
    for n in (1, 2, 5, 64):
        for world in (2, 3, 4):
            idx = torch.randperm(64)[:n]
            covered, weighted = [], 0.0
            for rank in range(world):
                r = Ranks.__new__(Ranks)  # the slicing arithmetic alone, without a process group
                r.world, r.rank = world, rank
                mine = r.shard(idx)
                assert len(mine) >= 1  # an empty slice still runs one sample, at weight 0
                covered.append(mine[:r._n_local])
                weighted += float(losses[mine].mean()) * r._scale / world  # what DDP's average sees
            assert torch.equal(torch.cat(covered), idx), "each sample once, in the global order"
            assert weighted == pytest.approx(float(losses[idx].mean()), rel=1e-12)


def _batch_leaving(last_ok):
    """The smallest batch size from 60 up whose last batch of an epoch on digits has a size that last_ok accepts."""
    n = len(load_dataset("digits").y_train)
    return next(b for b in range(60, n) if last_ok(n % b))


def _state(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=True)["model"]


def _assert_same_training(one, two):
    a, b = _state(one), _state(two)
    assert a.keys() == b.keys()
    masks = [k for k in a if k.endswith("_mask")]
    assert masks and all(torch.equal(a[k], b[k]) for k in masks), "the masks differ"
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), (k, float((a[k] - b[k]).abs().max()))
    log_one = [json.loads(x) for x in (Path(one) / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (Path(two) / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_two] == [1, 2]
    for r1, r2 in zip(log_one, log_two):
        assert r1["mask_changes"] == r2["mask_changes"] and r1["train_acc"] == r2["train_acc"]
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    return log_one


@pytest.mark.slow
def test_two_processes_match_one_unstructured_with_rigl_updates(tmp_path):
    # An odd last batch (split unevenly between the ranks) checks the weighting of per-rank means.
    args = [*COMMON, "--arch", "mlp_2layer", "--sparsity", "0.9", "--update-every", "4",
            "--batch-size", str(_batch_leaving(lambda last: last % 2 == 1 and last > 1))]
    one = _cli("train", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli("train", *args, "--nproc", "2", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    assert "run " in two.stdout and two.stdout.count("clean accuracy") == 1  # rank 0 alone reports
    log = _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert sum(r["mask_changes"] for r in log) > 0, "RigL must have moved the mask inside the two epochs"
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"config.json", "checkpoint.pt", "train_log.jsonl"}


@pytest.mark.slow
def test_two_processes_match_one_structured_under_torchrun(tmp_path):
    # A last batch of one sample leaves rank 1 without samples: it must still take part at weight 0.
    # lr 5e-4, not structured's 2e-3: the two runs differ by float rounding (a GEMM rounds a
    # row differently at another batch size), and where a ReLU input sits at 0 Adam can turn
    # that into a weight difference of a few lr x 1e-3 (measured: 1.6e-5 at lr 2e-3).
    args = [*COMMON, "--arch", "cnn_4layer", "--structure", "structured", "--sparsity", "0.5", "--lr", "5e-4",
            "--batch-size", str(_batch_leaving(lambda last: last == 1))]
    one = _cli("train", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, "train", *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    log = _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert log[1]["mask_changes"] > 0, "the structured mask must have been re-selected at epoch 2"


@pytest.mark.slow
def test_two_processes_match_one_with_structured_gradual_pruning(tmp_path):
    """Units thinned mid-epoch: every rank re-gathers the compact net and DDP wraps it anew."""
    args = [*COMMON, "--arch", "mlp_2layer", "--structure", "structured", "--sparsity", "0.8", "--lr", "5e-4",
            "--initial-density", "1", "--update-every", "5"]
    one = _cli("train", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli("train", *args, "--nproc", "2", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    log = _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert [r["phase"] for r in log] == ["gradual"] * 2 and log[0]["macs"] > log[1]["macs"]
    assert log[0]["sparsity"] < log[1]["sparsity"]


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rank_of(pid):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")), None)


# Gloo's worker threads release a finished collective's tensors just after the caller moves on.
# On a loaded CPU a worker may get no time until the interpreter is shutting down, and there
# the GIL it needs aborts the process: "terminate called without an active exception" after a
# finished two-process run, 5 times in 15 under load. Here the workers share one CPU with the
# main thread at idle priority, and shutdown sleeps: 3 of 4 runs aborted through sys.exit.
HELD_BACK_WORKERS = """
import os, sys, time, torch
import torch.distributed as dist
from verisparse.cli import main

class SlowFinalizer:
    def __del__(self):
        time.sleep(1)

dist.init_process_group("gloo")
dist.broadcast(torch.ones(3), 0)  # the group's threads exist from here
for tid in map(int, os.listdir("/proc/self/task")):
    os.sched_setaffinity(tid, {min(os.sched_getaffinity(0))})
    with open(f"/proc/self/task/{tid}/comm") as f:
        if f.read().startswith("pt_gloo"):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
keep = SlowFinalizer()
for _ in range(5):
    dist.broadcast(torch.ones(3), 0)
main(["--version"])
"""


@pytest.mark.slow
def test_a_process_of_a_job_exits_cleanly_while_gloo_still_holds_tensors(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(HELD_BACK_WORKERS)
    for _ in range(4):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              str(script)], capture_output=True, text=True, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.count("version") == 2  # flushed before the exit


@pytest.mark.slow
def test_resume_after_kill_9_of_one_rank(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--arch", "mlp_2layer", "--eps", "0.05", "--epochs", "8",
            "--warmup-epochs", "1", "--ramp-epochs", "4", "--batch-size", "64", "--update-every", "5",
            "--eval-crown-every", "-1", "--quiet", "--nproc", "2", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "verisparse", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    log = run / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    rank1 = next(p for p in _children(proc.pid) if _rank_of(p) == 1)
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err  # a rank killed by a signal: exit 2, with what to do
    assert "signal 9" in err and "--resume" in err
    assert "internal error" not in err  # the other rank lost its peer: not a bug
    done = [json.loads(x)["epoch"] for x in log.read_text().splitlines()]
    assert 2 <= len(done) < 8, "the kill must land mid-run"
    res = _cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == list(range(1, 9))
    model, cfg, ds = load_run(run)
    assert cfg.epochs == 8 and model(ds.x_test[:4]).shape == (4, 10)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "no temporary files left behind"


@pytest.mark.slow
def test_errors_stop_every_rank_with_the_cli_exit_code(tmp_path):
    base = ["train", "--dataset", "digits", "--arch", "mlp_2layer", "--eps", "0.05", "--epochs", "2", "--quiet",
            "--nproc", "2"]
    diverged = _cli(*base, "--lr", "1e30", "--out", str(tmp_path / "d"))
    assert diverged.returncode == 2 and "training diverged" in diverged.stderr, diverged.stderr
    assert "Traceback" not in diverged.stderr
    assert not (tmp_path / "d" / "checkpoint.pt").exists()
    bn = _cli(*base, "--arch", "cnn_4layer", "--batchnorm", "--out", str(tmp_path / "bn"))
    assert bn.returncode == 2 and "--batchnorm" in bn.stderr and "Traceback" not in bn.stderr, bn.stderr
    # rank 0 alone refuses a directory that holds a run: the other rank stops with the same exit code
    ok = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "1", "--quiet",
              "--out", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr
    taken = _cli(*base, "--out", str(tmp_path / "r"))
    assert taken.returncode == 2 and "already holds a run" in taken.stderr, taken.stderr


@pytest.mark.parametrize("codes,exit_code", [({0: -6, 1: -9}, 2), ({0: 2, 1: -9}, 2), ({0: 1, 1: 3}, 3), ({0: 1}, 3),
                                             ({0: 2, 1: -15}, 2)])
def test_launcher_names_every_failed_rank(monkeypatch, capsys, codes, exit_code):
    """A killed rank takes the others' collectives down with it (they exit 2 or abort), and
    torchrun may record those first: the message names every failed rank, so the cause is in
    it. A rank that failed on its own (2 or 3) printed why; torchrun then stops the others
    with SIGTERM, which adds nothing."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from torch.distributed.launcher import api
    from verisparse.trainer import distributed

    def fail(config, cmd):
        def run(*args):
            raise ChildFailedError("verisparse", {r: ProcessFailure(r, 100 + r, c, "") for r, c in codes.items()})
        return run
    monkeypatch.setattr(api, "elastic_launch", fail)
    assert distributed.launch(2, ["train"], "cpu") == exit_code
    err = capsys.readouterr().err
    if codes.get(1) == -9:
        assert f"process 0 ended with {'signal 6' if codes[0] < 0 else 'exit code 2'}, process 1 ended with signal 9" \
            in err and "--resume" in err
    elif len(codes) == 1:
        assert "process 0 ended with exit code 1; continue the run with --resume" in err
    else:
        assert err == ""  # rank 1 printed its own error
