"""Timing one runtime on one model: load, first inference, then --runs timed inferences after
--warmup, and the process's peak resident memory over all of it."""
from __future__ import annotations

import resource
import sys
import time

import numpy as np

from . import runtimes


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM when 5 is written to clear_refs; then each row's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def percentiles(ms: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return dict(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), max_ms=float(ms.max()),
                mean_ms=float(ms.mean()), inferences_per_s=float(1000.0 / ms.mean()))


def measure(runtime: str, data: bytes, threads: int, x: np.ndarray, warmup: int, runs: int, progress=None) -> dict:
    """x: one input of the runtime's shape and dtype."""
    own_peak = _reset_peak_rss()
    t0 = time.perf_counter()
    session = runtimes.load(runtime, data, threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    session.run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        session.run(x)
    ms = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        session.run(x)
        ms[i] = (time.perf_counter() - t0) * 1e3
        if progress:
            progress(1)
    # without a reset the peak covers the whole process so far (the earlier rows included)
    return dict(runtime=runtime, threads=threads, load_ms=load_ms, first_inference_ms=first_ms,
                warmup=warmup, runs=runs, **percentiles(ms), peak_rss_mib=_peak_rss_mib(),
                peak_rss_scope="row" if own_peak else "process")
