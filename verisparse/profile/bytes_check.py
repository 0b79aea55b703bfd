"""The bytes check: do this machine's runtimes compute the int8 arithmetic that was verified?

The certificate and the firmware are held to the TFLite reference integer kernels (LiteRT's
BUILTIN_REF = TFLM = the firmware, proven byte for byte at `verisparse firmware --run`). Here
the reference kernels run on the run's test vectors on this machine, and every other LiteRT
configuration is compared with them; XNNPACK may round some outputs 1 LSB differently."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from verisparse.files import read_json, sha256_file

from . import runtimes
from .artifacts import Artifact

DEFAULT_VECTORS = 200


def _firmware_vectors(run_dir: Path, sha: str, shape) -> np.ndarray | None:
    """The vectors `verisparse firmware` embedded (and proved the firmware on), when they were
    made for this very model."""
    fw = run_dir / "firmware"
    c, meta = fw / "vs_vectors.c", fw / "firmware.json"
    if not (c.exists() and meta.exists()):
        return None
    try:
        if read_json(meta)["source"]["sha256"] != sha:
            return None
        body = c.read_text().split("{", 1)[1].split("}", 1)[0]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    v = np.array([int(t) for t in re.findall(r"-?\d+", body)], np.int8)
    size = int(np.prod(shape))
    return v.reshape(-1, *shape) if v.size and v.size % size == 0 else None


def test_vectors(art: Artifact, shape, scale, zero_point, n=DEFAULT_VECTORS) -> tuple[np.ndarray, str]:
    """(vectors, where they come from): the run's firmware vectors, else extremes plus the run's
    first test images where the full toolchain can load its dataset, else extremes plus seeded
    random inputs."""
    from verisparse.firmware.vectors import make_vectors

    if art.run_dir is not None:
        v = _firmware_vectors(art.run_dir, hashlib.sha256(art.data).hexdigest(), shape)
        if v is not None:
            return v[:n], "the run's firmware test vectors (firmware/vs_vectors.c)"
        try:
            return make_vectors(n, shape, scale, zero_point, art.run_dir), "extremes, the run's test images, random"
        except ImportError:  # the light install cannot load datasets
            pass
    return make_vectors(n, shape, scale, zero_point), "extremes and seeded random int8 inputs"


def _outputs(session, vectors) -> np.ndarray:
    return np.stack([np.array(session.run(q[None]), np.int8).ravel() for q in vectors])


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """How far `got` is from the reference outputs `ref` (vectors x logits, int8). A changed
    class is listed with the reference's margin between the two classes: outputs off by at most
    k LSB can only swap classes whose reference logits were within 2k (a tie is margin 0)."""
    d = got.astype(np.int16) - ref.astype(np.int16)
    off = d != 0
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    changed = np.nonzero(ref_top != got_top)[0]
    at = [dict(vector=int(i), reference_class=int(ref_top[i]), got_class=int(got_top[i]),
               reference_margin_lsb=int(ref[i, ref_top[i]]) - int(ref[i, got_top[i]])) for i in changed]
    return dict(identical=not off.any(), differing_outputs=int(off.sum()), outputs=int(d.size),
                differing_vectors=int(off.any(axis=1).sum()), max_lsb=int(np.abs(d).max()) if d.size else 0,
                class_changes=len(at), class_changes_at=at)


def _certificate(art: Artifact) -> dict | None:
    if art.run_dir is None:
        return None
    p = art.run_dir / f"certificate_{art.path.stem}.json"
    if not p.exists():
        return None
    try:
        c = read_json(p)
        covered = c["artifact"]["sha256"] == sha256_file(art.path)
        summary = c.get("summary", {})
    except (OSError, ValueError, KeyError, TypeError):
        return dict(file=p.name, covers_this_model=False, note="unreadable certificate")
    return dict(file=p.name, covers_this_model=covered, eps=c.get("eps"),
                verified_accuracy=summary.get("verified_accuracy"))


def check(art: Artifact, threads: list[int], with_xnnpack: bool, n=DEFAULT_VECTORS) -> dict:
    """Reference-kernel outputs on the test vectors, and LiteRT's default kernels (XNNPACK) at
    each thread count compared with them."""
    ref_session = runtimes.load("litert-ref", art.data, 1)
    if ref_session.input_dtype != np.int8:
        return dict(skipped="the model's input is not int8 (the bytes check is for full-int8 models)")
    q = ref_session.inp["quantization"]
    vectors, source = test_vectors(art, ref_session.input_shape[1:], q[0], q[1], n)
    ref = _outputs(ref_session, vectors)
    out = dict(vectors=len(vectors), vectors_source=source,
               vectors_sha256=hashlib.sha256(vectors.tobytes()).hexdigest(),
               reference_outputs_sha256=hashlib.sha256(ref.tobytes()).hexdigest(),
               reference_outputs_hex=ref.tobytes().hex(), reference_classes=ref.argmax(1).tolist(),
               runtimes={})
    if with_xnnpack:
        for t in threads:
            out["runtimes"][f"litert/{t}"] = compare(ref, _outputs(runtimes.load("litert", art.data, t), vectors))
    cert = _certificate(art)
    if cert is not None:
        cert["reference_kernels_are_the_certified_arithmetic"] = cert["covers_this_model"]
        cert["runtimes_computing_it_exactly"] = ["litert-ref"] * bool(cert["covers_this_model"]) + [
            k for k, v in out["runtimes"].items() if v["identical"] and cert["covers_this_model"]]
        out["certificate"] = cert
    return out
