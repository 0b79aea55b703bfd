"""Sharded verification: N processes, machines or CI jobs each certify a contiguous slice of
the selected samples (`verisparse verify ... --shard I/N`), and `verify --merge` joins their
certificates into the certificate of the whole run. Under torchrun, `--shard auto` does both
in one job: rank I certifies slice I of WORLD_SIZE, rank 0 gathers (gloo) and merges.

Shards are numbered 0..N-1, like torchrun's ranks. A slice is a run of whole chunks of the
artifact (verify.artifact.chunk_size: the samples verified together, sharing a bound batch
and an attack's random stream), the chunks spread as evenly as they go; so every sample is
verified exactly as in the unsharded run and the merged verdicts are that run's. A shard
file is a claim like any certificate: the merge validates each one and refuses overlaps,
gaps and shards of another artifact, eps, method or setting, before writing anything.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import time
from pathlib import Path

from verisparse.errors import VeriSparseError

from . import certificate

_SPEC = re.compile(r"(\d{1,6})/(\d{1,6})")
# what every shard of one run shares: a merge of shards that differ here is refused
_SAME = ("artifact.sha256", "artifact.kind", "dataset", "eps", "method", "method_resolved", "time_limit_s",
         "device", "kernels", "tool.version", "shard.count", "shard.total", "shard.chunk")


def parse(text):
    """'I/N' -> (I, N) with 0 <= I < N; 'auto' -> 'auto' (torchrun's RANK / WORLD_SIZE)."""
    if text == "auto":
        return "auto"
    m = _SPEC.fullmatch(text.strip())
    if not m:
        raise VeriSparseError(f"--shard {text[:40]!r}: write I/N, shards numbered 0..N-1 (0/4, 1/4, 2/4, 3/4), "
                              "or auto under torchrun")
    i, n = int(m[1]), int(m[2])
    if not 1 <= n <= certificate.MAX_SHARDS:
        raise VeriSparseError(f"--shard {text}: the number of shards must be in 1..{certificate.MAX_SHARDS}")
    if i >= n:
        raise VeriSparseError(f"--shard {text}: shards are numbered 0..{n - 1} (the first is 0/{n}, the last "
                              f"{n - 1}/{n})")
    return i, n


def from_torchrun():
    """(rank, world size) from the environment torchrun sets."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise VeriSparseError("--shard auto takes its shard from torchrun's RANK and WORLD_SIZE, which are not "
                              "set: launch `torchrun --nproc-per-node N -m verisparse verify ... --shard auto`, "
                              "or pass --shard I/N") from None
    if not 0 <= rank < world <= certificate.MAX_SHARDS:
        raise VeriSparseError(f"RANK {rank} / WORLD_SIZE {world} from the environment are not a shard")
    return rank, world


def slice_of(total, chunk, i, n):
    """[start, stop) of shard i of n over total samples, in whole chunks."""
    chunks = -(-total // chunk)
    return min(i * chunks // n * chunk, total), min((i + 1) * chunks // n * chunk, total)


def record(i, n, start, stop, total, chunk):
    """The shard record a shard's certificate carries (certificate.validate checks it)."""
    return dict(index=i, count=n, start=start, stop=stop, total=total, chunk=chunk)


def _get(cert, dotted):
    v = cert
    for k in dotted.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    if dotted == "method_resolved" and v is None:
        return cert["method"]
    if dotted == "device" and v is None:
        return "cpu"
    return v


def _finite(v, where, field):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise VeriSparseError(f"{where}: {field} must be a non-negative number; the shard is malformed")
    return float(v)


def merge(shards, min_vra, artifact_path):
    """shards: [(name, validated shard certificate, {sample index: counterexample})].
    Returns (certificate of the whole run, its counterexamples); raises VeriSparseError
    for shards that are not exactly one run's slices."""
    if not shards:
        raise VeriSparseError("--merge needs the shard certificates (verify --shard I/N --report ...)")
    for name, cert, _ in shards:
        if "shard" not in cert:
            raise VeriSparseError(f"{name} is not a shard certificate (it has no shard record); merge the files "
                                  "that `verisparse verify --shard I/N` writes")
    first_name, first, _ = shards[0]
    for name, cert, _ in shards[1:]:
        for field in _SAME:
            a, b = _get(first, field), _get(cert, field)
            if a != b:
                show = lambda v: repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
                raise VeriSparseError(f"{name} differs from {first_name} in {field} ({show(b)} vs {show(a)}): "
                                      "shards of one certificate must verify the same artifact, samples and settings")
    n_shards, total, chunk = (first["shard"][k] for k in ("count", "total", "chunk"))
    by_index = {}
    for name, cert, _ in shards:
        i = cert["shard"]["index"]
        if i in by_index:
            raise VeriSparseError(f"shard {i}/{n_shards} is given twice ({by_index[i][0]} and {name}); "
                                  "pass each shard once")
        by_index[i] = (name, cert)
    ordered = sorted(by_index.values(), key=lambda nc: (nc[1]["shard"]["start"], nc[1]["shard"]["stop"]))
    covered = 0
    for name, cert in ordered:
        start, stop = cert["shard"]["start"], cert["shard"]["stop"]
        if start < covered:
            raise VeriSparseError(f"{name} overlaps another shard: samples {start}..{min(stop, covered) - 1} "
                                  "are in both; pass shards of one --shard I/N split")
        if start > covered:
            raise VeriSparseError(f"samples {covered}..{start - 1} of {total} are in no shard given (missing "
                                  f"before {name}); run and pass the missing shards")
        covered = stop
    if covered < total:
        raise VeriSparseError(f"samples {covered}..{total - 1} of {total} are in no shard given; run and pass the "
                              "missing shards")
    for i, (name, cert) in sorted(by_index.items()):
        want = slice_of(total, chunk, i, n_shards)
        if (cert["shard"]["start"], cert["shard"]["stop"]) != want:
            raise VeriSparseError(f"{name} says it is shard {i}/{n_shards} but holds samples "
                                  f"{cert['shard']['start']}..{cert['shard']['stop'] - 1}, not the slice "
                                  f"{want[0]}..{want[1] - 1} that split gives it")
    missing = sorted(set(range(n_shards)) - set(by_index))
    if missing:  # only empty shards can be missing once every sample is covered
        raise VeriSparseError(f"shards {missing[:10]} of {n_shards} are missing (they hold no samples); pass every "
                              "shard's certificate")
    records, cex, walls = [], {}, []
    for name, cert, shard_cex in shards:
        problems = certificate.summary_mismatches(cert["summary"], certificate.derived_summary(cert))
        if problems:
            raise VeriSparseError(f"{name}: {problems[0]}; the shard is malformed")
        own = {r["index"] for r in cert["samples"]}
        stray = sorted(set(shard_cex) - own)
        if stray:
            raise VeriSparseError(f"{name} has counterexamples for samples {stray[:5]} outside its slice")
        for r in cert["samples"]:
            _finite(r.get("seconds"), name, f"samples[index {r['index']}].seconds")
        walls.append(_finite(cert.get("wall_seconds"), name, "wall_seconds"))
        records += cert["samples"]
        cex.update(shard_cex)
    records.sort(key=lambda r: r["index"])
    tool = first.get("tool") if isinstance(first.get("tool"), dict) else {}
    merged = dict(
        format=certificate.FORMAT,
        tool={k: str(tool[k])[:100] for k in ("name", "version", "python") if k in tool},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        artifact=dict(path=str(artifact_path), kind=first["artifact"]["kind"], sha256=first["artifact"]["sha256"]),
        dataset=first["dataset"], eps=first["eps"], method=first["method"], time_limit_s=first["time_limit_s"],
        summary=certificate.summarize([_Record(r) for r in records], min_vra),
        wall_seconds=round(max(walls), 3),  # the shards ran side by side
        samples=records, method_resolved=_get(first, "method_resolved"), device=_get(first, "device"),
        **({"kernels": first["kernels"]} if "kernels" in first else {}),
        merged_from=dict(shards=n_shards, chunk=chunk, slices=[
            dict(index=c["shard"]["index"], start=c["shard"]["start"], stop=c["shard"]["stop"],
                 wall_seconds=round(float(c["wall_seconds"]), 3)) for _, c in ordered]))
    return merged, cex


class _Record:
    def __init__(self, r):
        self.status, self.decided_by, self.seconds = r["status"], r["decided_by"], float(r["seconds"])


def merge_files(paths, report, min_vra, artifact=None, limits=None):
    """`verify --merge`: read and validate the shard files, merge, write report (and the
    counterexamples beside it); returns the merged certificate."""
    from verisparse.files import sha256_file

    from .check import artifact_path
    from .limits import DEFAULTS
    shards = []
    for p in paths:
        cert = certificate.validate(certificate.read(p), p, allow_empty=True)
        shards.append([str(p), cert, None])
    if not shards:
        raise VeriSparseError("--merge needs the shard certificates (verify --shard I/N --report ...)")
    first_path, first = shards[0][0], shards[0][1]
    path = artifact_path(first_path, first, artifact)
    if not path.is_file():
        raise VeriSparseError(f"the shards' artifact {path} is not there; pass it: "
                              "verisparse verify ARTIFACT --merge SHARD.json ... --report CERT.json")
    if sha256_file(path) != first["artifact"]["sha256"]:
        raise VeriSparseError(f"{path} is not the artifact {first_path} certifies (its sha256 differs)")
    in_shape = None
    if any(c.get("counterexamples") for _, c, _ in shards):  # their shape is the artifact's
        from .artifact import load_artifact
        in_shape = load_artifact(path, limits or DEFAULTS).in_shape
    for s in shards:
        s[2] = certificate.read_counterexamples(s[0], s[1], in_shape) if s[1].get("counterexamples") else {}
    cert, cex = merge([tuple(s) for s in shards], min_vra, path.absolute())
    certificate.write_with_counterexamples(report, cert, cex)
    return cert


def report_name(default, i, n):
    """Where a shard's certificate goes when --report is not given: beside the default one."""
    p = Path(default)
    return p.with_name(f"{p.stem}.shard-{i}-of-{n}.json")


# --- one torchrun job: every rank a shard, rank 0 merges ----------------------------------

def init_group(timeout_s):
    """gloo carries the few certificates; timeout_s covers the slowest rank's verification."""
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise VeriSparseError(f"torch.distributed could not start under torchrun: {str(e)[:200]}") from None


def gather_and_merge(cert, cex, min_vra, artifact_path):
    """Every rank passes its shard; rank 0 gets (merged certificate, counterexamples), the
    others None. All ranks then learn whether the merged result passed: (result, passed)."""
    import torch.distributed as dist
    rank, world = dist.get_rank(), dist.get_world_size()
    parts = [None] * world if rank == 0 else None
    dist.gather_object((cert, cex), parts, dst=0)
    out, flag = None, [None]
    if rank == 0:
        shards = [(f"rank {r}", certificate.validate(c, f"rank {r}", allow_empty=True), x)
                  for r, (c, x) in enumerate(parts)]
        out = merge(shards, min_vra, artifact_path)
        flag = [out[0]["summary"]["passed"]]
    dist.broadcast_object_list(flag, src=0)
    return out, flag[0]


def close_group():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
