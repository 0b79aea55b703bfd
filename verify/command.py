"""`verisparse verify`: certify an artifact on a dataset split, or re-check a certificate.

Exit codes are CI's contract: 0 when the verified accuracy reaches --min-vra (or a
certificate re-checks), 1 when it does not, 2 for bad input (the CLI group turns a
VeriSparseError into one line and exit 2; click does the same for bad options).
Heavy imports (torch, onnx, scipy) stay inside the functions so `verisparse --help` is fast.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

METHODS = ["ibp", "crown", "milp", "auto"]


def _eps(ctx, param, value):
    if value is not None and not 0 < value <= 1:
        raise click.BadParameter(f"must be in (0, 1] (pixel space, inputs in [0, 1]); got {value}")
    return value


def _fraction(ctx, param, value):
    if not 0 <= value <= 1:
        raise click.BadParameter(f"must be a fraction in [0, 1]; got {value}")
    return value


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive; got {value}")
    return value


@click.command(epilog="""\b
Examples:
  verisparse verify runs/default/model.onnx --eps 0.1 --dataset mnist5k --method auto --min-vra 0.85
  verisparse verify runs/default/model_int8.tflite --eps 0.1 --n 200 --junit verify.xml
  verisparse verify runs/default/checkpoint.pt --method crown
  verisparse verify runs/default/model.onnx --n 50 --export-vnnlib vnncomp/
  verisparse verify --check runs/default/certificate.json
""")
@click.argument("artifact", type=click.Path(), required=False)
@click.option("--eps", type=float, default=None, callback=_eps,
              help="L-inf radius in [0, 1] pixel space [default: the eps the artifact was trained for].")
@click.option("--dataset", default=None, help="mnist5k, digits, ..., npz:PATH or csv:PATH [default: the artifact's].")
@click.option("--data-root", type=click.Path(), default=None, help="Folder with torchvision-layout datasets.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--n", "n", type=int, default=None, callback=_positive, help="Verify the first N samples of the split.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="ibp, crown, milp (complete, time-limited) or auto (the strongest the artifact supports).")
@click.option("--time-limit", type=float, default=10.0, show_default=True, callback=_positive,
              help="Seconds of MILP per sample.")
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
              help="Also verify at each of these radii; the curve goes into the certificate (key eps_sweep).")
def verify(artifact, eps, dataset, data_root, split, n, method, time_limit, min_vra, report, junit, export_vnnlib,
           check, eps_sweep=None):
    """Certify ARTIFACT (model.onnx, model_int8.tflite or checkpoint.pt) against L-inf attacks.

    Every sample ends verified (proved for the whole eps-ball), falsified (a counterexample
    the artifact's own runtime confirms) or unknown. The table shows the ladder
    verified <= exact <= attack-robust."""
    if check:
        sys.exit(_check(check, artifact, data_root))
    if artifact is None:
        raise click.UsageError("give an ARTIFACT to verify, or --check CERT.json")
    from verisparse.verify import certificate
    from verisparse.verify.artifact import load_artifact
    art = load_artifact(artifact)
    defaults = _run_defaults(art)
    eps = eps if eps is not None else _default_eps(art, defaults)
    info, x, y = _samples(art, dataset or defaults.get("dataset"), defaults.get("seed", 0), data_root, split, n)
    method_used = _resolve_method(art, method)
    from verisparse.verify import eps_sweep as sweep_mod
    radii = sweep_mod.parse(eps_sweep) if eps_sweep else None
    start = time.perf_counter()
    results = art.verify(x, y, eps, method_used, time_limit=time_limit)
    cert = certificate.build(art, info, eps, method, time_limit, results, min_vra, time.perf_counter() - start)
    cert["method_resolved"] = method_used
    if radii:
        cert["eps_sweep"], cert["eps_sweep_certified_radius"] = sweep_mod.sweep(
            art, x, y, radii, eps, results, method_used, time_limit)
    report = report or _default_report(art)
    if report:
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
    click.echo(certificate.table(cert))
    if report:
        click.echo(f"certificate: {report}")
    sys.exit(0 if cert["summary"]["passed"] else 1)


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
    from verisparse.errors import VeriSparseError
    try:
        eps = float(defaults["eps"])
    except (KeyError, TypeError, ValueError):
        raise VeriSparseError(f"{art.path} does not record an eps; pass --eps") from None
    if not 0 < eps <= 1:
        raise VeriSparseError(f"{art.path} records eps {eps}, outside (0, 1]; pass --eps")
    return eps


def _resolve_method(art, method):
    from verisparse.errors import VeriSparseError
    if method not in art.methods:
        raise VeriSparseError(f"--method {method} is not available for a {art.kind} artifact; "
                              f"choose one of {', '.join(art.methods)}")
    return method


def _samples(art, name, seed, data_root, split, n):
    from verisparse.errors import VeriSparseError
    from verisparse.trainer.datasets import load_dataset, split_hash
    if not name:
        raise VeriSparseError(f"{art.path} does not record its dataset; pass --dataset")
    ds = load_dataset(str(name), seed=int(seed), data_root=data_root)
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    if tuple(x.shape[1:]) != tuple(art.in_shape):
        raise VeriSparseError(f"dataset {ds.name} has inputs of shape {tuple(x.shape[1:])} but {art.path.name} "
                              f"expects {tuple(art.in_shape)}; pass the dataset the model was trained on")
    if ds.num_classes != art.num_classes:
        raise VeriSparseError(f"dataset {ds.name} has {ds.num_classes} classes but {art.path.name} outputs "
                              f"{art.num_classes} scores")
    info = dict(name=ds.name, split=split, seed=int(seed), split_size=len(y), split_sha256=split_hash(x, y))
    if n is not None:
        x, y = x[:n], y[:n]
    info.update(n=len(y), samples_sha256=split_hash(x, y))
    return info, x, y


def _default_report(art):
    if not (art.path.parent / "config.json").is_file():
        return None
    name = "certificate.json" if art.path.name == "model.onnx" else f"certificate_{art.path.stem}.json"
    return art.path.parent / name


def _check(cert_path, artifact_override, data_root):
    """0 when the certificate still holds for its artifact, 1 when it does not."""
    import numpy as np

    from verisparse.files import sha256_file
    from verisparse.verify import certificate
    from verisparse.verify.artifact import load_artifact
    cert = certificate.read(cert_path)
    path = Path(artifact_override or cert["artifact"]["path"])
    if not path.is_file() and not path.is_absolute():
        path = Path(cert_path).parent / path.name  # the certificate travelled with its artifact
    problems = []
    if not path.is_file():
        problems.append(f"artifact {path} is missing")
    elif sha256_file(path) != cert["artifact"]["sha256"]:
        problems.append(f"artifact {path} changed: sha256 differs from the certificate's")
    if problems:
        return _report_check(cert_path, problems)
    art = load_artifact(path)
    d = cert["dataset"]
    info, x, y = _samples(art, d["name"], d.get("seed", 0), data_root, d["split"], d["n"])
    if info["split_sha256"] != d["split_sha256"] or info["samples_sha256"] != d["samples_sha256"]:
        problems.append(f"dataset {d['name']} {d['split']} split differs from the one certified")
        return _report_check(cert_path, problems)
    old = {r["index"]: r for r in cert["samples"]}
    if sorted(old) != list(range(len(y))):
        problems.append("the certificate's sample list is not the first N samples of the split")
        return _report_check(cert_path, problems)
    results = art.verify(x, y, cert["eps"], cert.get("method_resolved", cert["method"]),
                         time_limit=2 * cert["time_limit_s"])
    lost = [r.index for r in results if old[r.index]["status"] == "verified" and r.status != "verified"]
    if lost:
        problems.append(f"{len(lost)} samples certified as verified no longer verify (first: {lost[:5]})")
    cex = certificate.read_counterexamples(cert_path, cert)
    from verisparse.verify.bounds import input_box
    x_l, x_u = input_box(x, cert["eps"])
    for i, xc in cex.items():
        inside = (xc >= x_l[i].numpy()).all() and (xc <= x_u[i].numpy()).all()
        if not inside or int(np.argmax(art.run(xc[None])[0])) == int(y[i]):
            problems.append(f"the counterexample for sample {i} does not break the artifact")
    claimed = cert["summary"]["verified"]
    if claimed != sum(1 for r in cert["samples"] if r["status"] == "verified"):
        problems.append("the summary's verified count does not match its samples")
    return _report_check(cert_path, problems, claimed, len(y))


def _report_check(cert_path, problems, verified=None, n=None):
    if problems:
        for p in problems:
            click.echo(f"FAIL {cert_path}: {p}")
        return 1
    click.echo(f"OK {cert_path}: artifact hash, dataset hash, {verified}/{n} verified samples "
               f"and every counterexample re-checked")
    return 0
