"""Verification speed and the verified-accuracy ladder on the default run, on 2 CPU threads.

  .venv/bin/python bench/verify_speed.py [--run runs/default] [--n 1000] [--milp-samples 20]
  .venv/bin/python bench/verify_speed.py --run runs/cnn7 --methods crown,alpha-crown,bab,auto \
      [--n 200] [--eps 0.1] [--time-limit 30]

Prints a Markdown table for the README:
  - samples/s of the batched bound passes alone (IBP, CROWN, int8 IBP, int8 CROWN) on the
    cnn_4layer run, and of MILP per sample run on its own (not only where CROWN left it open);
  - the ladder float CROWN / int8 / MILP / attack from the full cascades on the test split;
  - the MILP settle rate on a freshly trained 0.9-sparse mlp_2layer (mnist5k), 10 s per sample.
With --methods, only one table instead: per `verify --method`, the verified / falsified / unknown
counts and seconds (wall, and the most one sample took) of the run's model.onnx, for any
architecture (a cnn_7layer, say), at --eps with --time-limit per sample.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def _note(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rate(fn, n):
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _steady_rate(fn, n, repeats=3):
    """Samples/s of a bound pass once its per-op caches exist (a verification of many samples
    runs there): one warm-up, then the median of repeats."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / sorted(times)[len(times) // 2]


def bound_speed(net, x, y, eps, batch=200):
    from verisparse.verify.bounds import input_box, margin_spec
    x_l, x_u = input_box(x, eps)
    C = margin_spec(y, 10)

    def run(kind):
        with torch.no_grad():
            for s in range(0, len(y), batch):
                sl = slice(s, s + batch)
                net.ibp(x_l[sl], x_u[sl], C[sl]) if kind == "ibp" else net.crown(x_l[sl], x_u[sl], C[sl])
    return _steady_rate(lambda: run("ibp"), len(y)), _steady_rate(lambda: run("crown"), len(y))


def int8_speed(model, x, y, eps, batch=200):
    from verisparse.verify.bounds import input_box, margin_spec
    from verisparse.verify.int8_bounds import margin_ibp
    x_l, x_u = input_box(x, eps)
    u_l, u_u = model.input_box(x_l.numpy(), x_u.numpy())
    C = margin_spec(y, model.num_classes).double()

    def run(kind):
        with torch.no_grad():
            for s in range(0, len(y), batch):
                sl = slice(s, s + batch)
                if kind == "ibp":  # what the int8-ibp stage runs
                    margin_ibp(model.net, u_l[sl], u_u[sl], C[sl])
                else:
                    model.net.crown(u_l[sl], u_u[sl], C[sl])
    return _steady_rate(lambda: run("ibp"), len(y)), _steady_rate(lambda: run("crown"), len(y))


def milp_speed(net, runtime, x, y, eps, time_limit):
    """MILP on every sample (after IBP/CROWN bounds for big-M), regardless of whether CROWN
    alone already verified it: the raw cost of the complete method."""
    from verisparse.verify.bounds import input_box, margin_spec
    from verisparse.verify.milp import MilpNet, verify_sample
    mnet = MilpNet(net, x.shape[1:])
    x_l, x_u = input_box(x, eps)
    C = margin_spec(y, 10)
    start = time.perf_counter()
    pre, errs = mnet.pre_bounds(x_l, x_u)
    with torch.no_grad():
        lb = net.ibp(x_l, x_u, C)[0].double().numpy()
    lb[:] = np.minimum(lb, -1.0)  # hide the bounds' verdict: MILP must prove every class itself
    statuses = []
    for i in range(len(y)):
        def confirm(xf, i=i):
            z = runtime(xf.reshape(1, *x.shape[1:]).astype(np.float32))[0]
            return int(np.argmax(z)) != int(y[i])
        r = verify_sample(mnet, x_l[i].flatten().double().numpy(), x_u[i].flatten().double().numpy(),
                          {j: (l[i], u[i]) for j, (l, u) in pre.items()}, [e[i] for e in errs], int(y[i]), lb[i],
                          time_limit, confirm)
        statuses.append(r.status)
    return len(y) / (time.perf_counter() - start), Counter(statuses)


def ladder(art, x, y, eps, method, time_limit=10.0):
    start = time.perf_counter()
    res = art.verify(x, y, eps, method, time_limit=time_limit)
    c = Counter(r.status for r in res)
    return dict(verified=c["verified"] / len(y), falsified=c["falsified"], unknown=c["unknown"],
                attack_robust=(len(y) - c["falsified"]) / len(y), seconds=time.perf_counter() - start)


def sparse_mlp_settle_rate(n, time_limit):
    """Train a 0.9-sparse mlp_2layer on mnist5k (IBP training, 20 epochs), then run MILP alone
    on each correctly classified test sample (bounds hidden, so MILP must settle every class
    itself): the fraction that ends verified or falsified within time_limit each."""
    from verisparse.trainer.datasets import load_dataset
    from verisparse.trainer.train import TrainConfig, train
    from verisparse.verify.artifact import load_artifact
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "mlp"
        train(TrainConfig(dataset="mnist5k", arch="mlp_2layer", eps=0.1, epochs=20, sparsity=0.9), run,
              progress=False)
        art = load_artifact(run / "checkpoint.pt")
        ds = load_dataset("mnist5k")
        x, y = ds.x_test[:n], ds.y_test[:n]
        correct = art.run(x.numpy()).argmax(1) == y.numpy()
        rate, status = milp_speed(art.extra["net"], art.run, x[correct], y[correct], 0.1, time_limit)
    k = int(correct.sum())
    return dict(n=k, settled=(status["verified"] + status["falsified"]) / k, status=dict(status), rate=rate)


def cascade_speed(art, x, y, eps, method):
    """samples/s of the bound stages of `verify --method ibp|crown` (IBP, then CROWN-IBP and
    CROWN on what is left open), without the attack: that is the verification throughput."""
    from verisparse.verify.float_verify import verify_float
    net = art.extra["net"]
    res = []
    rate = _rate(lambda: res.extend(verify_float(net, art.run, x, y, eps, method, attack_steps=1,
                                                 attack_restarts=0)), len(y))
    return rate, sum(r.status == "verified" for r in res) / len(y)


def method_rows(art, x, y, eps, methods, time_limit):
    """Per verify method: its verdict counts on (x, y), the wall seconds and the slowest sample."""
    rows = []
    for m in methods:
        _note(f"verify --method {m}")
        start = time.perf_counter()
        res = art.verify(x, y, eps, m, time_limit=time_limit)
        c = Counter(r.status for r in res)
        rows.append(dict(method=m, verified=c["verified"], falsified=c["falsified"], unknown=c["unknown"],
                         seconds=time.perf_counter() - start, max_sample=max(r.seconds for r in res)))
    return rows


def methods_table(rows):
    lines = ["| method | verified | falsified | unknown | s total | s max per sample |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['verified']} | {r['falsified']} | {r['unknown']} | {r['seconds']:.1f} | "
              f"{r['max_sample']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--milp-samples", type=int, default=20)
    ap.add_argument("--mlp-samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=None,
                    help="comma-separated verify methods: only their verdict table, for any architecture")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per sample (with --methods)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    run = Path(args.run)
    if args.methods:
        from verisparse.files import read_json
        from verisparse.verify.command import _run_defaults
        from verisparse.verify.samples import load_split
        art = load_artifact(run / "model.onnx")
        d = _run_defaults(art)
        _, x, y = load_split(art, d["dataset"], d.get("seed", 0), None, "test", args.n)
        rows = method_rows(art, x, y, args.eps, args.methods.split(","), args.time_limit)
        arch = read_json(run / "config.json").get("arch", "") if (run / "config.json").is_file() else ""
        print(f"\nverify methods, {run} ({d['dataset']} {arch}, eps {args.eps:g}), {len(y)} test "
              f"samples, {args.time_limit:g} s per sample, {args.threads} threads\n")
        print(methods_table(rows))
        return
    onnx_art = load_artifact(run / "model.onnx")
    int8_art = load_artifact(run / "model_int8.tflite")
    ds = load_dataset("mnist5k")
    x, y, eps = ds.x_test[:args.n], ds.y_test[:args.n], 0.1
    net = onnx_art.extra["net"]
    _note("bound passes")
    ibp_s, crown_s = bound_speed(net, x, y, eps)
    casc_ibp, _ = cascade_speed(onnx_art, x, y, eps, "ibp")
    casc_crown, casc_crown_vra = cascade_speed(onnx_art, x, y, eps, "crown")
    i8_ibp_s, i8_crown_s = int8_speed(int8_art.extra["model"], x, y, eps)
    k = args.milp_samples
    _note("MILP alone")
    milp_s, milp_status = milp_speed(net, onnx_art.run, x[:k], y[:k], eps, 10.0)
    _note("ladders")
    lad_crown = ladder(onnx_art, x, y, eps, "crown")
    lad_milp = ladder(onnx_art, x, y, eps, "milp")
    lad_int8 = ladder(int8_art, x, y, eps, "crown")
    _note("sparse mlp_2layer")
    mlp = sparse_mlp_settle_rate(args.mlp_samples, 10.0)
    print(f"\nverify speed, {run} (mnist5k cnn_4layer, eps {eps}), {args.n} test samples, "
          f"{args.threads} threads\n")
    print("| method | samples/s |\n|---|---|")
    print(f"| IBP (float, batched 200), every sample | {ibp_s:,.0f} |")
    print(f"| full CROWN (CROWN intermediates), every sample | {crown_s:,.0f} |")
    print(f"| verify --method ibp, bound stages (no attack) | {casc_ibp:,.0f} |")
    print(f"| verify --method crown: IBP -> CROWN-IBP -> CROWN on what is open (no attack; "
          f"{casc_crown_vra:.1%} verified) | {casc_crown:,.0f} |")
    print(f"| int8 IBP (integer-exact) | {i8_ibp_s:,.0f} |")
    print(f"| int8 CROWN | {i8_crown_s:,.0f} |")
    print(f"| MILP alone, every sample ({k} samples, 10 s limit; {dict(milp_status)}) | {milp_s:.2f} |")
    print("\n| ladder (verified accuracy) | value | wall s |\n|---|---|---|")
    print(f"| float CROWN (model.onnx) | {lad_crown['verified']:.1%} | {lad_crown['seconds']:.1f} |")
    print(f"| int8 CROWN (model_int8.tflite) | {lad_int8['verified']:.1%} | {lad_int8['seconds']:.1f} |")
    print(f"| float MILP, exact (model.onnx; unknown {lad_milp['unknown']}) | {lad_milp['verified']:.1%} | "
          f"{lad_milp['seconds']:.1f} |")
    print(f"| attack-robust, float PGD confirmed by ONNX Runtime | {lad_milp['attack_robust']:.1%} | |")
    print(f"| attack-robust, int8 (PGD, confirmed by LiteRT) | {lad_int8['attack_robust']:.1%} | |")
    print(f"\nMILP alone on a 0.9-sparse mlp_2layer (mnist5k, eps 0.1, 20 epochs), 10 s per sample: "
          f"{mlp['settled']:.1%} of {mlp['n']} correctly classified samples settled {mlp['status']}, "
          f"{mlp['rate']:.2f} samples/s")


if __name__ == "__main__":
    main()
