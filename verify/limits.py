"""Limits checked before anything large is allocated or a long run starts: a few hundred
bytes of model or dataset must not make `verisparse verify` allocate gigabytes or run for
hours. Each limit is a flag of `verisparse verify`; the defaults leave ample room for the
zoo's models on CIFAR-10 (about 0.3 M activation elements per sample).
"""
from __future__ import annotations

from dataclasses import dataclass

from verisparse.errors import VeriSparseError

CHECK_TIME_LIMIT_S = 900.0  # --check-time-limit
# --time-budget: an hour covers MILP on the open samples of a 1,000-sample default run; full
# CROWN refinement at a huge eps (every neuron unstable) would otherwise run for hours
TIME_BUDGET_S = 3600.0
# one batch's largest bound tensor (samples x specs x activation elements), about 4-8 bytes each
BATCH_ELEMENTS = 100_000_000
MAX_BATCH = 200


@dataclass(frozen=True)
class Limits:
    max_elements: int = 4_000_000  # activation elements of one sample, summed over every layer
    max_classes: int = 10_000
    max_work: float = 2e10  # samples x activation elements per sample


DEFAULTS = Limits()


def check_model(elements, num_classes, where, limits: Limits):
    if elements > limits.max_elements:
        raise VeriSparseError(f"{where} is too large: one sample needs {elements:,} activation elements over its "
                              f"layers, more than --max-elements {limits.max_elements:,}; raise it if the model is "
                              "meant to be that large")
    if num_classes > limits.max_classes:
        raise VeriSparseError(f"{where} outputs {num_classes:,} classes, more than --max-classes "
                              f"{limits.max_classes:,}; raise it if that is meant")


def check_work(samples, elements, limits: Limits):
    work = samples * elements
    if work > limits.max_work:
        raise VeriSparseError(f"{samples:,} samples x {elements:,} activation elements = {work:.3g}, more than "
                              f"--max-work {limits.max_work:.3g}; verify fewer samples (--n) or raise --max-work")


def batch_size(elements, widest, num_classes):
    """Samples per batch so that one batch's bound tensors stay within BATCH_ELEMENTS."""
    per_sample = max(elements, widest * max(num_classes, 1))
    return max(1, min(MAX_BATCH, BATCH_ELEMENTS // max(per_sample, 1)))
