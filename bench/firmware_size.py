"""Firmware size and speed for mnist5k / cnn_4layer on Cortex-M4 (QEMU mps2-an386).

Trains cnn_4layer at sparsity 0 (dense), 0.9, 0.95 and 0.99, unstructured and structured
(few epochs: this measures size and speed, not accuracy, but the masks really have the
given sparsity), exports model_int8.tflite, generates the firmware, runs it in QEMU with
-icount shift=0 and checks it byte for byte against TFLM and LiteRT. Prints a Markdown
table beside the interpreter baseline (.tflite + 16 KB, TFLM's documented minimum core on
Cortex-M3), and the targets: flash <= 1.15 x (non-zero weights + biases + sparse indices)
+ 4 KB, RAM <= arena + 2 KB. Runs are kept in --out and reused. Usage:

    .venv/bin/python bench/firmware_size.py [--epochs 4] [--out bench-runs/firmware] [--vectors 200]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from verisparse.exporter.export import export_run
from verisparse.files import read_jsonl
from verisparse.firmware.generate import generate_firmware
from verisparse.trainer.train import TrainConfig, train

CONFIGS = [("dense", dict(baseline="dense"))] + [
    (f"{s} {p}", dict(structure=s, sparsity=p)) for s in ("unstructured", "structured") for p in (0.9, 0.95, 0.99)]


def _row(name, r):
    f, m, i, t, e = r["flash"], r["ram"], r["instructions"], r["totals"], r["exactness"]
    storage = "/".join("S" if l.get("storage") == "sparse" else "D" for l in r["layers"] if "storage" in l)
    return (f"| {name} | {t['nonzero_weights']} | {storage} | {f['bytes']} | {f['target_bytes']} "
            f"| {r['interpreter_baseline']['flash_bytes']} | {m['bytes']} | {m['arena_bytes']} | {m['target_bytes']} "
            f"| {t['dense_macs']} | {t['effective_macs']} | {i['per_inference']} | {i['per_effective_mac']} "
            f"| {e['tflm']['identical_vectors']}/{e['vectors']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="bench-runs/firmware")
    ap.add_argument("--vectors", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name, kw in CONFIGS:
        run = Path(args.out) / name.replace(" ", "-")
        log = read_jsonl(run / "train_log.jsonl")
        if not log or log[-1]["epoch"] < args.epochs:  # new, or killed part way: (re)train to the end
            print(f"training {name} ...", flush=True)
            cfg = TrainConfig(dataset="mnist5k", arch="cnn_4layer", eps=0.1, epochs=args.epochs,
                              eval_crown_every=-1, **kw)
            train(cfg, run, resume=bool(log), progress=False)
            (run / "model_int8.tflite").unlink(missing_ok=True)
        if not (run / "model_int8.tflite").exists():
            export_run(run)
        r = generate_firmware(run, "mps2-an386", run / "firmware", run=True, vectors=args.vectors)
        rows.append(_row(name, r))
    print("\nmnist5k cnn_4layer on Cortex-M4 (qemu-system-arm mps2-an386, -icount shift=0), arm-none-eabi-gcc -O2;")
    print("flash and RAM of the model + kernels + startup alone (size.elf); layers D = dense, S = sparse storage.\n")
    print("| model | non-zero weights | layers | flash B | flash target B | interpreter baseline B | RAM B "
          "| arena B | RAM target B | dense MACs | effective MACs | instructions | instr / eff. MAC | exact vs TFLM |")
    print("|" + "---|" * 14)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
