"""VeriSparse from scratch vs prune-finetune vs dense, in one run on one machine.

For mnist5k / cnn_4layer / eps 0.1 / sparsity 0.95, unstructured and structured, prints
wall time, final clean, CROWN-IBP-verified (CI), CROWN-verified and PGD-robust accuracy,
and the training time at which each method first reaches the prune-finetune baseline's
final verified accuracy minus 1 point (on the per-epoch CROWN-IBP figure; full CROWN runs on
the last epoch). Training time excludes the per-epoch evaluation (shown beside it). For the sparse methods
only epochs at the final sparsity count towards the target. Usage:

    .venv/bin/python bench/train_time.py [--epochs 100] [--method ibp] [--out bench-runs] [--plot FILE]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
from pathlib import Path

import torch

from verisparse.files import read_jsonl
from verisparse.trainer.train import TrainConfig, train


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _time_to(log, target, sparse: bool):
    """Training seconds until the model first meets the target; for a sparse method only
    epochs at its final sparsity count (prune-finetune's dense phase is not a sparse model)."""
    for r in log:
        if sparse and r["phase"] == "dense":
            continue
        if r["crown_ibp_verified_acc"] >= target - 1e-9:
            return r["train_seconds"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--method", default="ibp", choices=["ibp", "crown-ibp"])
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate for every run [default: train's]")
    ap.add_argument("--structures", default="unstructured,structured",
                    help="comma-separated: which sparse comparisons to run (dense always runs)")
    ap.add_argument("--out", default="bench-runs")
    ap.add_argument("--plot", default=None, help="write verified accuracy vs training time here (PNG)")
    ap.add_argument("--report-only", action="store_true", help="re-read the logs under --out instead of training")
    args = ap.parse_args()
    out = Path(args.out)
    base = dict(dataset="mnist5k", arch="cnn_4layer", eps=0.1, epochs=args.epochs, method=args.method)
    if args.lr is not None:
        base["lr"] = args.lr
    structures = [s for s in args.structures.split(",") if s]
    if not structures or any(s not in ("unstructured", "structured") for s in structures):
        ap.error("--structures takes unstructured and/or structured")
    runs = {("dense", "-"): TrainConfig(baseline="dense", **base)}
    for structure in structures:
        for name, baseline in (("verisparse", None), ("prune-finetune", "prune-finetune")):
            runs[(name, structure)] = TrainConfig(baseline=baseline, structure=structure,
                                                  sparsity=args.sparsity, **base)
    if not args.report_only:
        shutil.rmtree(out, ignore_errors=True)
        for (name, structure), cfg in runs.items():
            train(cfg, out / f"{name}-{structure}", progress=True)
    logs = {key: read_jsonl(out / f"{key[0]}-{key[1]}" / "train_log.jsonl") for key in runs}

    print(f"\nmachine: {_machine()}")
    pf = runs[("prune-finetune", structures[0])].resolved()
    lrs = ", ".join(f"{k[0]}-{k[1]} {c.resolved().lr:g}" for k, c in runs.items())
    print(f"mnist5k cnn_4layer eps 0.1, method {args.method}, {args.epochs} epochs "
          f"(prune-finetune: {args.epochs} dense + {pf.finetune_epochs} fine-tune); lr: {lrs}")
    head = f"{'method':<15}{'structure':<14}{'sparsity':>9}{'train s':>9}{'+eval s':>8}{'clean':>8}" \
           f"{'CI-VRA':>8}{'CROWN-VRA':>11}{'PGD':>7}{'to target s':>13}{'vs PF':>7}"
    print(head)
    print("-" * len(head))
    for structure in structures:
        pf = logs[("prune-finetune", structure)]
        target = pf[-1]["crown_ibp_verified_acc"] - 0.01
        pf_time = _time_to(pf, target, sparse=True)
        for key in (("verisparse", structure), ("prune-finetune", structure), ("dense", "-")):
            log, last = logs[key], logs[key][-1]
            t = _time_to(log, target, sparse=key[0] != "dense")
            evals = sum(r["eval_seconds"] for r in log)
            ratio = f"{t / pf_time:.2f}" if t is not None and pf_time else "never"
            print(f"{key[0]:<15}{key[1]:<14}{last['sparsity']:>9.4f}{last['train_seconds']:>9.1f}"
                  f"{evals:>8.1f}{last['clean_acc']:>8.1%}{last['crown_ibp_verified_acc']:>8.1%}"
                  f"{last['crown_verified_acc']:>11.1%}{last['pgd_robust_acc']:>7.1%}"
                  f"{(f'{t:.1f}' if t is not None else 'never'):>13}{ratio:>7}")
        print(f"  target ({structure}): prune-finetune's final CROWN-IBP-verified accuracy - 1 point = {target:.1%}")
    if args.plot:
        _plot(logs, args.plot, structures)


def _plot(logs, path, structures):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(structures), figsize=(5.5 * len(structures), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, structure in zip(axes, structures):
        for key in (("verisparse", structure), ("prune-finetune", structure), ("dense", "-")):
            log = logs[key]
            ax.plot([r["train_seconds"] for r in log], [r["crown_ibp_verified_acc"] for r in log], label=key[0])
        ax.set_title(f"{structure}")
        ax.set_xlabel("training time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CROWN-IBP-verified accuracy @ eps 0.1")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
