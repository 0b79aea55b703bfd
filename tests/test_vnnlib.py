"""VNN-LIB text: every bound reads back as the exact number (other verifiers parse these files)."""
import re

import numpy as np
import pytest

from verisparse.verify.vnnlib import property_text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bounds_are_plain_numbers_that_read_back_exactly(dtype):
    rng = np.random.default_rng(0)
    lo = rng.random(12).astype(dtype)
    hi = np.minimum(lo + dtype(0.1), dtype(1.0))
    text = property_text(lo, hi, 3, 10)
    got = re.findall(r"\(assert \((>=|<=) X_(\d+) (\S+)\)\)", text)
    assert len(got) == 24
    for op, k, num in got:
        assert re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", num), num  # no np.float64(...) wrappers
        want = (lo if op == ">=" else hi)[int(k)]
        assert float(num) == float(want)
    assert text.count("(and (>= Y_") == 9 and "Y_3))" in text
