"""A user's npz / csv dataset is refused with a clear VeriSparseError when its arrays do not
describe one labelled dataset, instead of training on part of it or raising a traceback."""
import numpy as np
import pytest

from verisparse.errors import VeriSparseError
from verisparse.trainer.datasets import load_dataset

rng = np.random.default_rng(0)
GOOD = dict(x_train=rng.random((40, 6)), y_train=np.arange(40) % 3, x_test=rng.random((9, 6)),
            y_test=np.arange(9) % 3)


@pytest.mark.parametrize("change,match", [
    (dict(x_train=rng.random((200, 6)), y_train=np.arange(100) % 3), "200 train samples but 100 train labels"),
    (dict(y_test=np.arange(8) % 3), "9 test samples but 8 test labels"),
    (dict(x_test=rng.random((9, 5))), "same features"),
    (dict(x_train=np.float64(0.5)), "array of samples"),
    (dict(y_train=np.int64(1)), "1-D array"),
    (dict(x_train=np.zeros((0, 6)), y_train=np.zeros(0, int)), "non-empty|empty"),
    (dict(x_train=np.zeros((40, 0))), "empty"),
    (dict(y_train=-(np.arange(40) % 3)), ">= 0"),
    (dict(y_train=np.full(40, np.nan)), "integers"),
    (dict(y_train=np.array(["a"] * 40)), "integers"),
    (dict(x_train=np.array([["a"] * 6] * 40)), "real numbers"),
    (dict(x_train=np.full((40, 6), np.nan)), "finite"),
    (dict(x_test=np.full((9, 6), 1.5)), "in \\[0, 1\\]"),
    (dict(classes=np.array("abc")), "classes"),
])
def test_inconsistent_npz_is_refused(tmp_path, change, match):
    p = tmp_path / "d.npz"
    np.savez(p, **dict(GOOD, **change))
    with pytest.raises(VeriSparseError, match=match):
        load_dataset(f"npz:{p}")


def test_xy_npz_rows_must_match(tmp_path):
    p = tmp_path / "xy.npz"
    np.savez(p, x=rng.random((200, 4)), y=np.arange(100) % 2)
    with pytest.raises(VeriSparseError, match="200 samples but 100 labels"):
        load_dataset(f"npz:{p}")


def test_binary_csv_is_refused(tmp_path):
    c = tmp_path / "d.csv"
    c.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(VeriSparseError, match="not a text csv"):
        load_dataset(f"csv:{c}")
