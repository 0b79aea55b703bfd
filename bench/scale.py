"""Scale-out throughput, printed as a table that names the machine.

Training: samples/s of `verisparse train` with 1 and 2 processes on CPU (torchrun, gloo) and
on CUDA where torch sees a GPU (1 GPU, and 2 where there are two). The figure is the
training loop's own time per epoch from train_log.jsonl (rank 0's clock; evaluation
excluded), median over the epochs after the first, every epoch at a non-zero eps.

  .venv/bin/python bench/scale.py [--epochs 3] [--dataset mnist5k] [--arch cnn_4layer] [--method ibp]
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
from pathlib import Path

import torch


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (f"{cpu}, {os.cpu_count()} cores" + (f"; {len(gpus)} x {gpus[0]}" if gpus else "; no CUDA device")
            + f"; torch {torch.__version__}")


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
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--arch", default="cnn_4layer")
    ap.add_argument("--method", default="ibp", choices=["ibp", "crown-ibp"])
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per process [default: cores / processes]; on a machine other jobs load, "
                         "1 keeps torch's threads from waiting on each other")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = train_rows(tmp, args)
    print_train_table(rows, args)


if __name__ == "__main__":
    main()
