"""What one training epoch costs, dense against sparse, measured in one process.

For each method (dense; structured VeriSparse, trained as the compacted sub-network; and
unstructured VeriSparse, whose masked layers compute densely) this runs the training loop's
steps (the certified loss at the given eps and kappa, backward, clipping, Adam, re-masking)
on the same batches, without evaluation, logging or MAC counting. Methods take turns, so a
busy machine slows them alike; the figure is the fastest repeat, in CPU seconds of this
process (time.process_time), which other processes on a shared machine disturb far less
than wall time. Wall seconds are printed beside it.

  .venv/bin/python bench/epoch_cost.py [--sparsity 0.95] [--repeats 5] [--threads 1]
        [--structured-batch-size 100]   # also structured at its own batch size
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from machine import cpu_name  # bench/machine.py, beside this script
from verisparse.trainer import compact as cp
from verisparse.trainer import sparsity as sp
from verisparse.trainer import train as tr
from verisparse.trainer.datasets import load_dataset
from verisparse.trainer.models import prunable
from verisparse.trainer.optim import adam


def _setup(ds, arch, structure, sparsity, baseline, batch_size=50):
    cfg = tr.TrainConfig(arch=arch, structure=structure, sparsity=sparsity, baseline=baseline,
                         batch_size=batch_size).resolved()
    torch.manual_seed(cfg.seed)
    model = tr.build_from_config(cfg, ds)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.sparse_from_scratch and structure == "structured":
        sp.select_units(model, sp.structured_counts(model, cfg.sparsity, None), generator=gen)
    elif cfg.sparse_from_scratch:
        sp.random_unstructured(model, cfg.sparsity, gen)
    return cfg, model, adam(model.parameters(), cfg.lr)


def _epoch(ds, cfg, model, opt, eps, kappa, seed):
    """One epoch of training steps; returns (CPU seconds, wall seconds)."""
    comp = cp.Compacted(model, opt, ds.input_shape) if cp.compactable(model) else None
    step_model, step_opt = (comp.model, comp.opt) if comp else (model, opt)
    step_fn = tr._step_function("sparse", None, comp, ds.input_shape)
    params = list(step_model.parameters())
    n = len(ds.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cpu, wall = time.process_time(), time.perf_counter()
    for b in range(math.ceil(n / cfg.batch_size)):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        loss, _, _ = step_fn(step_model, ds.x_train[idx], ds.y_train[idx], eps, ds.num_classes, cfg.method,
                             0.0, kappa)
        step_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        step_opt.step()
        if comp is None and cfg.sparse_from_scratch:
            with torch.no_grad():
                for _, m in prunable(model):
                    m.weight.mul_(m.weight_mask)
    if comp:
        comp.scatter(replay_pruned=False)
    return time.process_time() - cpu, time.perf_counter() - wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--arch", default="cnn_4layer")
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=0.15, help="training eps of the measured steps")
    ap.add_argument("--kappa", type=float, default=0.5, help="natural-loss weight of the measured steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--structured-batch-size", type=int, default=None,
                    help="also time structured VeriSparse at this batch size (the others keep 50)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = load_dataset(a.dataset, 0, None)
    runs = {"dense": _setup(ds, a.arch, "unstructured", 0.0, "dense"),
            "structured (compacted)": _setup(ds, a.arch, "structured", a.sparsity, None),
            "unstructured (masked)": _setup(ds, a.arch, "unstructured", a.sparsity, None)}
    if a.structured_batch_size:
        runs[f"structured (compacted), batch {a.structured_batch_size}"] = _setup(
            ds, a.arch, "structured", a.sparsity, None, a.structured_batch_size)
    times = {k: [] for k in runs}
    for r in range(a.repeats):
        for k, (cfg, model, opt) in runs.items():
            times[k].append(_epoch(ds, cfg, model, opt, a.eps, a.kappa, r))
    dense = min(c for c, _ in times["dense"])
    print(f"{a.dataset} {a.arch} {runs['dense'][0].method}, sparsity {a.sparsity}, {a.threads} thread(s), "
          f"eps {a.eps}, kappa {a.kappa}; {cpu_name()}; best of {a.repeats}")
    print("| method | CPU s/epoch | ratio to dense | wall s/epoch (median) |")
    print("|---|---|---|---|")
    for k, ts in times.items():
        best = min(c for c, _ in ts)
        print(f"| {k} | {best:.3f} | {best / dense:.2f} | {statistics.median(w for _, w in ts):.3f} |")


if __name__ == "__main__":
    main()
