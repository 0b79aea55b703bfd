"""Firmware memory against TFLM's, on the MLPerf Tiny reference models (and any .tflite or run
directory named): the planned arena (activations, input and output, convolution patch buffers),
the head of TFLM's arena for the same model (the tensors its planner places; from tflite_micro's
RecordingMicroAllocator) and its whole arena with persistent data (64-bit host build), and RAM of
the size build (.data + .bss from arm-none-eabi-size) and with the stack the model used. Each
model runs in QEMU with --run, so the figures come from a byte-exact firmware. Usage:

    .venv/bin/python bench/firmware_memory.py [--board mps2-an386] [--vectors 200] [--out bench-runs/memory]
                                              [EXTRA.tflite | RUN_DIR ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from verisparse.firmware.generate import generate_firmware

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", help="more .tflite files or run directories")
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--vectors", type=int, default=200)
    ap.add_argument("--out", default="bench-runs/memory")
    args = ap.parse_args()
    sources = sorted(MLPERF.glob("*.tflite")) + [Path(s) for s in args.sources]
    print(f"{args.board}, arm-none-eabi-gcc -O2; bytes\n")
    print("| model | arena | TFLM planner (head) | TFLM arena (head + tail, 64-bit host) | .data + .bss "
          "| RAM incl. stack | RAM target (arena + 2 KB) | exact vs TFLM |")
    print("|" + "---|" * 8)
    for src in sources:
        name = src.stem if src.suffix == ".tflite" else src.name
        r = generate_firmware(src, args.board, Path(args.out) / name, run=True, vectors=args.vectors)
        a, t, m, e = r["arena"], r["tflm_arena"], r["ram"], r["exactness"]
        print(f"| {name} | {a['bytes']} | {t['head_bytes']} | {t['total_bytes']} | {m['data_bss_bytes']} "
              f"| {m['bytes']} | {m['target_bytes']} | {e['tflm']['identical_vectors']}/{e['vectors']} |", flush=True)


if __name__ == "__main__":
    main()
