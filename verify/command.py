"""`verisparse verify`: certify an artifact on a dataset split, or re-check a certificate.

Exit codes are CI's contract: 0 when the verified accuracy reaches --min-vra (or a
certificate re-checks), 1 when it does not, 2 for bad input (the CLI group turns a
VeriSparseError into one line and exit 2; click does the same for bad options).
Heavy imports (torch, onnx, scipy) stay inside the functions so `verisparse --help` is fast.
"""
from __future__ import annotations

import math
import os
import sys
import time

import click

from verisparse.errors import VeriSparseError
from verisparse.verify.limits import CHECK_TIME_LIMIT_S as DEFAULT_CHECK_TIME_LIMIT_S
from verisparse.verify.limits import DEFAULTS as DEFAULT_LIMITS
from verisparse.verify.limits import TIME_BUDGET_S, Limits

METHODS = ["ibp", "crown", "alpha-crown", "bab", "milp", "auto"]


def _eps(ctx, param, value):
    if value is not None and not 0 < value <= 1:
        raise click.BadParameter(f"must be in (0, 1] (pixel space, inputs in [0, 1]); got {value}")
    return value


def _fraction(ctx, param, value):
    if not 0 <= value <= 1:
        raise click.BadParameter(f"must be a fraction in [0, 1]; got {value}")
    return value


def _positive(ctx, param, value):
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter(f"must be a finite positive number; got {value}")
    return value


@click.command(epilog="""\b
Examples:
  verisparse verify runs/default/model.onnx --eps 0.1 --dataset mnist5k --method auto --min-vra 0.85
  verisparse verify runs/default/model_int8.tflite --eps 0.1 --n 200 --junit verify.xml
  verisparse verify runs/default/checkpoint.pt --method crown --device cuda
  verisparse verify runs/default/model.onnx --n 50 --export-vnnlib vnncomp/
  verisparse verify --check runs/default/certificate.json --check-time-limit 600
\b
Sharded (shards numbered 0..N-1; merge applies --min-vra to the whole run):
  verisparse verify runs/default/model.onnx --shard 0/2 --report shard-0.json
  verisparse verify runs/default/model.onnx --shard 1/2 --report shard-1.json
  verisparse verify --merge shard-*.json --report cert.json --min-vra 0.85
  torchrun --nproc-per-node 2 -m verisparse verify runs/default/model.onnx --shard auto --report cert.json
      --samples 1000
""")
@click.argument("paths", metavar="[ARTIFACT | SHARD.json ...]", nargs=-1, type=click.Path())
@click.option("--eps", type=float, default=None, callback=_eps,
              help="L-inf radius in [0, 1] pixel space [default: the eps the artifact was trained for].")
@click.option("--dataset", default=None, help="mnist5k, digits, ..., npz:PATH or csv:PATH [default: the artifact's].")
@click.option("--data-root", type=click.Path(), default=None, help="Folder with torchvision-layout datasets.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--n", "--samples", "n", type=int, default=None, callback=_positive,
              help="Verify the first N samples of the split (under torchrun write --samples: torchrun takes --n "
                   "for an abbreviation of its own options).")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="ibp, crown, alpha-crown (optimised CROWN), bab (branch and bound) or milp (both complete, "
                   "time-limited), or auto (the strongest the artifact supports).")
@click.option("--time-limit", type=float, default=10.0, show_default=True, callback=_positive,
              help="Seconds of branch and bound / MILP per sample (auto: branch and bound up to half, "
                   "MILP the rest; MILP's include its share of building the encoding).")
@click.option("--min-vra", type=float, default=0.0, show_default=True, callback=_fraction,
              help="Exit 1 when the verified accuracy is below this fraction.")
@click.option("--report", type=click.Path(), default=None,
              help="cert.json to write [default: certificate*.json in the artifact's run directory].")
@click.option("--junit", type=click.Path(), default=None, help="Also write JUnit XML for CI.")
@click.option("--export-vnnlib", type=click.Path(), default=None,
              help="Write the ONNX, one .vnnlib per sample and instances.csv (VNN-COMP layout) here.")
@click.option("--check", "check", type=click.Path(), default=None,
              help="Re-validate this certificate against its artifact instead of verifying.")
@click.option("--eps-sweep", "eps_sweep", default=None, metavar="START:STOP:STEP",
              help="Also verify at each of these radii; the curve goes into the certificate (key eps_sweep). "
                   "Radii other than --eps use the crown cascade when --method is auto, bab or milp.")
@click.option("--kernels", type=click.Choice(["reference", "xnnpack", "all"]), default="reference", show_default=True,
              help="int8 .tflite: whose arithmetic the certificate covers: the reference kernels (TFLM, the "
                   "firmware, LiteRT's BUILTIN_REF), XNNPACK (LiteRT's default CPU kernels, float requantization), "
                   "or all of them.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the IBP/CROWN bounds run (float artifacts; TF32 off). auto: cuda when torch sees one.")
@click.option("--shard", "shard", default=None, metavar="I/N | auto",
              help="Certify only the I-th of N contiguous slices of the samples (I = 0..N-1) into a shard "
                   "certificate for --merge; auto: torchrun's RANK/WORLD_SIZE, rank 0 merges and writes --report.")
@click.option("--merge", "merge", is_flag=True,
              help="Join the SHARD.json certificates of one --shard I/N split into --report (ARTIFACT, if given "
                   "too, is the artifact they certify).")
@click.option("--check-time-limit", type=float, default=DEFAULT_CHECK_TIME_LIMIT_S, show_default=True,
              callback=_positive, help="Seconds --check may take in all; past it, exit 2.")
@click.option("--allow-empty", is_flag=True, help="--check: accept a certificate that covers no sample.")
@click.option("--trust-artifact-paths", is_flag=True,
              help="Open an npz:/csv: dataset named inside the artifact, its run's config or the certificate.")
@click.option("--max-elements", type=int, default=DEFAULT_LIMITS.max_elements, show_default=True,
              callback=_positive, help="Refuse models with more activation elements per sample (all layers).")
@click.option("--max-classes", type=int, default=DEFAULT_LIMITS.max_classes, show_default=True,
              callback=_positive, help="Refuse datasets and models with more classes.")
@click.option("--max-work", type=float, default=DEFAULT_LIMITS.max_work, show_default=True, callback=_positive,
              help="Refuse runs whose samples x activation elements per sample exceed this.")
@click.option("--time-budget", type=float, default=TIME_BUDGET_S, show_default=True, callback=_positive,
              help="Seconds for the whole verification (each shard's own); the samples not done by then are "
                   "reported unknown.")
def verify(paths, eps, dataset, data_root, split, n, method, time_limit, min_vra, report, junit, export_vnnlib,
           check, check_time_limit, allow_empty, trust_artifact_paths, max_elements, max_classes, max_work,
           time_budget, eps_sweep=None, device="auto", shard=None, merge=False, kernels="reference"):
    """Certify ARTIFACT (model.onnx, model_int8.tflite or checkpoint.pt) against L-inf attacks.

    Every sample ends verified (proved for the whole eps-ball), falsified (a counterexample
    the artifact's own runtime confirms) or unknown. The table shows the ladder
    verified <= exact <= attack-robust."""
    limits = Limits(max_elements, max_classes, max_work)
    if merge:
        sys.exit(_merge(paths, report, min_vra, junit, limits, check, shard))
    if len(paths) > 1:
        raise click.UsageError("give one ARTIFACT (several files only with --merge)")
    artifact = paths[0] if paths else None
    if check:
        from verisparse.verify.check import check as check_certificate
        sys.exit(check_certificate(check, artifact, dataset, data_root, allow_empty, trust_artifact_paths,
                                   check_time_limit, limits))
    if artifact is None:
        raise click.UsageError("give an ARTIFACT to verify, or --check CERT.json")
    from verisparse.verify import shard as sharding
    part = sharding.parse(shard) if shard else None
    if part and (eps_sweep or export_vnnlib):
        raise click.UsageError("--shard does not combine with --eps-sweep or --export-vnnlib; run those unsharded")
    distributed = part == "auto"
    if distributed:
        part = sharding.from_torchrun()
        sharding.init_group(time_budget + 1800)  # loading, plus the slowest rank's whole budget
    try:
        _verify(artifact, eps, dataset, data_root, split, n, method, time_limit, min_vra, report, junit,
                export_vnnlib, trust_artifact_paths, limits, time_budget, eps_sweep, device, part, distributed,
                kernels)
    finally:
        if distributed:
            sharding.close_group()


def _verify(artifact, eps, dataset, data_root, split, n, method, time_limit, min_vra, report, junit, export_vnnlib,
            trust_artifact_paths, limits, time_budget, eps_sweep, device, part, distributed, kernels="reference"):
    """Verify (the whole selection, or the shard part = (I, N)); exits with the verdict."""
    from verisparse.verify import certificate
    from verisparse.verify import shard as sharding
    from verisparse.verify.artifact import load_artifact
    from verisparse.verify.samples import dataset_name, load_split
    art = load_artifact(artifact, limits, trust_paths=trust_artifact_paths, user_dataset=dataset, kernels=kernels)
    dev = _resolve_device(art, device)
    if distributed and dev == "cuda":  # one GPU per rank on a multi-GPU node
        import torch
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    defaults = _run_defaults(art)
    eps = eps if eps is not None else _default_eps(art, defaults)
    name = dataset_name(dataset, defaults.get("dataset"), f"{art.path}", trust_artifact_paths)
    info, x, y = load_split(art, name, defaults.get("seed", 0), data_root, split, n, limits)
    method_used = _resolve_method(art, method)
    from verisparse.verify import eps_sweep as sweep_mod
    radii = sweep_mod.parse(eps_sweep) if eps_sweep else None
    start, stop = sharding.slice_of(len(y), art.chunk, *part) if part else (0, len(y))
    if not report:
        report = _default_report(art)
        if part and not distributed:  # a shard never takes the run's certificate name
            if report is None:
                raise VeriSparseError(f"{art.path} is not in a run directory: pass --report for the shard's "
                                      "certificate")
            report = sharding.report_name(report, *part)
    t0 = time.perf_counter()
    results = art.verify(x[start:stop], y[start:stop], eps, method_used, time_limit=time_limit,
                         time_budget=time_budget, offset=start, device=dev)
    cert = certificate.build(art, info, eps, method, time_limit, results, min_vra, time.perf_counter() - t0)
    cert["method_resolved"], cert["device"] = method_used, dev
    if part:
        cert["shard"] = sharding.record(*part, start, stop, len(y), art.chunk)
    if radii:
        # The complete stages may spend --time-limit on every open sample at every radius (the int8
        # branch and bound took minutes per radius on the default run); the curve's other radii take
        # the bound-and-attack cascade, the anchor keeps the full method.
        sweep_method = "crown" if method_used in ("auto", "bab", "milp") else method_used
        cert["eps_sweep"], cert["eps_sweep_certified_radius"] = sweep_mod.sweep(
            art, x, y, radii, eps, results, sweep_method, time_limit, dev)
        cert["eps_sweep_method"] = sweep_method
    if distributed:
        cex = {r.index: r.counterexample for r in results if r.counterexample is not None}
        click.echo(f"rank {part[0]}: certified samples {start}..{stop - 1} of {len(y)}", err=True)
        merged, passed = sharding.gather_and_merge(cert, cex, min_vra, art.path.absolute())
        if merged is None:
            sys.exit(0 if passed else 1)
        cert, cex = merged
        if report:
            certificate.write_with_counterexamples(report, cert, cex)
    elif report:
        certificate.write(report, cert, results)
    if junit:
        certificate.write_junit(junit, cert)
    if export_vnnlib:
        from verisparse.verify import vnnlib
        from verisparse.verify.bounds import input_box
        x_l, x_u = input_box(x, eps)
        count = vnnlib.export(export_vnnlib, art, x_l.numpy(), x_u.numpy(), y.numpy(), range(len(y)),
                              time_limit, eps)
        click.echo(f"wrote {count} VNN-LIB instances to {export_vnnlib}")
    if part and not distributed:
        click.echo(f"shard {part[0]}/{part[1]}: samples {start}..{stop - 1} of {len(y)} (merge the shards with "
                   "`verisparse verify --merge`)")
    click.echo(certificate.table(cert))
    if report:
        click.echo(f"certificate: {report}")
    sys.exit(0 if cert["summary"]["passed"] else 1)


def _merge(paths, report, min_vra, junit, limits, check, shard):
    from verisparse.verify import certificate
    from verisparse.verify.shard import merge_files
    if check or shard:
        raise click.UsageError("--merge does not combine with --check or --shard")
    if not report:
        raise click.UsageError("--merge needs --report CERT.json for the merged certificate")
    artifacts = [p for p in paths if not str(p).endswith(".json")]
    if len(artifacts) > 1:
        raise click.UsageError(f"--merge takes shard .json files and at most one ARTIFACT; got {len(artifacts)} "
                               "files that are not .json")
    shards = [p for p in paths if str(p).endswith(".json")]
    cert = merge_files(shards, report, min_vra, artifacts[0] if artifacts else None, limits)
    if junit:
        certificate.write_junit(junit, cert)
    click.echo(certificate.table(cert))
    click.echo(f"certificate: {report} (merged from {len(shards)} shards)")
    return 0 if cert["summary"]["passed"] else 1


def _resolve_device(art, device):
    from verisparse.trainer.train import resolve_device
    dev = resolve_device(device).type
    if dev not in art.devices:
        if device == "auto":
            return "cpu"
        raise VeriSparseError(f"a {art.kind} artifact is verified on the CPU ({art.kind} bounds are integer "
                              "arithmetic); drop --device cuda")
    return dev


def _run_defaults(art):
    """dataset/eps/seed as recorded by the artifact, or by the run directory it sits in."""
    from verisparse.files import read_json
    d = {k: art.metadata[k] for k in ("dataset", "eps", "seed") if k in art.metadata}
    cfg = art.path.parent / "config.json"
    if cfg.is_file():
        try:
            c = read_json(cfg)
            for k in ("dataset", "eps", "seed"):
                d.setdefault(k, c.get(k))
        except (OSError, ValueError):
            pass  # a run directory's config is a convenience here, never required
    return {k: v for k, v in d.items() if v is not None}


def _default_eps(art, defaults):
    try:
        eps = float(defaults["eps"])
    except (KeyError, TypeError, ValueError):
        raise VeriSparseError(f"{art.path} does not record an eps; pass --eps") from None
    if not 0 < eps <= 1:
        raise VeriSparseError(f"{art.path} records eps {eps}, outside (0, 1]; pass --eps")
    return eps


def _resolve_method(art, method):
    if method not in art.methods:
        raise VeriSparseError(f"--method {method} is not available for a {art.kind} artifact; "
                              f"choose one of {', '.join(art.methods)}")
    return method


def _default_report(art):
    if not (art.path.parent / "config.json").is_file():
        return None
    name = "certificate.json" if art.path.name == "model.onnx" else f"certificate_{art.path.stem}.json"
    return art.path.parent / name
