"""`verisparse profile`: the click command. Light imports only (numpy, click, the runtimes)."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import click

RUNTIME_CHOICES = ["litert", "litert-ref", "onnxruntime", "all"]


def _threads(ctx, param, value):
    try:
        ts = sorted({int(t) for t in value.split(",") if t.strip()})
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of thread counts, e.g. 1,2,4; got {value!r}") from None
    if not ts or ts[0] < 1:
        raise click.BadParameter(f"thread counts must be at least 1; got {value!r}")
    return ts


def _at_least(n):
    def check(ctx, param, value):
        if value < n:
            raise click.BadParameter(f"must be at least {n}; got {value}")
        return value
    return check


@click.command(epilog="""\b
Examples:
  verisparse profile runs/default                      # model_int8.tflite and model.onnx, every runtime
  verisparse profile runs/default --runtime litert --threads 1,4 --runs 1000
  verisparse profile runs/dense runs/default runs/structured --compare --runtime litert
  verisparse profile model.tflite --json prof.json
""")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="all", show_default=True,
              help="litert: LiteRT's default kernels (XNNPACK); litert-ref: its reference kernels, "
                   "the certified arithmetic; onnxruntime: model.onnx.")
@click.option("--threads", default="1,2,4", show_default=True, callback=_threads,
              help="Thread counts to time (the reference kernels run on one).")
@click.option("--warmup", type=int, default=20, show_default=True, callback=_at_least(0),
              help="Untimed inferences before timing.")
@click.option("--runs", type=int, default=200, show_default=True, callback=_at_least(1),
              help="Timed inferences per runtime and thread count.")
@click.option("--vectors", type=int, default=200, show_default=True, callback=_at_least(1),
              help="Test vectors for the bytes check.")
@click.option("--json", "json_out", type=click.Path(), default=None,
              help="Write the profile here [default: RUN_DIR/profile.json for each run directory given].")
@click.option("--compare", is_flag=True, help="Also one table of p50 latencies with the models side by side.")
@click.option("--plot", "plot_out", type=click.Path(), default=None,
              help="PNG of the latencies [default: profile.png beside each profile.json, when matplotlib is there].")
def profile(artifacts, runtime, threads, warmup, runs, vectors, json_out, compare, plot_out):
    """Latency, memory and output bytes of exported models on this machine (a Raspberry Pi).

    ARTIFACTS: run directories (their model_int8.tflite and model.onnx), .tflite or .onnx files.
    Per runtime and thread count: load time, first inference, latency p50/p90/p99/max over
    --runs after --warmup, inferences/s and peak memory. The bytes check runs the reference
    kernels on the run's test vectors and counts the outputs where XNNPACK differs; with a
    certificate it says whether this machine computes the int8 arithmetic that was certified.
    Warns when the Pi is throttled and says EMULATED under qemu (emulated timings are not timings)."""
    from verisparse.errors import VeriSparseError

    from . import artifacts as arts_mod
    from . import machine, plot, runtimes, table
    from .bytes_check import check
    from .timing import measure

    import numpy as np

    arts = arts_mod.resolve(artifacts)
    chosen = list(runtimes.RUNTIMES) if runtime == "all" else [runtime]
    if runtime == "all" and not runtimes.onnxruntime_installed():  # an older Pi image: tflite-runtime only
        chosen.remove("onnxruntime")
        click.echo("note: onnxruntime is not installed: .onnx models are skipped (pip install onnxruntime)", err=True)
    plans = [(a, [r for r in chosen if runtimes.KIND[r] == a.kind]) for a in arts]
    if not any(rs for _, rs in plans):
        kinds = sorted({a.kind for a in arts})
        raise VeriSparseError(f"--runtime {runtime} runs none of the given models ({', '.join(kinds)}); "
                              "litert and litert-ref run .tflite, onnxruntime runs .onnx")
    plans = [(a, rs) for a, rs in plans if rs]  # a run directory's other model, for another runtime
    info = machine.describe()
    warned = machine.warnings(info)
    for w in warned:
        click.echo(f"warning: {w}", err=True)
    rng = np.random.default_rng(0)
    total = sum(runs * (len(threads) if runtimes.THREADED[r] else 1) for _, rs in plans for r in rs)
    records = []
    with click.progressbar(length=total, label="profiling", file=sys.stderr) as bar:
        for a, rs in plans:
            rows = []
            for r in rs:
                probe = runtimes.load(r, a.data, 1)
                if probe.input_dtype == np.int8:
                    x = rng.integers(-128, 128, probe.input_shape).astype(np.int8)
                else:
                    x = rng.random(probe.input_shape, dtype=np.float32).astype(probe.input_dtype)
                del probe
                for t in (threads if runtimes.THREADED[r] else [1]):
                    rows.append(measure(r, a.data, t, x, warmup, runs, bar.update))
            rec = dict(label=a.label, path=str(a.path), kind=a.kind, bytes=len(a.data),
                       sha256=hashlib.sha256(a.data).hexdigest(), rows=rows)
            if a.kind == "tflite":
                rec["bytes_check"] = check(a, threads, "litert" in rs, vectors)
            records.append((a, rec))
    info["temperatures_after"] = machine.temperatures()
    _compare_recorded(records, info)
    record = dict(format="verisparse-profile/1", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=info,
                  versions=runtimes.versions(), settings=dict(runtime=runtime, threads=threads, warmup=warmup,
                                                              runs=runs, vectors=vectors),
                  warnings=machine.warnings(info), artifacts=[rec for _, rec in records])

    click.echo(table.machine_line(info))
    for _, rec in records:
        click.echo(f"\n{rec['label']}  ({rec['bytes']} B)")
        click.echo(table.artifact_table(rec))
        for line in table.bytes_summary(rec):
            click.echo("  " + line)
    if compare:
        click.echo("\n" + table.compare_table(record["artifacts"]))
    for w in record["warnings"]:
        if w not in warned:  # what the run itself caused (heat)
            click.echo(f"warning: {w}", err=True)
    _write(record, records, json_out, plot_out, artifacts, plot)


def _compare_recorded(records, info):
    """Check each tflite's reference bytes against a profile.json another machine left in its
    run directory (read before this run overwrites it)."""
    from .recorded import compare_with_recorded

    for a, rec in records:
        if a.run_dir is not None and "bytes_check" in rec:
            seen = compare_with_recorded(a.run_dir / "profile.json", rec, info)
            if seen is not None:
                rec["bytes_check"]["recorded"] = seen


def _write(record, records, json_out, plot_out, given, plot):
    """profile.json into each run directory given (its own models), or to --json."""
    from verisparse.files import write_json

    targets = []
    if json_out:
        targets.append((Path(json_out), record))
    else:
        for g in given:
            if Path(g).is_dir():
                mine = [rec for a, rec in records if a.run_dir == Path(g)]
                targets.append((Path(g) / "profile.json", dict(record, artifacts=mine)))
    for path, rec in targets:
        write_json(path, rec)
        click.echo(f"wrote {path}")
    pngs = [Path(plot_out)] if plot_out else [p.with_suffix(".png") for p, _ in targets[:1]]
    if pngs and plot.available():
        plot.write(record, pngs[0])
        click.echo(f"wrote {pngs[0]}")
    elif plot_out:
        click.echo("note: no plot: matplotlib is not installed (pip install matplotlib)", err=True)
