"""VeriSparse from scratch vs the baselines (prune-finetune, HYDRA) vs dense, in one run on one machine.

For mnist5k / cnn_4layer / eps 0.1 (or --dataset/--arch/--eps), at each --sparsities and --structures, prints one table:
training time (per-epoch evaluation excluded; shown beside it), final clean and CROWN-verified
accuracy, the training time at which each method first reaches the target (the best
baseline's final CROWN-IBP-verified accuracy minus 1 point, on the per-epoch CROWN-IBP figure;
full CROWN runs on the last epoch only), its total training time as a ratio of HYDRA's, peak
memory and the multiply-accumulates training performed (trainer/resources.py). For the sparse
methods only epochs at the final sparsity count towards the target (a baseline's dense
pre-training is not a sparse model). Every run trains in a fresh subprocess, so the CPU peak
RSS is that run's own. Usage:

    .venv/bin/python bench/train_time.py [--epochs 100] [--sparsities 0.9,0.95,0.99]
        [--structures unstructured,structured] [--baselines prune-finetune,hydra] [--plot FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from machine import cpu_name  # bench/machine.py, beside this script

from verisparse.files import read_jsonl
from verisparse.trainer.resources import run_totals
from verisparse.trainer.train import TrainConfig

BASELINES = ("prune-finetune", "hydra")
_WORKER = ("import json, sys; from verisparse.trainer.train import TrainConfig, train; "
           "train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], device=sys.argv[3])")


def _machine():
    cpu = cpu_name()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _time_to(log, target, sparse: bool):
    """Training seconds until the model first meets the target; for a sparse method only
    epochs at its final sparsity count (a baseline's dense phase is not a sparse model)."""
    for r in log:
        if sparse and r["phase"] == "dense":
            continue
        if r["crown_ibp_verified_acc"] >= target - 1e-9:
            return r["train_seconds"]
    return None


def _list(text, kind, allowed=None):
    items = [s for s in text.split(",") if s]
    try:
        items = [kind(s) for s in items]
    except ValueError:
        items = []
    if not items or (allowed and any(s not in allowed for s in items)):
        of = f" of {', '.join(allowed)}" if allowed else ""
        raise argparse.ArgumentTypeError(f"expected a comma-separated list{of}")
    return items


def _name(method, structure, sparsity):
    return "dense" if method == "dense" else f"{method}-{structure}-{sparsity:g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--method", default="ibp", choices=["ibp", "crown-ibp"])
    ap.add_argument("--sparsities", type=lambda s: _list(s, float), default=[0.95],
                    help="comma-separated sparsities [default: 0.95]")
    ap.add_argument("--structures", type=lambda s: _list(s, str, ("unstructured", "structured")),
                    default=["unstructured", "structured"], help="comma-separated: unstructured, structured")
    ap.add_argument("--baselines", type=lambda s: _list(s, str, BASELINES), default=list(BASELINES),
                    help="comma-separated: prune-finetune, hydra (dense always runs)")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate for every run [default: train's]")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dataset", default="mnist5k", help="a smaller one (digits) for a quick check of the bench")
    ap.add_argument("--arch", default="cnn_4layer")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--out", default="bench-runs")
    ap.add_argument("--plot", default=None, help="write verified accuracy vs training time here (PNG)")
    ap.add_argument("--report-only", action="store_true", help="re-read the logs under --out instead of training")
    args = ap.parse_args()
    out = Path(args.out)
    base = dict(dataset=args.dataset, arch=args.arch, eps=args.eps, epochs=args.epochs, method=args.method)
    if args.lr is not None:
        base["lr"] = args.lr
    methods = ["verisparse"] + args.baselines
    runs = {("dense", "-", 0.0): TrainConfig(baseline="dense", **base)}
    for sparsity in args.sparsities:
        for structure in args.structures:
            for m in methods:
                runs[(m, structure, sparsity)] = TrainConfig(baseline=None if m == "verisparse" else m,
                                                             structure=structure, sparsity=sparsity, **base)
    if not args.report_only:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for i, (key, cfg) in enumerate(runs.items()):
            print(f"[{i + 1}/{len(runs)}] {_name(*key)}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-c", _WORKER, json.dumps(asdict(cfg)), str(out / _name(*key)),
                            args.device], check=True)
    logs = {key: read_jsonl(out / _name(*key) / "train_log.jsonl") for key in runs}

    print(f"\nmachine: {_machine()}")
    hydra_cfg = TrainConfig(baseline="hydra", **base).resolved()
    pf_cfg = TrainConfig(baseline="prune-finetune", **base).resolved()
    print(f"{args.dataset} {args.arch} eps {args.eps:g}, method {args.method}, {args.epochs} epochs (prune-finetune: + "
          f"{pf_cfg.finetune_epochs} fine-tune; hydra: + {hydra_cfg.prune_epochs} prune + "
          f"{hydra_cfg.finetune_epochs} fine-tune)")
    head = (f"{'method':<15}{'structure':<14}{'sparsity':>9}{'train s':>9}{'+eval s':>8}{'clean':>8}"
            f"{'CROWN-VRA':>11}{'to target s':>13}{'vs HYDRA':>10}{'peak MiB':>10}{'GMACs':>10}")
    print(head)
    print("-" * len(head))
    _row(("dense", "-", 0.0), logs, None, None)
    for sparsity in args.sparsities:
        for structure in args.structures:
            group = [(m, structure, sparsity) for m in methods]
            target = max(logs[k][-1]["crown_ibp_verified_acc"] for k in group if k[0] != "verisparse") - 0.01
            hydra = logs.get(("hydra", structure, sparsity))
            for key in group:
                _row(key, logs, target, hydra[-1]["train_seconds"] if hydra else None)
            print(f"  target ({structure} {sparsity:g}): best baseline's final CROWN-IBP-verified accuracy - 1 point"
                  f" = {target:.1%}")
    kind = run_totals(logs[("dense", "-", 0.0)])["peak_memory_kind"]
    print(f"peak memory: {'process peak RSS per run (includes data and torch)' if kind == 'process_peak_rss' else kind}"
          "; GMACs: multiply-accumulates of all training steps (forward, bounds, backward), 1e9")
    if args.plot:
        _plot(logs, args.plot, args.sparsities, args.structures, methods, args.eps)


def _row(key, logs, target, hydra_seconds):
    log, last = logs[key], logs[key][-1]
    totals = run_totals(log)
    t = _time_to(log, target, sparse=key[0] != "dense") if target is not None else None
    evals = sum(r["eval_seconds"] for r in log)
    to_target = "-" if target is None else f"{t:.1f}" if t is not None else "never"
    ratio = f"{last['train_seconds'] / hydra_seconds:.2f}" if hydra_seconds else "-"
    sparsity = f"{last['sparsity']:.4f}"
    print(f"{key[0]:<15}{key[1]:<14}{sparsity:>9}{last['train_seconds']:>9.1f}{evals:>8.1f}{last['clean_acc']:>8.1%}"
          f"{last['crown_verified_acc']:>11.1%}{to_target:>13}{ratio:>10}"
          f"{totals['peak_memory_bytes'] / 2 ** 20:>10.0f}{totals['train_macs'] / 1e9:>10.4g}")


def _plot(logs, path, sparsities, structures, methods, eps):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(sparsities), len(structures), figsize=(5.5 * len(structures), 4 * len(sparsities)),
                             sharey=True, squeeze=False)
    for row, sparsity in zip(axes, sparsities):
        for ax, structure in zip(row, structures):
            for key in [(m, structure, sparsity) for m in methods] + [("dense", "-", 0.0)]:
                log = logs[key]
                line, = ax.plot([r["train_seconds"] for r in log], [r["crown_ibp_verified_acc"] for r in log],
                                label=key[0])
                ax.plot(log[-1]["train_seconds"], log[-1]["crown_verified_acc"], "o", color=line.get_color())
            ax.set_title(f"{structure}, sparsity {sparsity:g}")
            ax.set_xlabel("training time (s)")
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"verified accuracy @ eps {eps:g}\n(line: CROWN-IBP per epoch, dot: final CROWN)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
