"""The verisparse command line."""
from __future__ import annotations

import atexit
import os
import sys

import click

from . import extras
from .errors import VeriSparseError


EXIT_OK, EXIT_VERDICT, EXIT_INPUT, EXIT_BUG = 0, 1, 2, 3


class _Group(click.Group):
    """One exit-code contract for every command: 0 success, 1 a negative verdict (the
    commands exit 1 themselves), 2 bad input or environment, 3 a bug. Anything a user can
    cause prints one line, never a traceback; `verisparse --debug ...` shows tracebacks."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except SystemExit as e:
            if _in_process_group():
                _exit_before_finalizing(e.code)
            raise

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        # the light install (a Pi) runs `profile`; every other command names the extra it needs
        # before any work, and `COMMAND --help` still works
        if not {"-h", "--help"} & set(rest):
            try:
                extras.require(name)
            except VeriSparseError as e:
                click.echo(f"error: {e}", err=True)
                sys.exit(EXIT_INPUT)
        return name, cmd, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if extras.full_only(e):  # a module only the full extra installs
                e = VeriSparseError(extras.missing_message(ctx.invoked_subcommand, [e.name.split(".")[0]]))
            click.echo(_one_line(e), err=True)
            sys.exit(EXIT_BUG if _is_bug(e) else EXIT_INPUT)
        except MemoryError:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("error: out of memory; verify fewer samples (--n) or lower the size limits", err=True)
            sys.exit(EXIT_INPUT)


def _in_process_group():
    dist = sys.modules.get("torch.distributed")  # never imported here: the light install has no torch
    return dist is not None and dist.is_available() and dist.is_initialized()


def _exit_before_finalizing(code):
    """End a process of a torch.distributed job without finalizing the interpreter. The gloo
    worker threads outlive destroy_process_group; one still releasing a finished collective's
    tensors when the interpreter finalizes needs the GIL and aborts the process with SIGABRT
    after a finished run (5 of 15 two-process runs under CPU load). The exit handlers (which
    destroy the group) run first and output is flushed, so nothing else is skipped."""
    if code is not None and not isinstance(code, int):  # what SystemExit does with a message
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _is_bug(e):
    return not isinstance(e, (VeriSparseError, OSError)) and not _peer_lost(e)


def _peer_lost(e):
    """A collective of a distributed job failed: another process of it is gone (gloo raises a
    bare RuntimeError naming its transport)."""
    if not _in_process_group():
        return False
    return isinstance(e, sys.modules["torch.distributed"].DistError) or \
        (isinstance(e, RuntimeError) and "gloo/transport" in str(e))


def _one_line(e):
    if isinstance(e, VeriSparseError):
        return f"error: {e}"
    if _peer_lost(e):
        return (f"error: lost the connection to another process of this job ({' '.join(str(e).split())[:200]}); "
                "if one was stopped, continue the run with --resume")
    if isinstance(e, OSError):  # an output path that is a file, under a file, read-only, a full disk
        where = f": {e.filename}" if e.filename else ""
        return f"error: {e.strerror or e}{where}"
    return (f"internal error: {type(e).__name__}: {str(e)[:300]} -- a bug in verisparse; "
            "`verisparse --debug ...` shows the traceback")


@click.group(cls=_Group, context_settings=dict(help_option_names=["-h", "--help"], max_content_width=100))
@click.version_option(package_name="verisparse")
@click.option("--debug", is_flag=True, envvar="VERISPARSE_DEBUG",
              help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, debug):
    """VeriSparse: certifiably robust sparse networks, from training to microcontroller.

    \b
    Stages (each reads and writes a run directory):
      train     sparse-from-scratch certified training (IBP / CROWN-IBP)
      export    fold pruned units away, write model.onnx + model_int8.tflite, check parity
      verify    certify model.onnx / model_int8.tflite / checkpoint.pt (IBP, CROWN, MILP, int8)
      firmware  generate bit-exact Cortex-M C for model_int8.tflite, check it in QEMU
      report    one HTML page per run (or comparing runs)
      profile   latency, memory and output bytes on this machine (a Raspberry Pi); light install

    \b
    Example:
      verisparse train --dataset mnist5k --arch cnn_4layer --eps 0.1 --sparsity 0.9 --out runs/default

    \b
    Exit codes (every command):
      0  success
      1  a negative verdict (verified accuracy below --min-vra, a failed --check, firmware
         bytes that differ from the interpreters')
      2  bad input or environment: one line on stderr says what is wrong and what to do
      3  a bug in verisparse: one line; --debug shows the traceback
    """
    ctx.obj = dict(debug=debug)


def _eps(ctx, param, value):
    if value is not None and not 0 < value <= 1:
        raise click.BadParameter(f"must be in (0, 1] (pixel space); got {value}")
    return value


def _sparsity(ctx, param, value):
    if not 0 <= value < 1:
        raise click.BadParameter(f"must be in [0, 1); got {value}")
    return value


@main.command(epilog="""\b
Examples:
  # VeriSparse default: 90% unstructured sparsity from a random mask, IBP (--method crown-ibp: CROWN-IBP)
  verisparse train --dataset mnist5k --arch cnn_4layer --eps 0.1 --sparsity 0.9 --out runs/default
  # structured (whole filters/neurons), under a weight budget
  verisparse train --structure structured --param-budget 20000 --out runs/structured
  # a short dense start, then the largest weights as the mask (more accurate, not the paper's random mask)
  verisparse train --sparsity 0.95 --dense-epochs 5 --epochs 30 --lr 3e-3 --update-every 50 --out runs/ds
  # start dense and prune gradually to the target over the run while RigL moves the mask (GraNet)
  verisparse train --sparsity 0.95 --initial-density 1 --epochs 30 --lr 3e-3 --update-every 50 --out runs/gradual
  # the same for whole units: the compacted network shrinks (and its epochs get cheaper) as units go
  verisparse train --structure structured --sparsity 0.95 --initial-density 1 --epochs 30 --lr 4e-3 --out runs/gs
  # the baselines the paper compares with
  verisparse train --baseline dense --out runs/dense
  verisparse train --baseline prune-finetune --sparsity 0.9 --out runs/pf
  verisparse train --baseline hydra --sparsity 0.9 --out runs/hydra
  # continue a killed run from its last checkpoint
  verisparse train --out runs/default --resume
  # data-parallel over 2 processes (same global batch, same result as one process)
  verisparse train --nproc 2 --out runs/ddp
  # a dataset you bring: npz with x_train, y_train, x_test, y_test in [0, 1]
  verisparse train --dataset npz:data/sensors.npz --arch mlp_3layer --eps 0.05 --out runs/sensors
""")
@click.option("--dataset", default="mnist5k", show_default=True,
              help="mnist5k, digits, mnist, fashion-mnist, cifar10, svhn, npz:PATH or csv:PATH.")
@click.option("--data-root", type=click.Path(), default=None, help="Folder with torchvision-layout datasets.")
@click.option("--download", is_flag=True, help="Fetch the dataset into --data-root (needs torchvision, network).")
@click.option("--arch", default="cnn_4layer", show_default=True,
              help="mlp_2layer, mlp_3layer, mlp_5layer, cnn_4layer or cnn_7layer.")
@click.option("--batchnorm", is_flag=True, help="BatchNorm after hidden layers (cnn archs).")
@click.option("--eps", type=float, default=0.1, show_default=True, callback=_eps,
              help="Test L-inf radius in [0, 1] pixel space.")
@click.option("--eps-train", type=float, default=None, callback=_eps, help="Training radius [default: 1.5 x eps].")
@click.option("--method", type=click.Choice(["ibp", "crown-ibp"]), default="ibp", show_default=True)
@click.option("--structure", type=click.Choice(["unstructured", "structured"]), default="unstructured",
              show_default=True)
@click.option("--sparsity", type=float, default=0.9, show_default=True, callback=_sparsity,
              help="Fraction of weights removed, over effective parameters.")
@click.option("--param-budget", type=int, default=None, help="Structured: keep at most this many weights.")
@click.option("--baseline", type=click.Choice(["dense", "prune-finetune", "hydra"]), default=None,
              help="Train a baseline instead of VeriSparse (hydra: Sehwag et al. 2020, dense -> score-optimised "
                   "pruning -> fine-tune).")
@click.option("--epochs", type=int, default=100, show_default=True,
              help="Epochs of sparse (VeriSparse) or dense (baselines) training.")
@click.option("--dense-epochs", type=int, default=0, show_default=True,
              help="VeriSparse: train dense this many epochs first, then keep the largest weights (or units) as "
                   "the starting mask instead of a random one (measured: bench README).")
@click.option("--initial-density", type=float, default=None,
              help="VeriSparse: start from a random mask this dense (1: dense) and prune by magnitude to "
                   "1 - sparsity on a cubic schedule every --update-every steps while RigL moves the mask "
                   "(GraNet); structured: random units at this weight density, the smallest-norm units "
                   "dropped down to the structured budget's unit counts while re-masking runs as usual, the "
                   "compacted net re-gathered after each step down [default: start at 1 - sparsity, the "
                   "paper's random mask].")
@click.option("--prune-window", type=float, default=1.0, show_default=True,
              help="With --initial-density: fraction of --epochs over which the density falls to its target "
                   "(measured best: all of them).")
@click.option("--prune-epochs", type=int, default=None,
              help="hydra: epochs optimising the pruning scores, weights frozen [default: 10% of epochs].")
@click.option("--finetune-epochs", type=int, default=None, help="prune-finetune, hydra [default: epochs // 2].")
@click.option("--batch-size", type=int, default=50, show_default=True)
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: 2e-3 structured, else 5e-4].")
@click.option("--warmup-epochs", type=int, default=None, help="Epochs at eps 0 [default: 5% of epochs].")
@click.option("--ramp-epochs", type=int, default=None, help="Epochs of the eps ramp [default: 50% of epochs].")
@click.option("--kappa-end", type=float, default=0.0, show_default=True,
              help="Final weight of the natural loss.")
@click.option("--regrow", type=click.Choice(["rigl", "random"]), default="rigl", show_default=True)
@click.option("--update-every", type=int, default=100, show_default=True,
              help="Steps between unstructured prune/regrow.")
@click.option("--update-fraction", type=float, default=0.3, show_default=True)
@click.option("--update-end", type=float, default=0.75, show_default=True,
              help="Fraction of --epochs after which the mask stops moving (RigL's prune/regrow; structured "
                   "re-masking by unit norm). 0: it never moves, except by --initial-density's thinning "
                   "(measured best for structured gradual pruning: bench README).")
@click.option("--eval-crown-every", type=int, default=0, show_default=True,
              help="Epochs between full-CROWN evaluations of the test split (0: last epoch only, -1: never).")
@click.option("--eval-every", type=int, default=None,
              help="Epochs between PGD and CROWN-IBP evaluations of the test split; clean and IBP-verified "
                   "accuracy are every epoch, all of them on the last. [default: --epochs // 20, at least 1]")
@click.option("--out", "out", type=click.Path(), required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (launches torchrun; gloo on CPU, one GPU each on "
                   "CUDA). --batch-size stays the global batch, so results do not depend on it.")
def train(out, resume, device, quiet, download, nproc, **settings):
    """Train a certifiably robust sparse network into a run directory.

    \b
    Across processes or machines, start it under torchrun (README: Scaling out):
      torchrun --standalone --nproc-per-node 2 -m verisparse train ... --out runs/ddp
    """
    from .trainer import distributed
    if distributed.under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if nproc not in (1, world):
            raise VeriSparseError(f"--nproc {nproc} but torchrun started {world} processes; "
                                  "drop --nproc under torchrun")
    elif nproc > 1:
        sys.exit(distributed.launch(nproc, sys.argv[1:], device))
    from .trainer.train import TrainConfig, train as run_training
    cfg = TrainConfig(**settings)
    log = run_training(cfg, out, resume=resume, device=device, progress=not quiet, download=download)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(log, out)


@main.command(epilog="""\b
Examples:
  verisparse export runs/default
  verisparse export runs/default --calibration 1000
""")
@click.argument("run_dir", type=click.Path())
@click.option("--calibration", type=int, default=500, show_default=True,
              help="Training samples used to calibrate the int8 activation ranges.")
def export(run_dir, calibration):
    """Fold a trained run and write RUN_DIR/model.onnx, model_int8.tflite and export.json.

    Removes structured-pruned and dead units with the next layer's inputs, folds BatchNorm,
    checks that the folded model and ONNX Runtime match the trained model within 1e-5 (relative, for logits above 1) on the
    test split, converts to full-int8 TFLite (int8 in and out, per-channel int8 weights) and
    compares it with the float model and across LiteRT and TFLM."""
    from .exporter.export import export_run
    r = export_run(run_dir, calibration, progress=lambda m: click.echo(f"  ... {m}", err=True))
    b, a = r["totals_before"], r["totals_after"]
    p8, t = r["parity"]["int8"], r["tflite"]
    sat = t["calibration_saturation"]
    rows = [("parameters", f"{b['params']} -> {a['params']} (non-zero weights {a['nonzero_weights']})"),
            ("MACs dense", f"{b['dense_macs']} -> {a['dense_macs']}  (effective {a['effective_macs']})"),
            ("fold parity", f"{r['parity']['fold_max_abs_error']:.2e}"),
            ("ONNX parity", f"{r['parity']['onnx_max_abs_error']:.2e}  (opset {r['onnx']['opset']})"),
            ("accuracy float / int8", f"{p8['float_accuracy']:.2%} / {p8['int8_accuracy']:.2%}"),
            ("int8 top-1 agreement", f"{p8['top1_agreement']:.2%} ({p8['top1_agreement_resolvable']:.2%} on the "
                                     f"{p8['samples'] - p8['unresolvable_rows']} rows the int8 output resolves)"),
            ("LiteRT vs TFLM", "identical" if not p8["litert_vs_tflm_differing_outputs"] else "DIFFER"),
            ("LiteRT XNNPACK rows off", f"{p8['litert_xnnpack_differing_rows']} (max {p8['litert_xnnpack_max_lsb']} LSB)"),
            ("int8 input scale / zp", f"{t['input']['scale']:.6g} / {t['input']['zero_point']}"),
            ("calibration saturation", f"{sat['saturated']} of {sat['values']} activations"),
            ("sizes", f"model.onnx {r['onnx']['bytes']} B, model_int8.tflite {t['bytes']} B")]
    click.echo(f"run {run_dir}")
    for k, v in rows:
        click.echo(f"  {k:<24} {v}")
    for ok, what in ((p8["accuracy_ok"], "int8 accuracy is more than 1 point below float"),
                     (p8["agreement_ok"], "int8 and float agree on fewer than 99% of the test split")):
        if not ok:
            click.echo(f"  warning: {what}", err=True)
    click.echo(f"  wrote {run_dir}/model.onnx, model_int8.tflite, export.json")




def _print_summary(log, out):
    if not log:
        return
    last = log[-1]
    rows = [("epochs", f"{last['epoch']}"), ("train time", f"{last['train_seconds']:.1f} s"),
            ("sparsity", f"{last['sparsity']:.4f} ({last['effective_params']} weights left)"),
            ("clean accuracy", f"{last['clean_acc']:.2%}"),
            (f"IBP-verified @ eps {last['eps']}", f"{last['ibp_verified_acc']:.2%}")]
    if "crown_verified_acc" in last:
        rows.append((f"CROWN-verified @ eps {last['eps']}", f"{last['crown_verified_acc']:.2%}"))
    rows.append((f"PGD-robust @ eps {last['eps']}", f"{last['pgd_robust_acc']:.2%}"))
    click.echo(f"\nrun {out}")
    for k, v in rows:
        click.echo(f"  {k:<28} {v}")


# The verify and firmware commands live beside their stages; their modules import only click
# at load time, so `verisparse --help` stays fast.
from .firmware.command import firmware  # noqa: E402
from .verify.command import verify  # noqa: E402
from .report.command import report  # noqa: E402
from .profile.command import profile  # noqa: E402

main.add_command(verify)
main.add_command(firmware)
main.add_command(report)
main.add_command(profile)
