"""Run-directory files, written atomically: a reader sees the old file or the new one,
never half of one (a killed run loses at most the epoch in flight)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def atomic_write(path, write_fn, mode="wb"):
    """Write through write_fn(file) to a temporary file beside path, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def _json_line(record):
    # NaN and Infinity are not JSON: a reader of the log must be able to parse every line.
    return json.dumps(record, sort_keys=True, allow_nan=False) + "\n"


def write_jsonl(path, records):
    atomic_write(path, lambda f: f.writelines(_json_line(r) for r in records), mode="w")


def read_jsonl(path):
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(_json_line(record))
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
