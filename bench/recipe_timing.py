"""Seconds per epoch of a paper-scale recipe (docs/recipes.md), without the dataset.

Writes random CIFAR-shaped images (uint8, 3x32x32, 10 classes) in torchvision's CIFAR-10
layout (cifar-10-batches-py/data_batch_1..5, test_batch) to a temporary --data-root, trains
the recipe on it for --epochs through the CLI, and prints the training and evaluation
seconds of every epoch from train_log.jsonl. The images are noise, so the accuracies mean
nothing; the time per epoch is what the real dataset costs (same shapes, same count).

  .venv/bin/python bench/recipe_timing.py --device cuda --epochs 2            # cnn_7layer, CROWN-IBP, 2/255
  .venv/bin/python bench/recipe_timing.py --device cuda --eps 0.031373 --nproc 2
  .venv/bin/python bench/recipe_timing.py --device cpu --train-size 2000 --test-size 500 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_cifar_layout(root, n_train=50_000, n_test=10_000, seed=0):
    """Random CIFAR-10-shaped data under root/cifar-10-batches-py, as the real files are laid out:
    five training batches and one test batch, each a pickled dict with 'data' (N x 3072 uint8,
    channel-major) and 'labels' (a list of ints)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, size=n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=4)  # protocol 2 would route bytes through _codecs, which the loader refuses
    return Path(root)


def _machine(device):
    import torch
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    from machine import cpu_name  # bench/machine.py, beside this script
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", default="cnn_7layer")
    ap.add_argument("--method", default="crown-ibp", choices=["ibp", "crown-ibp"])
    ap.add_argument("--eps", type=float, default=2 / 255, help="test eps [default 2/255]; training eps is 1.1x")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--structure", default="unstructured", choices=["unstructured", "structured"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--nproc", type=int, default=1, help="processes (torchrun through verisparse train --nproc)")
    ap.add_argument("--train-size", type=int, default=50_000)
    ap.add_argument("--test-size", type=int, default=10_000)
    ap.add_argument("--keep", default=None, help="keep the data and run here instead of a temporary folder")
    args = ap.parse_args()
    if args.epochs < 1 or args.train_size < 5 or args.test_size < 1:
        ap.error("--epochs >= 1, --train-size >= 5 and --test-size >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        print(f"writing {args.train_size} + {args.test_size} random CIFAR-shaped images under {where}",
              file=sys.stderr)
        write_cifar_layout(where / "data", args.train_size, args.test_size)
        run = where / "run"
        # Every epoch trains at a non-zero eps (no warm-up at eps 0, which skips the bounds)
        # and evaluates IBP/PGD/CROWN-IBP, as the recipe's epochs after its warm-up do.
        cmd = [sys.executable, "-m", "verisparse", "train", "--dataset", "cifar10", "--data-root", str(where / "data"),
               "--arch", args.arch, "--method", args.method, "--eps", repr(args.eps),
               "--eps-train", repr(min(1.0, 1.1 * args.eps)), "--sparsity", str(args.sparsity),
               "--structure", args.structure, "--epochs", str(args.epochs), "--warmup-epochs", "0",
               "--ramp-epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--eval-crown-every", "-1",
               "--device", args.device, "--nproc", str(args.nproc), "--out", str(run)]
        res = subprocess.run(cmd)
        if res.returncode != 0:
            sys.exit(res.returncode)
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]

    print(f"\nmachine: {_machine(args.device)}")
    print(f"recipe: cifar10-shaped ({args.train_size} train / {args.test_size} test), {args.arch}, {args.method}, "
          f"eps {args.eps:.6g}, {args.structure} sparsity {args.sparsity}, batch {args.batch_size}, "
          f"{args.nproc} process(es), device {args.device}")
    print(f"{'epoch':>5}{'train s':>10}{'eval s':>9}{'samples/s':>11}")
    for r in log:
        print(f"{r['epoch']:>5}{r['seconds']:>10.1f}{r['eval_seconds']:>9.1f}{args.train_size / r['seconds']:>11.0f}")
    later = [r["seconds"] for r in log[1:]] or [log[0]["seconds"]]
    print(f"seconds per epoch (training, median{' after the first' if len(log) > 1 else ''}): "
          f"{statistics.median(later):.1f}")


if __name__ == "__main__":
    main()
