"""The training side of a run directory: config.json and train_log.jsonl read back with
checks, and the decision whether a directory starts a run, resumes one, or is refused.

A run killed in its first epoch leaves config.json and an empty log but no checkpoint:
nothing trained is lost by starting it again, so that is allowed. A directory whose
checkpoint or log holds epochs is never overwritten."""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from verisparse.errors import VeriSparseError

CONFIG, CHECKPOINT, LOG = "config.json", "checkpoint.pt", "train_log.jsonl"
# Settings newer than some run directories, with the value that keeps an older run's meaning.
ADDED_SETTINGS = {"dense_epochs": 0, "initial_density": None, "prune_window": 1.0}


def with_added_settings(cfg):
    return {**ADDED_SETTINGS, **cfg} if isinstance(cfg, dict) else cfg


def read_config(out: Path, config_type) -> dict:
    """config.json of a run: every setting of config_type plus dataset_info, nothing else."""
    path = out / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise VeriSparseError(f"{path} is missing; {out} is not a complete run directory") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VeriSparseError(f"{path} is not readable JSON ({e}); restore it or train into a new --out") from None
    if not isinstance(cfg, dict):
        raise VeriSparseError(f"{path} must hold a JSON object of settings")
    cfg = with_added_settings(cfg)
    known = {f.name for f in fields(config_type)} | {"dataset_info"}
    missing, unknown = sorted(known - set(cfg)), sorted(set(cfg) - known)
    if missing or unknown:
        raise VeriSparseError(f"{path} does not match this version of VeriSparse (missing keys {missing}, "
                              f"unknown keys {unknown}); restore it or train into a new --out")
    info = cfg["dataset_info"]
    if not isinstance(info, dict) or not isinstance(info.get("split"), dict):
        raise VeriSparseError(f"{path}: dataset_info.split is missing or not an object")
    return cfg


def read_log(path: Path) -> list[dict]:
    """train_log.jsonl. A process killed while appending leaves half a last line: that
    line is dropped (its epoch is trained again). A damaged line before it is an error."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise VeriSparseError(f"{path} is not a readable text log ({e})") from None
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            if i == len(lines) - 1:
                break  # torn last line
            raise VeriSparseError(f"{path}: line {i + 1} is not a log record; the log is damaged, "
                                  "restore it or train into a new --out")
        records.append(record)
    return records


def check_resumable(state: dict, cfg, out: Path, config_type):
    """A checkpoint and config.json must both belong to the run asked for; returns config.json."""
    saved = read_config(out, config_type)
    settings = {k: v for k, v in saved.items() if k != "dataset_info"}
    if settings != with_added_settings(state["config"]):
        raise VeriSparseError(f"{out}/{CONFIG} and {CHECKPOINT} describe different runs; "
                              "restore the directory or train into a new --out")
    _require_same(with_added_settings(state["config"]), cfg, out)
    return saved


def fresh_start_note(out: Path, cfg, resume: bool, config_type) -> str | None:
    """Whether a run without a checkpoint may start in out: None for an empty directory,
    a note to print when out holds a run that never finished its first epoch; raises
    when starting would lose trained epochs or would not be what was asked."""
    has_config = (out / CONFIG).exists()
    if read_log(out / LOG):
        raise VeriSparseError(f"{out}/{LOG} records trained epochs but {CHECKPOINT} is missing; restore the "
                              "checkpoint or train into a new --out")
    if not has_config:
        if resume:
            raise VeriSparseError(f"no checkpoint at {out / CHECKPOINT}; nothing to resume: train without --resume")
        return None
    if resume:
        _require_same({k: v for k, v in read_config(out, config_type).items() if k != "dataset_info"}, cfg, out)
    return (f"{out} holds a run stopped before its first checkpoint: nothing was trained, "
            "starting it from scratch")


def _require_same(saved: dict, cfg, out: Path):
    asked = asdict(cfg)
    if saved != asked:
        diff = {k: (saved.get(k), v) for k, v in asked.items() if saved.get(k) != v}
        raise VeriSparseError(f"{out} holds a run with another config (saved, asked): {diff}; "
                              "resume with the same settings or train into a new --out")
