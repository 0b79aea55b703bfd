r"""Cross-check `verisparse verify` against alpha-beta-CROWN on the same VNN-COMP instances.

  .venv/bin/python bench/abcrown_compare.py --abcrown /tmp/abcrown [--model runs/default/model.onnx]
      [--eps 0.1] [--pool 1000] [--count 40 | --samples 3,17,42 | --all] [--timeout 30] [--out DIR]

alpha-beta-CROWN is not a dependency of this project; it runs beside our torch through PYTHONPATH:

  git clone --recursive https://github.com/Verified-Intelligence/alpha-beta-CROWN /tmp/abcrown
  .venv/bin/python -m pip install --no-deps --target /tmp/abcrown-deps sortedcontainers onnx2pytorch==0.5.1 \
      onnxoptimizer skl2onnx scikit-learn joblib threadpoolctl pandas python-dateutil pytz tzdata psutil six \
      appdirs graphviz gurobipy
  then pass --abcrown /tmp/abcrown --abcrown-deps /tmp/abcrown-deps (--no-deps keeps pip off our torch).
  Two compatibility steps outside this project, for a CPU-only torch: the PyPI onnx2pytorch lacks the
  `quirks` keyword of alpha-beta-CROWN's fork (drop it in complete_verifier/load_model.py when no quirks
  are given; alpha-beta-CROWN checks the converted model against ONNX Runtime on load), and PyPI's
  torchvision is a CUDA build that does not load beside torch+cpu (alpha-beta-CROWN and onnx2pytorch
  only import it: an empty torchvision package with ops/datasets/transforms modules in
  /tmp/abcrown-deps serves).

Steps: `verify --method crown` on the first --pool test samples (also exporting their VNN-COMP
instances); the selection is every sample CROWN leaves unknown plus evenly spread verified and
falsified ones (--count in all), or --samples, or with --all every sample of the pool (what an
unknown rate over a whole test prefix needs); `verify --method auto` on exactly those (an npz
dataset of the selected samples, same per-sample --time-limit); alpha-beta-CROWN's abcrown.py in its
csv mode on the selected instances (CPU, bab.timeout = --timeout). Prints verdict counts and seconds
per tool and every sample where the tools differ. Exit 1 when one tool proves what the other refutes
(verified vs unsafe, falsified vs safe), or when one of our counterexamples does not hold: that is
a soundness bug in one of them. Exit 2 when the comparison cannot run (no checkout, a tool failed).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

GET_ABCROWN = ("get one with `git clone --recursive https://github.com/Verified-Intelligence/alpha-beta-CROWN "
               "DIR` (its pip packages: see `python bench/abcrown_compare.py --help`)")

# abcrown.py's csv mode prints, per instance, a header line then one result line.
_IDX = re.compile(r"%+ idx: (\d+), vnnlib ID: (\d+) %+")
_RESULT = re.compile(r"^Result: (.+?) in ([0-9.]+) seconds\s*$")
_SAMPLE = re.compile(r"sample_(\d+)\.vnnlib$")


def _note(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fail(msg):
    """A comparison that could not run exits 2: exit 1 is kept for the soundness verdict."""
    print(msg, file=sys.stderr)
    sys.exit(2)


def abcrown_verdict(status, seconds, timeout):
    """alpha-beta-CROWN's status string -> safe | unsafe | timeout | unknown. Its strings carry the
    stage ('safe-incomplete', 'unsafe-pgd', 'unsafe-bab', 'safe (timed out)', 'unknown')."""
    s = status.strip().lower()
    if "unsafe" in s:
        return "unsafe"
    if "safe" in s:
        return "safe"
    return "timeout" if seconds >= timeout or "timed out" in s or "timeout" in s else "unknown"


def parse_abcrown_log(text, rows, timeout):
    """{sample index: (verdict, raw status, seconds)} from abcrown.py's stdout; rows are the csv's
    (onnx, vnnlib, timeout) lines in order, whose vnnlib names carry our sample index."""
    out, current = {}, None
    for line in text.splitlines():
        m = _IDX.search(line)
        if m:
            current = int(m.group(1))
            continue
        m = _RESULT.match(line.strip())
        if m and current is not None:
            if current >= len(rows):
                raise ValueError(f"alpha-beta-CROWN reported instance {current} but the csv has {len(rows)} rows")
            sample = sample_of(rows[current][1])
            seconds = float(m.group(2))
            out[sample] = (abcrown_verdict(m.group(1), seconds, timeout), m.group(1).strip(), seconds)
            current = None
    return out


def sample_of(vnnlib_name):
    m = _SAMPLE.search(vnnlib_name)
    if not m:
        raise ValueError(f"{vnnlib_name}: not a verisparse export (vnnlib/sample_I.vnnlib)")
    return int(m.group(1))


CONFLICT = {("verified", "unsafe"), ("falsified", "safe")}


def compare(ours, theirs):
    """(conflicts, one-sided) over the samples both report: conflicts are proofs against
    counterexamples; one-sided are samples one tool settles and the other leaves open."""
    conflicts, one_sided = [], []
    for i in sorted(set(ours) & set(theirs)):
        a, b = ours[i], theirs[i]
        if (a, b) in CONFLICT:
            conflicts.append((i, a, b))
        elif (a == "unknown") != (b in ("unknown", "timeout")):
            one_sided.append((i, a, b))
    return conflicts, one_sided


_BOUND = re.compile(r"\(assert \((>=|<=) X_(\d+) (\S+)\)\)")
_UNSAFE = re.compile(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)")


def read_property(text):
    """(lo, hi, [(j, label)]) of a verisparse VNN-LIB file: the input box and the unsafe rows."""
    bounds = [(op, int(k), float(v)) for op, k, v in _BOUND.findall(text)]
    n = max(k for _, k, _ in bounds) + 1
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    for op, k, v in bounds:
        (lo if op == ">=" else hi)[k] = v
    return lo, hi, [(int(j), int(y)) for j, y in _UNSAFE.findall(text)]


def check_counterexample(session, text, x):
    """Our counterexample, re-checked without our verifier: inside the VNN-LIB box (as float32,
    what the network reads) and some unsafe row holds under ONNX Runtime. Returns a reason or None."""
    lo, hi, rows = read_property(text)
    flat = np.asarray(x, np.float32).reshape(-1)
    if flat.size != lo.size or np.any(flat < lo.astype(np.float32)) or np.any(flat > hi.astype(np.float32)):
        return "outside the VNN-LIB input box"
    feed = {session.get_inputs()[0].name: flat.reshape(1, *np.asarray(x).shape)}
    z = session.run(None, feed)[0].reshape(-1)
    if not any(z[j] >= z[y] for j, y in rows):
        return f"ONNX Runtime scores {z.tolist()}: no unsafe row holds"
    return None


def select(statuses, count, unknown_first=True):
    """Every CROWN-unknown sample (up to count), then verified and falsified ones spread evenly
    over the pool, half each (what one kind lacks the other fills)."""
    by = {k: [i for i, s in sorted(statuses.items()) if s == k] for k in ("unknown", "verified", "falsified")}
    chosen = by["unknown"][:count] if unknown_first else []
    left = count - len(chosen)
    n_ver = min(len(by["verified"]), max(left // 2, left - len(by["falsified"])))
    n_fal = min(len(by["falsified"]), left - n_ver)

    def spread(items, k):
        return [items[j] for j in np.linspace(0, len(items) - 1, k).round().astype(int)] if k > 0 else []
    return sorted(set(chosen) | set(spread(by["verified"], n_ver)) | set(spread(by["falsified"], n_fal)))


def choose(statuses, count, samples=None, every=False):
    """The compared samples: --samples as given, --all the whole pool, else select()."""
    if samples:
        return sorted(int(s) for s in samples.split(","))
    return sorted(statuses) if every else select(statuses, count)


def table(ours, theirs, ours_s, theirs_s, samples, crown=None):
    """Markdown: verdict counts and seconds per tool (total, mean, max over the selected samples)."""
    lines = ["| tool | verified/safe | falsified/unsafe | unknown | timeout | s total | s mean | s max |",
             "|---|---|---|---|---|---|---|---|"]

    def row(name, verdicts, secs, keys):
        c = Counter(verdicts[i] for i in samples)
        t = [secs[i] for i in samples if i in secs]
        tot = sum(t)
        lines.append(f"| {name} | {c[keys[0]]} | {c[keys[1]]} | {c['unknown']} | {c['timeout']} | {tot:.1f} | "
                     f"{tot / max(len(t), 1):.2f} | {max(t, default=0):.2f} |")
    if crown is not None:
        row("verisparse --method crown", crown[0], crown[1], ("verified", "falsified"))
    row("verisparse --method auto", ours, ours_s, ("verified", "falsified"))
    row("alpha-beta-CROWN", theirs, theirs_s, ("safe", "unsafe"))
    return "\n".join(lines)


# --- running the tools ------------------------------------------------------------------------

def _where(device):
    if device == "cpu":
        return "CPU"
    import torch
    return f"GPU {torch.cuda.get_device_name(0)}"


def _verisparse(*args):
    cmd = [sys.executable, "-m", "verisparse", "verify", *map(str, args)]
    _note(" ".join(cmd))
    start = time.perf_counter()
    r = subprocess.run(cmd)
    if r.returncode not in (0, 1):  # 1: below --min-vra, still a certificate
        _fail(f"verisparse verify failed with exit {r.returncode}")
    return time.perf_counter() - start


def _certificate(path, samples=None):
    """{index: (status, decided_by, seconds)}; samples maps the certificate's positions to ours."""
    cert = json.loads(Path(path).read_text())
    out = {}
    for r in cert["samples"]:
        i = samples[r["index"]] if samples is not None else r["index"]
        out[i] = (r["status"], r["decided_by"], r["seconds"])
    return out


def write_selection(model, eps, samples, out):
    """The selected test samples as an npz dataset, so `verify` runs on exactly them."""
    from verisparse.verify.artifact import load_artifact
    from verisparse.verify.command import _run_defaults
    from verisparse.verify.samples import load_split
    art = load_artifact(model)
    d = _run_defaults(art)
    _, x, y = load_split(art, d["dataset"], d.get("seed", 0), None, "test", max(samples) + 1)
    sel = np.asarray(samples)
    path = out / "selected.npz"
    np.savez(path, x_train=x[sel].numpy(), y_train=y[sel].numpy(), x_test=x[sel].numpy(),
             y_test=y[sel].numpy(), classes=np.array([str(k) for k in range(art.num_classes)]))
    return path


def abcrown_config(vnn_dir, csv_name, timeout, results, device="cpu"):
    """Its defaults, but the attack after alpha-CROWN (pgd_order: middle, as most of its VNN-COMP
    configs set): its default 'before' spends ~19 s of PGD on a 2-core CPU before bounds it settles at once."""
    return (f"general:\n  device: {device}\n  root_path: {vnn_dir}\n  csv_name: {csv_name}\n"
            f"  complete_verifier: bab\n  results_file: {results}\n"
            f"attack:\n  pgd_order: middle\n"
            f"bab:\n  timeout: {timeout:g}\n")


def run_abcrown(abcrown, deps, vnn_dir, csv_name, timeout, out, device="cpu"):
    cfg = out / "abcrown.yaml"
    cfg.write_text(abcrown_config(vnn_dir.absolute(), csv_name, timeout, (out / "abcrown_out.pkl").absolute(),
                                  device))
    cv = abcrown / "complete_verifier"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(deps) if deps else "", str(cv), os.environ.get("PYTHONPATH", "")) if p))
    log = out / "abcrown.log"
    cmd = [sys.executable, "abcrown.py", "--config", str(cfg.absolute()), "--device", device]
    _note(f"alpha-beta-CROWN: {' '.join(cmd)} (log: {log})")
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if _RESULT.match(line.strip()) or _IDX.search(line):
                _note(f"  abcrown {line.strip().strip('%').strip()}")
        proc.wait()
    if proc.returncode != 0:
        _fail(f"alpha-beta-CROWN exited {proc.returncode}; see {log}")
    return log.read_text(), time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--abcrown", type=Path, required=True, help="alpha-beta-CROWN checkout with auto_LiRPA")
    ap.add_argument("--abcrown-deps", type=Path, default=None, help="folder of its pip packages (--target)")
    ap.add_argument("--model", type=Path, default=Path("runs/default/model.onnx"))
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=1000, help="choose among the first POOL test samples")
    ap.add_argument("--count", type=int, default=40, help="instances in all")
    ap.add_argument("--samples", default=None, help="comma-separated test indices instead of the selection")
    ap.add_argument("--all", action="store_true", help="every sample of the pool instead of the selection")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per instance, both tools")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/abcrown"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where both tools compute their bounds (ours: --device; TF32 stays off)")
    a = ap.parse_args(argv)
    if not (a.abcrown / "complete_verifier" / "abcrown.py").is_file() or \
            not (a.abcrown / "complete_verifier" / "auto_LiRPA" / "__init__.py").is_file():
        print(f"{a.abcrown} is not an alpha-beta-CROWN checkout with auto_LiRPA; {GET_ABCROWN}", file=sys.stderr)
        return 2  # 1 is the soundness verdict
    a.out.mkdir(parents=True, exist_ok=True)
    vnn = a.out / "vnncomp"

    pool = a.pool if a.samples is None else max(int(s) for s in a.samples.split(",")) + 1
    _verisparse(a.model, "--device", a.device, "--eps", a.eps, "--n", pool, "--method", "crown",
                "--time-limit", a.timeout,
                "--report", a.out / "ours_crown.json", "--export-vnnlib", vnn)
    crown = _certificate(a.out / "ours_crown.json")
    samples = choose({i: r[0] for i, r in crown.items()}, a.count, a.samples, a.all)
    _note(f"{len(samples)} samples: {samples}")
    with open(vnn / "instances.csv") as f:
        rows = {sample_of(r[1]): r for r in csv.reader(f) if r}
    chosen = [rows[i] for i in samples]
    with open(vnn / "selected.csv", "w", newline="") as f:
        csv.writer(f).writerows(chosen)

    npz = write_selection(a.model, a.eps, samples, a.out)
    wall_auto = _verisparse(a.model, "--device", a.device, "--eps", a.eps, "--dataset", f"npz:{npz}",
                            "--method", "auto",
                            "--time-limit", a.timeout, "--report", a.out / "ours_auto.json")
    auto = _certificate(a.out / "ours_auto.json", samples)

    log, wall_abc = run_abcrown(a.abcrown, a.abcrown_deps, vnn, "selected.csv", a.timeout, a.out, a.device)
    theirs = parse_abcrown_log(log, chosen, a.timeout)
    missing = [i for i in samples if i not in theirs]
    if missing:
        _fail(f"alpha-beta-CROWN reported no result for samples {missing}; see {a.out / 'abcrown.log'}")

    bad = recheck_counterexamples(vnn, a.out / "ours_auto_counterexamples.npz", samples, auto)
    print(f"\n{a.model}, eps {a.eps:g}, {len(samples)} instances, {a.timeout:g} s per instance, "
          f"{_where(a.device)}\n")
    code = report(samples, crown, auto, theirs)
    print(f"whole processes, start-up included: verisparse --method auto {wall_auto:.1f} s, alpha-beta-CROWN "
          f"{wall_abc:.1f} s")
    falsified = sum(auto[i][0] == "falsified" for i in samples)
    print(f"our counterexamples re-checked on the VNN-LIB boxes with ONNX Runtime: {falsified - len(bad)} of "
          f"{falsified} hold")
    for i, why in bad:
        print(f"!!!   sample {i}: verisparse's counterexample is not one: {why}")
    return 1 if bad else code


def recheck_counterexamples(vnn, cex_path, samples, auto):
    """[(sample, reason)] for each verisparse-falsified sample whose counterexample does not hold."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(vnn / "model.onnx"), providers=["CPUExecutionProvider"])
    cex = {}
    if cex_path.is_file():
        with np.load(cex_path) as z:
            cex = {samples[int(k)]: x for k, x in zip(z["index"], z["x"])}
    bad = []
    for i in samples:
        if auto[i][0] != "falsified":
            continue
        why = (check_counterexample(session, (vnn / "vnnlib" / f"sample_{i}.vnnlib").read_text(), cex[i])
               if i in cex else "no counterexample stored")
        if why:
            bad.append((i, why))
    return bad


def report(samples, crown, auto, theirs):
    """Print the table, the per-sample verdicts and every difference; 1 when one tool proves what
    the other refutes. crown/auto: {i: (status, decided_by, s)}; theirs: {i: (verdict, raw, s)}."""
    ours_v = {i: auto[i][0] for i in samples}
    theirs_v = {i: theirs[i][0] for i in samples}
    print(table(ours_v, theirs_v, {i: auto[i][2] for i in samples}, {i: theirs[i][2] for i in samples}, samples,
                crown=({i: crown[i][0] for i in samples}, {i: crown[i][2] for i in samples})))
    conflicts, one_sided = compare(ours_v, theirs_v)
    print("\nper sample (index: crown / auto [decided by] / alpha-beta-CROWN [status]):")
    for i in samples:
        print(f"  {i}: {crown[i][0]} / {auto[i][0]} [{auto[i][1]}, {auto[i][2]:.2f} s] / {theirs[i][0]} "
              f"[{theirs[i][1]}, {theirs[i][2]:.2f} s]")
    print(f"\nsettled by one tool only: {len(one_sided)}")
    for i, x, y in one_sided:
        print(f"  sample {i}: verisparse {x}, alpha-beta-CROWN {y}")
    if conflicts:
        print(f"\n!!! SOUNDNESS DISAGREEMENT on {len(conflicts)} sample(s): one tool proves what the other refutes")
        for i, x, y in conflicts:
            print(f"!!!   sample {i}: verisparse {x}, alpha-beta-CROWN {y}")
        return 1
    print("disagreements (verified vs unsafe, falsified vs safe): none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
