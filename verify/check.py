"""`verisparse verify --check`: re-validate a certificate against its artifact.

A certificate is a claim made by whoever wrote the file. The check validates every field,
re-verifies the samples with the recorded settings, replays every counterexample on the
artifact's runtime, and re-derives the summary (counts, verified accuracy, the ladder, the
gate against min_vra) from the sample records; a claim the re-check cannot back is a FAIL.
The whole check runs under a time limit, so a certificate cannot keep CI busy.
"""
from __future__ import annotations

from pathlib import Path

import click

from verisparse.errors import VeriSparseError
from verisparse.files import sha256_file

from . import certificate
from .deadline import deadline
from .limits import CHECK_TIME_LIMIT_S, DEFAULTS

# the cascade's stages in order: a verified sample must re-verify at its stage or earlier
_ORDER = {"ibp": 0, "crown": 1, "alpha-crown": 2, "bab": 3, "milp": 4, "int8-ibp": 0, "int8-crown": 1,
          "int8-bab": 3}
_BOUND_STAGES = ("ibp", "crown", "alpha-crown", "bab")  # by _ORDER; a rank past them re-runs the method
_CHUNK = 50  # samples re-verified at a time
_FLOAT_STAGES = ("ibp", "crown", "alpha-crown", "bab", "milp")
_FAMILY = {"onnx": _FLOAT_STAGES, "checkpoint": _FLOAT_STAGES,
           "tflite": ("int8-ibp", "int8-crown", "int8-bab")}


def artifact_path(cert_path, cert, override=None):
    """The user's ARTIFACT, else the certificate's path: a relative one is resolved from the
    certificate's folder (first as written, then by file name), never from the working
    directory, so the same certificate always checks the same file."""
    if override:
        return Path(override).resolve()
    p, folder = Path(cert["artifact"]["path"]), Path(cert_path).resolve().parent
    if p.is_absolute():
        return p
    for cand in (folder / p, folder / p.name):
        if cand.is_file():
            return cand.resolve()
    return (folder / p).resolve()


def check(cert_path, artifact=None, dataset=None, data_root=None, allow_empty=False, trust_paths=False,
          time_limit=CHECK_TIME_LIMIT_S, limits=DEFAULTS):
    """0 when the certificate holds for its artifact, 1 when it does not; malformed input and
    running out of time raise VeriSparseError (exit 2)."""
    cert = certificate.validate(certificate.read(cert_path), cert_path, allow_empty)
    path = artifact_path(cert_path, cert, artifact)
    if not path.is_file():
        return _report(cert_path, path, None, [f"artifact {path} is missing"])
    digest = sha256_file(path)
    if digest != cert["artifact"]["sha256"]:
        return _report(cert_path, path, digest, ["the artifact changed: its sha256 differs from the certificate's"])
    expired = VeriSparseError(f"could not finish re-checking {cert_path} within --check-time-limit "
                              f"{time_limit:g} s; raise the limit to wait longer")
    with deadline(time_limit, expired):
        problems = _recheck(cert_path, cert, path, dataset, data_root, trust_paths, limits)
    n, verified = cert["dataset"]["n"], sum(r["status"] == "verified" for r in cert["samples"])
    return _report(cert_path, path, digest, problems, verified, n)


def _recheck(cert_path, cert, path, dataset, data_root, trust_paths, limits):
    from .artifact import load_artifact
    from .bounds import input_box
    from .samples import dataset_name, load_split
    # an int8 certificate is re-verified under the kernels it claims to cover (older ones: reference)
    kernels = cert.get("kernels", "reference") if cert["artifact"]["kind"] == "tflite" else "reference"
    art = load_artifact(path, limits, trust_paths=trust_paths, user_dataset=dataset, kernels=kernels)
    if art.kind != cert["artifact"]["kind"]:
        return [f"the certificate is for a {cert['artifact']['kind']} artifact, {path.name} is {art.kind}"]
    method = cert.get("method_resolved", cert["method"])
    if method not in art.methods:
        raise VeriSparseError(f"{cert_path}: method {method} is not available for a {art.kind} artifact")
    d = cert["dataset"]
    name = dataset_name(dataset, d["name"], f"certificate {cert_path}", trust_paths)
    info, x, y = load_split(art, name, d.get("seed", 0), data_root, d["split"], d["n"], limits)
    if info["split_sha256"] != d["split_sha256"] or info["samples_sha256"] != d["samples_sha256"]:
        return [f"dataset {d['name']} {d['split']} split differs from the one certified"]
    claims = {r["index"]: r for r in cert["samples"]}
    problems = [f"sample {i} is labelled {r['label']} in the certificate but {int(y[i])} in the dataset"
                for i, r in claims.items() if r["label"] != int(y[i])][:5]
    problems += _stage_problems(cert, art.kind)
    if problems:
        return problems
    # only proofs need re-verifying (falsified claims are settled by replaying their
    # counterexamples), a chunk at a time so that a forged certificate fails early
    # and the cheapest claims first: a stage's claims are re-verified by a cascade that stops there
    todo = sorted((i for i, r in claims.items() if r["status"] == "verified"),
                  key=lambda i: (_ORDER[claims[i]["decided_by"]], i))
    lost = []
    for part in (todo[k:k + _CHUNK] for k in range(0, len(todo), _CHUNK)):
        rank = max(_ORDER[claims[i]["decided_by"]] for i in part)
        stop = _BOUND_STAGES[rank] if rank < len(_BOUND_STAGES) else method
        results = art.verify(x[part], y[part], cert["eps"], stop, time_limit=2 * cert["time_limit_s"])
        lost += [i for i, r in zip(part, results)
                 if r.status != "verified" or _ORDER[r.decided_by] > _ORDER[claims[i]["decided_by"]]]
        if lost:
            return [f"samples certified as verified do not re-verify at the stage the certificate names "
                    f"(first: {lost[:5]}; the rest not tried)"]
    problems += _counterexample_problems(cert_path, cert, art, x, y, input_box)
    derived = certificate.derived_summary(cert)
    problems += certificate.summary_mismatches(cert["summary"], derived)
    if not derived["passed"]:
        problems.append(f"verified accuracy {derived['verified_accuracy']:.4f} is below the certificate's "
                        f"min_vra {derived['min_vra']}")
    return problems


def _stage_problems(cert, kind):
    """A verified sample must name a bound stage of this artifact's cascade that the method runs."""
    last = _ORDER.get(cert.get("method_resolved", cert["method"]), _ORDER["milp"])
    bad = [r["index"] for r in cert["samples"] if r["status"] == "verified" and
           (r["decided_by"] not in _FAMILY[kind] or _ORDER[r["decided_by"]] > last)]
    return [f"{len(bad)} samples claim verified by a stage that a {kind} artifact verified with method "
            f"{cert.get('method_resolved', cert['method'])} does not run (first: {bad[:5]})"] if bad else []


def _counterexample_problems(cert_path, cert, art, x, y, input_box):
    """Every falsified claim needs a counterexample inside the ball where the runtime's scores
    break the label (verify.float_verify.breaks: another class at least as high)."""
    from .float_verify import breaks
    cex = certificate.read_counterexamples(cert_path, cert, art.in_shape)
    status = {r["index"]: r["status"] for r in cert["samples"]}
    problems = [f"sample {i} is claimed falsified but has no counterexample"
                for i, s in status.items() if s == "falsified" and i not in cex][:5]
    problems += [f"sample {i} has a counterexample but is claimed {status.get(i, 'nothing')}"
                 for i in cex if status.get(i) != "falsified"][:5]
    x_l, x_u = input_box(x, cert["eps"])
    for i, xc in sorted(cex.items()):
        inside = (xc >= x_l[i].numpy()).all() and (xc <= x_u[i].numpy()).all()
        if not inside or not bool(breaks(art.run(xc[None]), [int(y[i])])[0]):
            problems.append(f"the counterexample for sample {i} does not break the artifact")
    return problems


def _report(cert_path, path, digest, problems, verified=None, n=None):
    what = f"artifact {path} (sha256 {digest or 'unreadable'})"
    if problems:
        for p in problems:
            click.echo(f"FAIL {cert_path}: {what}: {p}")
        return 1
    click.echo(f"OK {cert_path}: {what}: artifact hash, dataset hash, {verified}/{n} verified samples, every "
               "counterexample and the summary re-checked")
    return 0
