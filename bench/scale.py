"""Scale-out throughput, through the real command line, printed as tables that name the machine.

Training: samples/s of `verisparse train` with 1 and 2 processes on CPU (torchrun, gloo) and
on CUDA where torch sees a GPU (1 GPU, and 2 where there are two). The figure is the
training loop's own time per epoch from train_log.jsonl (rank 0's clock; evaluation
excluded), median over the epochs after the first, every epoch at a non-zero eps.

Verification: samples/s of `verisparse verify` as one process, as 2 shards run as 2
processes side by side then `--merge`d, as one torchrun job with 2 gloo ranks, and with
`--device cuda` where torch sees a GPU. Every figure is wall time of whole commands (start-up,
loading the model and the data included), and each sharded result is checked to give the
one-process verdicts. Without --run, a short default run (cnn_4layer, mnist5k, 0.9 sparse)
is trained and exported into runs/bench-scale first.

  .venv/bin/python bench/scale.py [--part train|verify|all] [--epochs 3] [--threads 1]
                                  [--run runs/default] [--samples 1000] [--verify-method crown]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_name  # bench/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
VS = [sys.executable, "-m", "verisparse"]  # the installed CLI, wherever its script lives


def _note(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine():
    """One line naming the machine: CPU model and cores, and the GPU where there is one."""
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}"


def ensure_run(run):
    """The run to measure: --run as given, else runs/bench-scale (trained briefly if absent)."""
    if run:
        run = Path(run)
        if not (run / "model.onnx").is_file():
            sys.exit(f"{run}/model.onnx not found: train and export the run first")
        return run
    run = ROOT / "runs" / "bench-scale"
    if not (run / "model.onnx").is_file():
        _note(f"training a short default run into {run}")
        subprocess.run([*VS, "train", "--dataset", "mnist5k", "--arch", "cnn_4layer",
                        "--eps", "0.1", "--sparsity", "0.9", "--epochs", "3", "--eval-crown-every", "-1",
                        "--quiet", "--out", str(run)], check=True)
        subprocess.run([*VS, "export", str(run)], check=True, stdout=subprocess.DEVNULL)
    return run


# --- verification throughput: one process, 2 shards, torchrun, CUDA ------------------------

def _threads_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads))


def _verify_cmd(run, samples, method, device, *extra):
    # --samples, not --n: torchrun takes --n for an abbreviation of its own options
    return ["verify", str(run / "model.onnx"), "--samples", str(samples), "--method", method,
            "--device", device, *extra]


def _timed(cmds, env):
    """Run the commands side by side; wall seconds until the last one ends."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for p, c in zip(procs, cmds):
        err = p.communicate()[1]
        if p.returncode not in (0, 1):  # 1 is a verdict; anything else is a failure of the bench
            sys.exit(f"{' '.join(c)} failed ({p.returncode}): {err[-2000:]}")
    return time.perf_counter() - start


def _verdicts(cert_path):
    cert = json.loads(Path(cert_path).read_text())
    return [(r["index"], r["status"], r["decided_by"]) for r in cert["samples"]], cert["summary"]["verified"]


def verification_rows(run, samples, method):
    """[(setup, processes, wall s, samples/s, verified, same verdicts as one process)]."""
    cores = os.cpu_count() or 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _note("verify: one process")
        wall = _timed([[*VS, *_verify_cmd(run, samples, method, "cpu", "--report", str(tmp / "one.json"))]],
                      _threads_env(cores))
        ref, verified = _verdicts(tmp / "one.json")
        rows.append(("1 process (CPU)", 1, wall, verified, "-"))

        _note("verify: 2 shards as 2 processes, then --merge")
        shards = [[*VS, *_verify_cmd(run, samples, method, "cpu", "--shard", f"{i}/2",
                                    "--report", str(tmp / f"shard-{i}.json"))] for i in range(2)]
        wall = _timed(shards, _threads_env(max(1, cores // 2)))
        wall += _timed([[*VS, "verify", str(run / "model.onnx"), "--merge", str(tmp / "shard-0.json"),
                         str(tmp / "shard-1.json"),
                         "--report", str(tmp / "merged.json")]], _threads_env(cores))
        got, verified = _verdicts(tmp / "merged.json")
        rows.append(("2 shards + --merge (CPU)", 2, wall, verified, got == ref))

        _note("verify: torchrun, 2 gloo ranks")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "verisparse",
               *_verify_cmd(run, samples, method, "cpu", "--shard", "auto", "--report", str(tmp / "torchrun.json"))]
        wall = _timed([cmd], _threads_env(max(1, cores // 2)))
        got, verified = _verdicts(tmp / "torchrun.json")
        rows.append(("torchrun, 2 ranks (CPU, gloo)", 2, wall, verified, got == ref))

        if torch.cuda.is_available():
            _note("verify: one process on CUDA")
            wall = _timed([[*VS, *_verify_cmd(run, samples, method, "cuda", "--report", str(tmp / "cuda.json"))]],
                          _threads_env(cores))
            got, verified = _verdicts(tmp / "cuda.json")
            rows.append((f"1 process (CUDA, {torch.cuda.get_device_name(0)})", 1, wall, verified,
                         "yes" if got == ref else "no (bounds rounded differently; both sound)"))
    return [(name, procs, wall, samples / wall, verified, _yes(same)) for name, procs, wall, verified, same in rows]


def _yes(v):
    return {True: "yes", False: "NO"}.get(v, v) if isinstance(v, bool) else v


def verification_table(rows, samples, method, run):
    lines = [f"Verification, `{method}`, {samples} test samples of {run}:", "",
             "| setup | processes | wall s | samples/s | verified | same verdicts as 1 process |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {name} | {procs} | {wall:.1f} | {rate:.1f} | {verified} | {same} |"
              for name, procs, wall, rate, verified, same in rows]
    return "\n".join(lines)


# --- training throughput ------------------------------------------------------------------

def train_throughput(workdir, nproc, device, dataset, arch, method, epochs, batch_size, threads=0):
    """Seconds per epoch of `verisparse train` with nproc processes on device ("cpu" or "cuda"),
    each with `threads` CPU threads (0: the cores shared out, as `verisparse train --nproc` does)."""
    run = Path(workdir) / f"train-{device}-{nproc}"
    cmd = [sys.executable, "-m", "verisparse", "train", "--dataset", dataset, "--arch", arch, "--method", method,
           "--epochs", str(epochs), "--warmup-epochs", "0", "--ramp-epochs", str(epochs),
           "--batch-size", str(batch_size), "--eval-crown-every", "-1", "--device", device,
           "--nproc", str(nproc), "--quiet", "--out", str(run)]
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // nproc))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"training with {nproc} process(es) on {device} failed:\n{res.stderr[-2000:]}")
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in log[1:]] or [log[0]["seconds"]]
    return dict(device=device, nproc=nproc, seconds_per_epoch=statistics.median(seconds))


def train_rows(workdir, args):
    """The training part of the table: CPU 1 and 2 processes, then CUDA where present."""
    from verisparse.trainer.datasets import load_dataset
    n_train = len(load_dataset(args.dataset).y_train)
    setups = [("cpu", 1), ("cpu", 2)]
    if torch.cuda.is_available():
        setups += [("cuda", 1)] + ([("cuda", 2)] if torch.cuda.device_count() >= 2 else [])
    rows = []
    for device, nproc in setups:
        print(f"training: {nproc} process(es) on {device} ...", file=sys.stderr, flush=True)
        r = train_throughput(workdir, nproc, device, args.dataset, args.arch, args.method, args.epochs,
                             args.batch_size, args.threads)
        rows.append(dict(r, samples_per_second=n_train / r["seconds_per_epoch"]))
    return rows


def print_train_table(rows, args):
    threads = f"{args.threads} thread(s)" if args.threads else "cores / processes threads"
    print(f"\ntraining: {args.dataset}, {args.arch}, {args.method}, global batch {args.batch_size}, "
          f"{args.epochs} epochs, every epoch at eps > 0 (median epoch after the first); CPU: {threads} per process")
    base = {r["device"]: r["samples_per_second"] for r in rows if r["nproc"] == 1}
    print("| device | processes | s / epoch | samples/s | vs 1 process |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['nproc']} | {r['seconds_per_epoch']:.2f} | {r['samples_per_second']:.0f} | "
              f"{r['samples_per_second'] / base[r['device']]:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", choices=["train", "verify", "all"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--arch", default="cnn_4layer")
    ap.add_argument("--method", default="ibp", choices=["ibp", "crown-ibp"], help="training method")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per training process [default: cores / processes]; on a machine other jobs "
                         "load, 1 keeps torch's threads from waiting on each other")
    ap.add_argument("--run", default=None, help="run directory with model.onnx [default: runs/bench-scale]")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--verify-method", default="crown", choices=["ibp", "crown", "alpha-crown", "auto", "milp"])
    args = ap.parse_args()
    print(f"Machine: {machine()}\n")
    if args.part in ("train", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            rows = train_rows(tmp, args)
        print_train_table(rows, args)
    if args.part in ("verify", "all"):
        run = ensure_run(args.run).absolute()
        print()
        print(verification_table(verification_rows(run, args.samples, args.verify_method), args.samples,
                                 args.verify_method, run))


if __name__ == "__main__":
    main()
