"""Firmware size and speed for mnist5k / cnn_4layer on Cortex-M4 (QEMU mps2-an386).

Trains cnn_4layer at sparsity 0 (dense), 0.9, 0.95 and 0.99, unstructured and structured
(few epochs: this measures size and speed, not accuracy, but the masks really have the
given sparsity), exports model_int8.tflite, generates the firmware, runs it in QEMU with
-icount shift=0 and checks it byte for byte against TFLM and LiteRT. Prints a Markdown
table beside the interpreter baseline (.tflite + 16 KB, TFLM's documented minimum core on
Cortex-M3), and the targets: flash <= 1.15 x (non-zero weights + biases + sparse indices)
+ 4 KB, RAM <= arena + 2 KB. Runs are kept in --out and reused.

Then a model table: the MLPerf Tiny reference models (--mlperf DIR, default
../shared/models/mlperf-tiny) and any --model FILE.tflite: instructions per inference, flash, RAM
and exactness on Cortex-M4, and instructions per MAC (or element) of each op kind, measured
layer by layer (bench/firmware_profile.py). With --cmsis-nn DIR the same models also run through
Arm's CMSIS-NN (bench/cmsis_nn.py) with the same weights, and its outputs are compared with ours
byte for byte. Usage:

    .venv/bin/python bench/firmware_size.py [--epochs 4] [--out bench-runs/firmware] [--vectors 200]
        [--mlperf DIR] [--model FILE.tflite ...] [--cmsis-nn DIR] [--skip-cnn]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import cmsis_nn
import torch
from firmware_profile import layer_instructions
from tqdm import tqdm
from verisparse.exporter.export import export_run
from verisparse.files import read_jsonl
from verisparse.firmware import toolchain
from verisparse.firmware.generate import generate_firmware
from verisparse.firmware.lower import lower
from verisparse.tflite_graph import read_tflite

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
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


def _op_kinds(src: Path, layers: list[dict], per_layer: list[tuple[str, int]]) -> dict[str, list[int]]:
    """op kind (CONV_2D by filter size) -> [instructions, MACs or output elements]"""
    kinds: dict[str, list[int]] = {}
    for layer, low, (_, n) in zip(layers, lower(read_tflite(src)).layers, per_layer):
        kind = layer["op"]
        if kind == "CONV_2D":
            kind += f" {low.params['k_h']}x{low.params['k_w']}"
        k = kinds.setdefault(kind, [0, 0])
        k[0] += n
        k[1] += layer.get("dense_macs") or int(np.prod(layer["output_shape"]))
    return kinds


def _model_rows(models: list[Path], out: Path, vectors: int, cmsis: Path | None) -> tuple[list[str], list[str]]:
    """one row per model (ours, and CMSIS-NN's where cmsis is given), and one per (model, op kind)"""
    rows, ops = [], []
    for src in tqdm(models, desc="models", unit="model"):
        ours_dir = out / src.stem
        r = generate_firmware(src, "mps2-an386", ours_dir, run=True, vectors=vectors)
        e, i, macs = r["exactness"], r["instructions"]["per_inference"], r["totals"]["dense_macs"]
        kinds = _op_kinds(src, r["layers"], layer_instructions(ours_dir))
        cm = "| skipped | | | | |"
        cm_kinds = {}
        if cmsis is not None:
            project = cmsis_nn.write_project(src, ours_dir, out / f"{src.stem}-cmsis-nn", cmsis)
            c = cmsis_nn.run(project, vectors, int(np.prod(r["output"]["shape"])))
            ours_out = toolchain.parse_outputs(toolchain.run_qemu(ours_dir), vectors, c["outputs"].shape[1])
            same = int((ours_out == c["outputs"]).all(axis=1).sum())
            cm = f"| {c['instructions']} | {i / c['instructions']:.2f} | {c['flash']} | {c['ram']} | {same}/{vectors} |"
            cm_kinds = _op_kinds(src, r["layers"], layer_instructions(project))
        rows.append(f"| {src.name} | {macs} | {i} | {r['flash']['bytes']} | {r['ram']['bytes']} "
                    f"| {r['arena']['bytes']} | {r['tflm_arena']['head_bytes']} "
                    f"| {e['tflm']['identical_vectors']}/{e['vectors']} {cm}")
        for kind, (n, work) in sorted(kinds.items()):
            unit = "MAC" if kind.split()[0] in WEIGHTED else "element"
            theirs = f"{cm_kinds[kind][0] / work:.2f}" if kind in cm_kinds else "-"
            ops.append(f"| {src.name} | {kind} | {work} {unit}s | {n / work:.2f} | {theirs} |")
    return rows, ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="bench-runs/firmware")
    ap.add_argument("--vectors", type=int, default=200)
    ap.add_argument("--mlperf", type=Path, default=MLPERF, help="folder of MLPerf Tiny .tflite models")
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="another full-int8 .tflite for the model table (repeatable)")
    ap.add_argument("--cmsis-nn", type=Path, default=None,
                    help="folder with CMSIS-NN/ and CMSIS_6/ sources (see bench/cmsis_nn.py) for the CMSIS-NN column")
    ap.add_argument("--skip-cnn", action="store_true", help="only the model table")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.skip_cnn:
        _cnn_table(args)
    models = (sorted(args.mlperf.glob("*.tflite")) if args.mlperf.is_dir() else []) + args.model
    if not models:
        print(f"\nModel table: skipped, no .tflite models in {args.mlperf} and no --model")
        return
    if args.cmsis_nn is None:
        print("\nCMSIS-NN column: skipped (give --cmsis-nn DIR with CMSIS-NN/ and CMSIS_6/ to measure it)")
    rows, ops = _model_rows(models, Path(args.out) / "models", args.vectors, args.cmsis_nn)
    print("\nOn Cortex-M4 (qemu-system-arm mps2-an386, -icount shift=0): ours arm-none-eabi-gcc -O2 with the DSP "
          "kernels; CMSIS-NN arm-none-eabi-gcc -Ofast -mfloat-abi=hard, same weights and arena. Flash and RAM of "
          "size.elf (model + kernels + startup; RAM = .data + .bss + measured stack). Arena: ours planned; TFLM's "
          "planner: the head of TFLM's arena for the same model (tflm_arena in firmware.json).\n")
    print("| model | MACs | ours: instructions | flash B | RAM B | arena B | TFLM planner B | exact vs TFLM "
          "| CMSIS-NN: instructions | ours / CMSIS-NN | flash B | RAM B | CMSIS-NN outputs = ours |")
    print("|" + "---|" * 13)
    print("\n".join(rows))
    print("\n| model | op | work | ours: instructions per MAC or element | CMSIS-NN |")
    print("|" + "---|" * 5)
    print("\n".join(ops))


def _cnn_table(args):
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
