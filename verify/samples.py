"""The dataset split a verification runs on, and which dataset names it may open.

A dataset named inside an artifact's metadata, a run's config or a certificate comes from
whoever made that file: a built-in name is harmless, but npz:/csv: paths there could point
anywhere on the disk, so they are opened only when the user says so.
"""
from __future__ import annotations

from verisparse.errors import VeriSparseError

from .limits import DEFAULTS, check_work

FILE_DATASETS = ("npz:", "csv:")


def dataset_name(given, recorded, source, trust_paths=False):
    """The dataset to load: the user's --dataset, else the one `source` records."""
    if given:
        return given
    if not recorded:
        raise VeriSparseError(f"{source} does not record its dataset; pass --dataset")
    name = str(recorded)
    if name.startswith(FILE_DATASETS) and not trust_paths:
        shown = name if len(name) <= 200 else name[:200] + "..."
        raise VeriSparseError(f"{source} names the file dataset {shown!r}; files named inside an artifact or "
                              "certificate are not opened unless you say so: pass --dataset with that path "
                              "(after checking it) or --trust-artifact-paths")
    return name


def load_split(art, name, seed, data_root, split, n, limits=DEFAULTS):
    """(dataset info for the certificate, x, y): the first n samples of the split."""
    from verisparse.trainer.datasets import load_dataset, split_hash
    try:
        ok = 0 <= int(seed) < 2 ** 63
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise VeriSparseError(f"the recorded seed {str(seed)[:40]!r} is not a non-negative integer; check the "
                              "run's settings")
    seed = int(seed)
    ds = load_dataset(name, seed=seed, data_root=data_root, max_classes=limits.max_classes)
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    if tuple(x.shape[1:]) != tuple(art.in_shape):
        raise VeriSparseError(f"dataset {ds.name} has inputs of shape {tuple(x.shape[1:])} but {art.path.name} "
                              f"expects {tuple(art.in_shape)}; pass the dataset the model was trained on")
    if ds.num_classes != art.num_classes:
        raise VeriSparseError(f"dataset {ds.name} has {ds.num_classes} classes but {art.path.name} outputs "
                              f"{art.num_classes} scores")
    info = dict(name=ds.name, split=split, seed=seed, split_size=len(y), split_sha256=split_hash(x, y))
    if n is not None:
        x, y = x[:n], y[:n]
    check_work(len(y), art.elements, limits)
    info.update(n=len(y), samples_sha256=split_hash(x, y))
    return info, x, y
