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
        [--set hydra.lr=2e-3 --set verisparse.structured.lr=4e-3 ...] [--jobs N] [--seeds 0,1,2]

Each method's settings are train's defaults unless --set METHOD[.STRUCTURE][@SPARSITY].FIELD=VALUE
(a TrainConfig field) changes them, the most specific --set winning: compare methods each at
its best measured setting, not one method tuned against another's defaults. --jobs N trains N
runs at once, one thread each. --seeds trains every run once per seed (a seed also draws its
own train/test split) and reports means: on this data one seed's final accuracy moves by a
point or more with any change to the arithmetic, more than the margins the claim is about.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from machine import cpu_name  # bench/machine.py, beside this script

from verisparse.files import read_jsonl
from verisparse.trainer.resources import run_totals
from verisparse.trainer.train import _FLOAT_FIELDS, _INT_FIELDS, TrainConfig

BASELINES = ("prune-finetune", "hydra")
_WORKER = ("import json, sys; from verisparse.trainer.train import TrainConfig, train; "
           "train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], device=sys.argv[3])")


def _machine(jobs):
    cpu = cpu_name()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = f"{jobs} runs at once, 1 thread each" if jobs > 1 else f"{torch.get_num_threads()} threads"
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({threads})"


def _time_to(log, target, sparse: bool):
    """Training seconds until the model first meets the target; for a sparse method only
    epochs at its final sparsity count (a baseline's dense phase is not a sparse model)."""
    for r in log:
        if sparse and (r["phase"] == "dense" or
                       (r["phase"] == "gradual" and r["effective_params"] != log[-1]["effective_params"])):
            continue  # a dense epoch, or one still thinning towards the final count (--initial-density)
        if r.get("crown_ibp_verified_acc", -1.0) >= target - 1e-9:  # absent: no CROWN-IBP that epoch (--eval-every)
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


_KEY = re.compile(r"(?P<method>[a-z-]+)(?:\.(?P<structure>[a-z]+))?(?:@(?P<sparsity>[0-9]*\.?[0-9]+))?"
                  r"\.(?P<field>\w+)")


def _setting(text):
    """METHOD[.STRUCTURE][@SPARSITY].FIELD=VALUE -> (method, structure or None, sparsity or
    None, field, value)."""
    key, sep, value = text.partition("=")
    m = _KEY.fullmatch(key)
    methods = ("verisparse", "dense") + BASELINES
    sparsity = None if m is None or m["sparsity"] is None else float(m["sparsity"])
    if not sep or m is None or m["method"] not in methods or \
            m["structure"] not in (None, "unstructured", "structured") or \
            not (sparsity is None or 0 < sparsity < 1) or m["field"] not in TrainConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"expected METHOD[.STRUCTURE][@SPARSITY].FIELD=VALUE with METHOD one of "
                                         f"{', '.join(methods)}, SPARSITY in (0, 1) and FIELD a TrainConfig field; "
                                         f"got {text!r}")
    field = m["field"]
    if m["method"] == "dense" and (m["structure"] or sparsity is not None):
        raise argparse.ArgumentTypeError(f"dense training has no structure or sparsity; got {text!r}")
    if field in ("baseline", "structure", "sparsity", "seed"):  # the run's identity: --baselines, --structures, ...
        raise argparse.ArgumentTypeError(f"{field} is set by the bench's own options (--baselines, --structures, "
                                         f"--sparsities, --seeds), not by --set; got {text!r}")
    try:
        value = int(value) if field in _INT_FIELDS else float(value) if field in _FLOAT_FIELDS else value
    except ValueError:
        raise argparse.ArgumentTypeError(f"{field} takes a number; got {value!r}") from None
    return m["method"], m["structure"], sparsity, field, value


def _settings_for(sets, method, structure, sparsity=None):
    """The settings of one group; a more specific --set wins (METHOD, then .STRUCTURE, then
    @SPARSITY, then both), and among equals the later one."""
    chosen = sorted(((st is not None) + 2 * (sp is not None), i, field, value)
                    for i, (m, st, sp, field, value) in enumerate(sets)
                    if m == method and st in (None, structure) and sp in (None, sparsity))
    return {field: value for _, _, field, value in chosen}


def _groups(base, sets, sparsities, structures, methods):
    """{(method, structure, sparsity): TrainConfig settings}: base, then each method's --set
    (which may override base, eval_every and epochs included)."""
    groups = {("dense", "-", 0.0): dict(base, **_settings_for(sets, "dense", None), baseline="dense")}
    for sparsity in sparsities:
        for structure in structures:
            for m in methods:
                groups[(m, structure, sparsity)] = dict(base, **_settings_for(sets, m, structure, sparsity),
                                                        baseline=None if m == "verisparse" else m,
                                                        structure=structure, sparsity=sparsity)
    return groups


def _train_all(runs, out, device, jobs):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1") if jobs > 1 else None

    def one(item):
        key, cfg = item
        subprocess.run([sys.executable, "-c", _WORKER, json.dumps(asdict(cfg)), str(out / _name(*key)), device],
                       check=True, env=env)
        return key

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for i, key in enumerate(pool.map(one, runs.items())):
            print(f"[{i + 1}/{len(runs)}] {_name(*key)} done", file=sys.stderr, flush=True)


def _name(method, structure, sparsity, seed=None):
    name = "dense" if method == "dense" else f"{method}-{structure}-{sparsity:g}"
    return name if seed is None else f"{name}-seed{seed}"


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


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
    ap.add_argument("--set", dest="sets", type=_setting, action="append", default=[],
                    help="METHOD[.STRUCTURE][@SPARSITY].FIELD=VALUE, e.g. hydra.lr=2e-3, "
                         "verisparse.structured.lr=4e-3 or verisparse.structured@0.99.initial_density=0.5")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each [default: 1]")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dataset", default="mnist5k", help="a smaller one (digits) for a quick check of the bench")
    ap.add_argument("--arch", default="cnn_4layer")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--out", default="bench-runs")
    ap.add_argument("--plot", default=None, help="write verified accuracy vs training time here (PNG)")
    ap.add_argument("--report-only", action="store_true", help="re-read the logs under --out instead of training")
    ap.add_argument("--seeds", type=lambda s: _list(s, int), default=None,
                    help="comma-separated seeds: every run once per seed, the table shows means [default: "
                         "train's seed, once]")
    args = ap.parse_args()
    out = Path(args.out)
    # Time to target reads every epoch's CROWN-IBP figure (evaluation time is not training time).
    base = dict(dataset=args.dataset, arch=args.arch, eps=args.eps, epochs=args.epochs, method=args.method,
                eval_every=1)
    if args.lr is not None:
        base["lr"] = args.lr
    methods = ["verisparse"] + args.baselines
    groups = _groups(base, args.sets, args.sparsities, args.structures, methods)
    seeds = args.seeds or [None]  # None: train's seed, and the run folders of a single-seed bench
    runs = {(*key, seed): TrainConfig(**(settings if seed is None else dict(settings, seed=seed)))
            for key, settings in groups.items() for seed in seeds}
    if not args.report_only:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for key, cfg in runs.items():
            cfg.resolved()  # a bad --set fails here, before hours of training
        _train_all(runs, out, args.device, args.jobs)
    logs = {key: [read_jsonl(out / _name(*key, seed) / "train_log.jsonl") for seed in seeds] for key in groups}

    print(f"\nmachine: {_machine(args.jobs)}")
    hydra_cfg = TrainConfig(baseline="hydra", **base).resolved()
    pf_cfg = TrainConfig(baseline="prune-finetune", **base).resolved()
    print(f"{args.dataset} {args.arch} eps {args.eps:g}, method {args.method}, {args.epochs} epochs (prune-finetune: + "
          f"{pf_cfg.finetune_epochs} fine-tune; hydra: + {hydra_cfg.prune_epochs} prune + "
          f"{hydra_cfg.finetune_epochs} fine-tune)" +
          (f"; means over seeds {', '.join(map(str, seeds))}" if args.seeds else ""))
    for key in groups:
        cfg = runs[(*key, seeds[0])]
        changed = {k: v for k, v in asdict(cfg).items() if k not in ("baseline", "structure", "sparsity")
                   and k != "seed" and v != base.get(k, getattr(TrainConfig, k))}
        if changed:
            text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items())
            print(f"  {_name(*key)}: {text}")
    head = (f"{'method':<15}{'structure':<14}{'sparsity':>9}{'train s':>9}{'+eval s':>8}{'clean':>8}"
            f"{'CROWN-VRA':>11}{'to target s':>13}{'vs HYDRA':>10}{'peak MiB':>10}{'GMACs':>10}")
    print(head)
    print("-" * len(head))
    _row(("dense", "-", 0.0), logs, None, None)
    for sparsity in args.sparsities:
        for structure in args.structures:
            group = [(m, structure, sparsity) for m in methods]
            target = max(_final(logs[k], "crown_ibp_verified_acc") for k in group if k[0] != "verisparse") - 0.01
            hydra = logs.get(("hydra", structure, sparsity))
            for key in group:
                _row(key, logs, target, _final(hydra, "train_seconds") if hydra else None)
            print(f"  target ({structure} {sparsity:g}): best baseline's final CROWN-IBP-verified accuracy - 1 point"
                  f" = {target:.1%}")
            ours = logs.get(("verisparse", structure, sparsity))
            if ours and hydra:
                print("  " + _claim(ours, [logs[k] for k in group if k[0] != "verisparse"], hydra))
    kind = run_totals(logs[("dense", "-", 0.0)][0])["peak_memory_kind"]
    print(f"peak memory: {'process peak RSS per run (includes data and torch)' if kind == 'process_peak_rss' else kind}"
          "; GMACs: multiply-accumulates of all training steps (forward, bounds, backward), 1e9")
    if args.plot:
        _plot(logs, args.plot, args.sparsities, args.structures, methods, args.eps)


def _final(seed_logs, field):
    """A final-epoch figure, averaged over the seeds' logs."""
    return _mean(log[-1][field] for log in seed_logs)


def _claim(ours, baselines, hydra):
    """The paper's claim, as issue 10 states it: final CROWN-verified accuracy at least the best
    baseline's minus 0.5 points, in at most a third of HYDRA's training time (means over seeds)."""
    best = max(_final(b, "crown_verified_acc") for b in baselines)
    gap = _final(ours, "crown_verified_acc") - best
    ratio = _final(ours, "train_seconds") / _final(hydra, "train_seconds")
    met = gap >= -0.005 - 1e-9 and ratio <= 1 / 3  # accuracies are float means: -0.5 pt itself is met
    return (f"claim (>= best baseline - 0.5 pt in <= 1/3 of HYDRA's time): {'MET' if met else 'not met'} "
            f"({gap * 100:+.1f} pt, {ratio:.2f}x HYDRA's time)")


def _row(key, logs, target, hydra_seconds):
    """One method's line: means over the seeds (time to target: over the seeds that reach it, which
    are counted when not all do), the largest peak memory; with several seeds, each seed's final
    CROWN-verified accuracy after the table's columns."""
    seed_logs = logs[key]
    train_s = _final(seed_logs, "train_seconds")
    times = [_time_to(log, target, sparse=key[0] != "dense") for log in seed_logs] if target is not None else []
    reached = [t for t in times if t is not None]
    to_target = "-" if target is None else "never" if not reached else \
        f"{_mean(reached):.1f}" + ("" if len(reached) == len(times) else f" ({len(reached)}/{len(times)})")
    evals = _mean(sum(r["eval_seconds"] for r in log) for log in seed_logs)
    ratio = f"{train_s / hydra_seconds:.2f}" if hydra_seconds else "-"
    sparsity = f"{seed_logs[0][-1]['sparsity']:.4f}"
    peak = max(run_totals(log)["peak_memory_bytes"] for log in seed_logs)
    macs = _mean(run_totals(log)["train_macs"] for log in seed_logs)
    per_seed = "  " + " / ".join(f"{log[-1]['crown_verified_acc']:.1%}" for log in seed_logs) \
        if len(seed_logs) > 1 else ""
    print(f"{key[0]:<15}{key[1]:<14}{sparsity:>9}{train_s:>9.1f}{evals:>8.1f}{_final(seed_logs, 'clean_acc'):>8.1%}"
          f"{_final(seed_logs, 'crown_verified_acc'):>11.1%}{to_target:>13}{ratio:>10}"
          f"{peak / 2 ** 20:>10.0f}{macs / 1e9:>10.4g}{per_seed}")


def _plot(logs, path, sparsities, structures, methods, eps):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(sparsities), len(structures), figsize=(5.5 * len(structures), 4 * len(sparsities)),
                             sharey=True, squeeze=False)
    for row, sparsity in zip(axes, sparsities):
        for ax, structure in zip(row, structures):
            for key in [(m, structure, sparsity) for m in methods] + [("dense", "-", 0.0)]:
                color = None
                for i, log in enumerate(logs[key]):  # one line per seed, in the method's colour
                    pts = [(r["train_seconds"], r["crown_ibp_verified_acc"])
                           for r in log if "crown_ibp_verified_acc" in r]
                    line, = ax.plot(*zip(*pts),
                                    label=key[0] if i == 0 else None, color=color, alpha=1 if i == 0 else 0.5)
                    color = line.get_color()
                    ax.plot(log[-1]["train_seconds"], log[-1]["crown_verified_acc"], "o", color=color)
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
