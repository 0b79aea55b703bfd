"""`verisparse firmware`: the click command (heavy imports stay inside the function)."""
from __future__ import annotations

import sys

import click

from .layouts import LAYOUTS
from .limits import Limits


@click.command(epilog="""\b
Examples:
  verisparse firmware runs/default --board mps2-an386 --out runs/default/firmware --run
  verisparse firmware model.tflite --board mps2-an385 --out fw --run --vectors 500
  verisparse firmware runs/default --board generic --out fw_nucleo   # then port fw_nucleo/platform.c
  verisparse firmware runs/default --layout zephyr --out modules/verisparse_model
""")
@click.argument("source", type=click.Path())
@click.option("--board", default="mps2-an386", show_default=True,
              help="mps2-an385 (M3), mps2-an386 (M4), mps2-an500 (M7), mps2-an505 (M33), microbit (M0) "
                   "or generic.")
@click.option("--out", "out", type=click.Path(), default=None, help="Project folder [default: SOURCE's folder/firmware].")
@click.option("--layout", type=click.Choice(LAYOUTS), default="make", show_default=True,
              help="make: a board project (startup, linker script, Makefile, test harness); cmake, zephyr, "
                   "arduino, platformio: the model and kernels as a library for that build system.")
@click.option("--run", "run", is_flag=True,
              help="Build with arm-none-eabi-gcc, run in QEMU and check every output byte against TFLM and LiteRT.")
@click.option("--vectors", type=int, default=200, show_default=True, help="Test inputs embedded in the firmware.")
@click.option("--max-ops", type=int, default=Limits.max_ops, show_default=True,
              help="Refuse models with more operators.")
@click.option("--max-tensor-elements", type=int, default=Limits.max_tensor_elements, show_default=True,
              help="Refuse models with a larger tensor (at most the default).")
@click.option("--max-macs", type=int, default=Limits.max_macs, show_default=True,
              help="Refuse models with more multiply-accumulates per inference.")
@click.option("--max-arena", type=int, default=Limits.max_arena, show_default=True,
              help="Refuse models whose activation arena needs more bytes.")
def firmware(source, board, out, layout, run, vectors, max_ops, max_tensor_elements, max_macs, max_arena):
    """Generate C firmware for a full-int8 model: RUN_DIR (its model_int8.tflite) or MODEL.tflite.

    Writes model.c/.h (const weights, sparse where smaller, one static arena), the kernels,
    startup code, linker script and Makefile, and firmware.json with sizes and MACs. With
    --run, also the QEMU proof that the firmware's bytes equal the interpreters', and flash,
    RAM and instruction counts; exits 1 when any output byte differs."""
    from .generate import generate_firmware

    r = generate_firmware(source, board, out, run=run, vectors=vectors,
                          limits=Limits(max_ops, max_tensor_elements, max_macs, max_arena), layout=layout)
    t = r["totals"]
    click.echo(f"firmware {r['firmware_dir']}  ({r['board']['name']}, {r['board']['cpu']})")
    click.echo(f"  weights           {t['nonzero_weights']} non-zero, stored in {t['stored_weight_bytes']} B "
               f"(dense {t['dense_weight_bytes']} B)")
    click.echo(f"  MACs              dense {t['dense_macs']}, effective {t['effective_macs']}")
    a = r["arena"]
    tflm = f"; TFLM's planner {r['tflm_arena']['head_bytes']} B" if "tflm_arena" in r else ""
    click.echo(f"  arena             {a['bytes']} B with input and output (lower bound {a['lower_bound_bytes']} B"
               f"{tflm})")
    if run:
        e, f, m, i = r["exactness"], r["flash"], r["ram"], r["instructions"]
        click.echo(f"  flash             {f['bytes']} B (target <= {f['target_bytes']} B; interpreter baseline "
                   f"{r['interpreter_baseline']['flash_bytes']} B)")
        click.echo(f"  RAM               {m['bytes']} B incl. {m['stack_bytes_measured']} B stack "
                   f"(target <= {m['target_bytes']} B)")
        click.echo(f"  instructions      {i['per_inference']} per inference, {i['per_effective_mac']} per effective MAC")
        click.echo(f"  exact             {e['tflm']['identical_vectors']}/{e['vectors']} vectors identical to TFLM, "
                   f"{e['litert_reference']['identical_vectors']}/{e['vectors']} to LiteRT (reference kernels)")
    click.echo(f"  wrote {r['firmware_dir']}/firmware.json")
    if run and not r["exactness"]["exact"]:  # a negative verdict (exit 1), recorded in firmware.json
        e = r["exactness"]
        click.echo(f"FAIL: the firmware's outputs differ from the interpreters' (TFLM: {e['tflm']['differing_bytes']} "
                   f"bytes, LiteRT: {e['litert_reference']['differing_bytes']}); see {r['firmware_dir']}/firmware.json",
                   err=True)
        sys.exit(1)
