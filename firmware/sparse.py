"""Compressed storage for convolution weights, and the choice between it and dense.

Layout (read by vs_conv2d_sparse): for each output channel a uint16 count of entries over
its flattened (ky, kx, ic) filter; each entry is a uint8 step from the previous entry (the
first from position 0) and an int8 value. A step over 255 is split with zero-valued
entries, which add nothing to the sum. At 90% sparsity this is about 2 bytes per non-zero
weight plus 2 bytes per output channel, against 10 bytes of dense weights."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SparseWeights:
    count: np.ndarray  # uint16 [out_c]
    delta: np.ndarray  # uint8 [entries]
    value: np.ndarray  # int8 [entries]

    @property
    def nbytes(self) -> int:
        return self.count.nbytes + self.delta.nbytes + self.value.nbytes

    @property
    def index_bytes(self) -> int:
        """Bytes that are not non-zero weights: counts, steps and the split entries' zeros."""
        return self.nbytes - int(np.count_nonzero(self.value))


def encode(w: np.ndarray) -> SparseWeights | None:
    """w: int8 [out_c, ...]. None when a channel would need more than 65535 entries."""
    counts, deltas, values = [], [], []
    for row in w.reshape(w.shape[0], -1):
        n, prev = 0, 0
        for c in np.flatnonzero(row):
            step = int(c) - prev
            while step > 255:
                deltas.append(255)
                values.append(0)
                step -= 255
                n += 1
            deltas.append(step)
            values.append(int(row[c]))
            prev = int(c)
            n += 1
        if n > 0xFFFF:
            return None
        counts.append(n)
    return SparseWeights(np.array(counts, np.uint16), np.array(deltas, np.uint8), np.array(values, np.int8))


def choose(w: np.ndarray) -> SparseWeights | None:
    """The sparse form when it is smaller than the dense int8 weights, else None (dense)."""
    if np.count_nonzero(w) * 2 >= w.size:  # cannot win: every non-zero costs 2 bytes
        return None
    s = encode(w)
    return s if s is not None and s.nbytes < w.size else None
