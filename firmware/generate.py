"""verisparse firmware: .tflite (or a run directory) -> C project, and with run=True the proof
that the firmware prints exactly what TFLM and LiteRT compute, plus its measured cost.
A firmware that differs is a verdict, not an error: the report (and firmware.json) has
exactness.exact false, and the command prints one FAIL line and exits 1."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.files import sha256_file, write_json
from verisparse.tflite_graph import read_tflite

from . import toolchain
from .boards import Board, get_board, project_files
from .emit import model_c, model_h
from .features import config_h
from .layouts import LAYOUTS, library_files
from .limits import Limits, check_arena, check_graph
from .lower import Program, lower
from .outdir import read_listed, replace_file, write_files
from .plan import Plan, plan
from .reference import run_litert, run_tflm
from .tflm_arena import tflm_arena
from .vectors import make_vectors, vectors_c

TFLM_CORE_BYTES = 16 * 1024  # TFLM's documented minimum core size on Cortex-M3, the interpreter baseline
CODE_ALLOWANCE = 16 * 1024  # kernels, startup and harness code, for the fit check before building
REPORT = "firmware.json"
MEASURED = ("exactness", "flash", "ram", "instructions", "tflm_arena")  # what --run adds to the report
FC_NOTE = ("LiteRT 2.x's reference FULLY_CONNECTED rounds once ((acc * m + 2^(s-1)) >> s); TFLM and this "
           "firmware round twice (TFLite's MultiplyByQuantizedMultiplier), so LiteRT can differ by 1 LSB on "
           "FULLY_CONNECTED outputs. The firmware is held to TFLM byte for byte; VeriSparse's exporter writes "
           "dense layers as 1x1 CONV_2D, where all three agree.")
RELU6_NOTE = ("A RELU6 whose output is quantized differently from its input: TFLM (and this firmware) clamp the "
              "raw int8 input between its 0 and 6, LiteRT's reference kernel also rescales it to the output's "
              "quantization. The firmware is held to TFLM byte for byte.")


def _source(src: Path) -> tuple[Path, Path | None]:
    """(.tflite path, run directory or None)."""
    if src.is_dir():
        tfl = src / "model_int8.tflite"
        if not tfl.exists():
            raise VeriSparseError(f"{src} has no model_int8.tflite; run `verisparse export {src}` first")
        return tfl, src
    if not src.exists():
        raise VeriSparseError(f"{src} does not exist; pass a run directory or a .tflite file")
    return src, None


def _layer_rows(prog: Program, pl: Plan) -> list[dict]:
    rows = []
    for k, l in enumerate(prog.layers):
        row = dict(index=k, op=l.op, kernel=None if k in pl.skipped else l.kernel,
                   output_shape=list(prog.graph.tensors[l.output].shape))
        if l.dense_weight_bytes:
            row.update(storage="sparse" if l.sparse is not None else "dense", nonzero_weights=l.nonzero_weights,
                       dense_weight_bytes=l.dense_weight_bytes, stored_weight_bytes=l.stored_weight_bytes,
                       index_bytes=l.sparse.index_bytes if l.sparse is not None else 0,
                       bias_bytes=l.arrays["bias"].nbytes,
                       requant_bytes=l.arrays["mult"].nbytes + l.arrays["shift"].nbytes,
                       dense_macs=l.dense_macs, effective_macs=l.effective_macs)
        rows.append(row)
    return rows


def _totals(rows) -> dict:
    keys = ("nonzero_weights", "dense_weight_bytes", "stored_weight_bytes", "index_bytes", "bias_bytes",
            "requant_bytes", "dense_macs", "effective_macs")
    return {k: sum(r.get(k, 0) for r in rows) for k in keys}


def _check_fits(board: Board, totals, pl: Plan, prog: Program, n_vectors: int):
    const = totals["stored_weight_bytes"] + totals["bias_bytes"] + totals["requant_bytes"]
    vec = n_vectors * int(np.prod(prog.input.shape))
    flash = const + vec + CODE_ALLOWANCE
    if flash > board.flash_bytes:
        raise VeriSparseError(
            f"the model needs about {const} bytes of flash for weights and parameters (+ {vec} for "
            f"{n_vectors} test vectors, + about {CODE_ALLOWANCE} for code), more than {board.name}'s "
            f"{board.flash_bytes} bytes; use fewer --vectors, a sparser model or a bigger board")
    ram = pl.arena_bytes + board.stack_bytes
    if ram > board.ram_bytes:
        raise VeriSparseError(
            f"the model is too big for {board.name}: it needs {pl.arena_bytes} bytes of activation arena (input and "
            f"output included) + {board.stack_bytes} of stack, more than {board.name}'s {board.ram_bytes} bytes "
            "of RAM; use a smaller or sparser model (structured sparsity shrinks activations) or a board with more RAM")


def _compare(fw: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(fw.astype(np.int16) - ref.astype(np.int16))
    return dict(identical_vectors=int((diff == 0).all(axis=1).sum()), differing_bytes=int((diff > 0).sum()),
                max_abs_difference=int(diff.max(initial=0)))


def flash_bytes(sections: dict) -> int:
    """Flash of an image from its section sizes: code, constants and .data's initial values."""
    return sum(v for k, v in sections.items() if k in (".text", ".rodata", ".ARM.exidx", ".init_array", ".data"))


def payload_bytes(totals: dict) -> int:
    """What a model's flash cannot do without: non-zero int8 weights, int32 biases, sparse indices."""
    return totals["nonzero_weights"] + totals["bias_bytes"] + totals["index_bytes"]


def flash_target_bytes(totals: dict) -> int:
    """The flash target firmware.json and bench/firmware_size.py hold a model to: 1.15 x the payload
    + 4 KB for kernels and startup."""
    return int(1.15 * payload_bytes(totals) + 4096)


def _measure(fw_dir: Path, board: Board, totals: dict, pl: Plan, text: str, data: bytes) -> dict:
    sec = toolchain.section_sizes(fw_dir / "size.elf")
    flash = flash_bytes(sec)
    data_bss = sec.get(".data", 0) + sec.get(".bss", 0)
    m = toolchain.parse_measurements(text)
    payload = payload_bytes(totals)
    flash_target = flash_target_bytes(totals)
    ram = data_bss + m["stack_bytes_measured"]
    instr = m["instructions_per_inference"]
    # TFLM's own arena for the same model, beside ours (given room enough for its planner)
    tflm = tflm_arena(data, arena_size=4 * pl.arena_bytes + 10 * len(data) + (1 << 16))
    return dict(
        flash=dict(bytes=flash, sections=sec, payload_bytes=payload, target_bytes=flash_target,
                   within_target=flash <= flash_target,
                   target="1.15 x (non-zero int8 weights + int32 biases + sparse indices) + 4 KB"),
        ram=dict(bytes=ram, data_bss_bytes=data_bss, stack_bytes_measured=m["stack_bytes_measured"],
                 arena_bytes=pl.arena_bytes, target_bytes=pl.arena_bytes + 2048,
                 within_target=ram <= pl.arena_bytes + 2048, target="planned arena + 2 KB"),
        tflm_arena=dict(tflm, arena_bytes=pl.arena_bytes, arena_within_tflm=pl.arena_bytes <= tflm["head_bytes"]),
        instructions=dict(per_inference=instr, resolution=m["instructions_resolution"],
                          per_effective_mac=round(instr / max(totals["effective_macs"], 1), 3),
                          per_dense_mac=round(instr / max(totals["dense_macs"], 1), 3),
                          how=f"qemu-system-arm -M {board.qemu_machine} -icount shift=0, SysTick calibrated "
                              "on a 2-instruction loop"),
    )


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _project_sha256(files: dict[str, bytes]) -> str:
    """One hash over the project's files: what a report's measurements were taken on."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return h.hexdigest()


def _kept_measurements(fw_dir: Path, project_sha: str) -> dict:
    """The QEMU results of the folder's previous report when they were taken on these very files:
    regenerating without --run must not drop them (a richer report is never replaced by a poorer one)."""
    old = read_listed(fw_dir, REPORT)
    try:
        old = json.loads(old) if old is not None else {}
    except ValueError:
        return {}
    if not isinstance(old, dict) or old.get("project_sha256") != project_sha:
        return {}
    return {k: old[k] for k in MEASURED if k in old}


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or (a.exists() and b.exists() and os.path.samefile(a, b))


def _write_run_report(path: Path, report: dict):
    try:
        write_json(path, report)
    except OSError as e:
        raise VeriSparseError(f"cannot write {path}: {e.strerror or e}") from None


def generate_firmware(source, board: str = "mps2-an386", out=None, run: bool = False, vectors: int = 200,
                      limits: Limits = Limits(), layout: str = "make") -> dict:
    src = Path(source)
    tfl, run_dir = _source(src)
    b = get_board(board)
    if vectors < 1:
        raise VeriSparseError(f"--vectors must be at least 1; got {vectors}")
    if layout not in LAYOUTS:
        raise VeriSparseError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if run and layout != "make":
        raise VeriSparseError(f"--run builds and runs the Makefile project in QEMU; the {layout} layout holds the "
                              "model library alone: run once with --layout make (same model.c and kernels)")
    if layout != "make":
        vectors = 0  # the test vectors belong to the harness of the make layout
    if run and b.qemu_machine is None:
        raise VeriSparseError(f"board {b.name} has no emulator; --run needs one of the mps2 boards or microbit")
    fw_dir = Path(out) if out is not None else (run_dir or tfl.parent) / "firmware"
    try:
        data = tfl.read_bytes()
    except OSError as e:
        raise VeriSparseError(f"cannot read {tfl}: {e.strerror or e}") from None
    graph = read_tflite(tfl)
    check_graph(graph, limits)
    prog = lower(graph)
    pl = plan(prog)
    check_arena(pl.arena_bytes, limits)
    rows = _layer_rows(prog, pl)
    totals = _totals(rows)
    _check_fits(b, totals, pl, prog, vectors)

    model = {"model.h": model_h(prog, pl), "model.c": model_c(prog, pl, tfl.name),
             "kernels/vs_config.h": config_h(prog)}
    if layout == "make":
        vec = make_vectors(vectors, prog.input.shape[1:] if len(prog.input.shape) > 1 else prog.input.shape,
                           float(prog.input.scale[0]), int(prog.input.zero_point[0]), run_dir)
        vh, vc = vectors_c(vec)
        text_files = project_files(b, {**model, "vs_vectors.h": vh, "vs_vectors.c": vc})
    else:
        vec, text_files = [], library_files(layout, b, model)
    files = {name: text.encode() for name, text in text_files.items()}
    has_fc = any(l.op == "FULLY_CONNECTED" for l in prog.layers)
    relu6_differs = any(l.op == "RELU6" and l.litert_differs for l in prog.layers)
    litert_may_differ = has_fc or relu6_differs
    report = dict(
        source=dict(path=str(tfl), sha256=sha256_file(tfl), bytes=len(data)),
        board=dict(name=b.name, description=b.description, cpu=b.cpu, qemu_machine=b.qemu_machine,
                   flash_bytes=b.flash_bytes, ram_bytes=b.ram_bytes),
        firmware_dir=str(fw_dir), layout=layout, project_sha256=_project_sha256(files),
        input=dict(shape=list(prog.input.shape), scale=float(prog.input.scale[0]),
                   zero_point=int(prog.input.zero_point[0]), model_quantizes_float_input=prog.float_input),
        output=dict(shape=list(prog.output.shape), scale=float(prog.output.scale[0]),
                    zero_point=int(prog.output.zero_point[0]), model_dequantizes_output=prog.float_output),
        layers=rows, totals=totals,
        arena=dict(bytes=pl.arena_bytes, lower_bound_bytes=pl.lower_bound_bytes,
                   holds="activations, input, output, convolution scratch", in_place_layers=sorted(pl.in_place),
                   sliding_layers=sorted(pl.sliding)),
        interpreter_baseline=dict(flash_bytes=len(data) + TFLM_CORE_BYTES,
                                  how=".tflite size + 16 KB, TFLM's documented minimum core on Cortex-M3"),
        rounding=dict(firmware="TFLite double rounding (TFLM)", fully_connected_note=FC_NOTE if has_fc else None,
                      relu6_note=RELU6_NOTE if relu6_differs else None),
        vectors=len(vec),
    )
    report.update(_kept_measurements(fw_dir, report["project_sha256"]))
    files[REPORT] = _json_bytes(report)
    write_files(fw_dir, files)
    # the run's report follows its project even when building or QEMU fails below
    run_report = run_dir / REPORT if run_dir is not None and _same_path(fw_dir, run_dir / "firmware") else None
    if run_report is not None:
        _write_run_report(run_report, report)
    if run:
        toolchain.make(fw_dir, "all")
        text = toolchain.run_qemu(fw_dir)
        fw = toolchain.parse_outputs(text, len(vec), int(np.prod(prog.output.shape)))
        tflm, lite = _compare(fw, run_tflm(data, prog, vec)), _compare(fw, run_litert(data, prog, vec))
        exact = tflm["differing_bytes"] == 0 and (lite["differing_bytes"] == 0 or litert_may_differ)
        report["exactness"] = dict(board=b.name, vectors=len(vec), tflm=tflm, litert_reference=lite,
                                   litert_must_match=not litert_may_differ, exact=exact)
        report.update(_measure(fw_dir, b, totals, pl, text, data))
        replace_file(fw_dir, REPORT, _json_bytes(report))
        if run_report is not None:
            _write_run_report(run_report, report)
    return report
