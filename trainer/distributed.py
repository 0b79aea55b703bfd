"""Data-parallel training over processes: torchrun + DistributedDataParallel.

Outside torchrun (or in a world of one process) the training loop gets `Single`, whose hooks
do nothing, so a one-process run computes exactly what it computed before this module.
Under torchrun (WORLD_SIZE > 1) each process gets `Ranks`:

- every global batch (--batch-size is global) is cut into contiguous slices, one per rank,
  in the same order; each rank's loss is weighted by its share of the batch, so DDP's
  gradient average is the mean over the global batch even when the last batch does not
  split evenly, and the result does not depend on the number of processes;
- masks change on rank 0 only and are broadcast (RigL's dense gradients are all-reduced first);
- what only rank 0 does (run directory, evaluation, checkpoint, log) reports its outcome to
  every rank, so an error there stops all of them with the same exit code (2 or 3).

gloo on CPU, NCCL on CUDA with one device per process (LOCAL_RANK).
"""
from __future__ import annotations

import atexit
import datetime
import os
import signal
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from verisparse.errors import VeriSparseError

# Rank 0 evaluates the test split (full CROWN on the last epoch: minutes on a CIFAR-sized
# model) while the other ranks wait at their next collective; a dead peer is noticed much
# sooner than this, by torchrun's agent and by the broken connection.
TIMEOUT = datetime.timedelta(hours=3)


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start(device: torch.device, batchnorm: bool = False, baseline: str | None = None):
    """This process's place in the job: Single outside torchrun, else Ranks (joins the group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Single(device)
    if baseline == "hydra":
        # HYDRA's prune phase trains scores outside the model with its weights frozen: DDP has
        # no gradient of the model's to reduce there.
        raise VeriSparseError("--baseline hydra trains in one process only; drop --nproc / torchrun for it")
    if batchnorm:
        # ops.BatchNorm normalises by the batch it sees: each rank sees only its slice, so the
        # model would depend on the number of processes.
        raise VeriSparseError("--batchnorm uses each process's slice of the batch for its statistics, so the "
                              "result would depend on the process count; train without --batchnorm, or in one process")
    return Ranks.join(device)


class Single:
    """One process: every hook is the identity."""
    world, rank, is_main = 1, 0, True

    def __init__(self, device):
        self.device = device

    def shard(self, idx):
        return idx

    def step(self, model, fn, *args):
        return fn(model, *args)

    def batch_totals(self, loss, logits, y):
        return loss.item(), float((logits.argmax(1) == y).sum())

    def average(self, tensors):
        return tensors

    def update_masks(self, model, fn):
        fn()

    @contextmanager
    def main_only(self):
        yield

    def from_main(self, obj):
        return obj

    def same_everywhere(self, fingerprint, what):
        pass


class _Step(nn.Module):
    """The loss computation as a module, so that DDP can wrap it: the loop never calls
    model(x) (the bounds walk the layers), and DDP syncs gradients of what its forward ran."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


class Ranks:
    def __init__(self, device):
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.is_main = self.rank == 0
        self.device = device
        self._wrapped = None  # (model, step function, their DDP wrapper)
        self._n_local, self._scale = 0, 1.0

    @classmethod
    def join(cls, device: torch.device):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise VeriSparseError(f"process {local} on this node has no GPU of its own (torch sees "
                                      f"{torch.cuda.device_count()}); start at most that many processes per node")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
            atexit.register(_leave)
        return cls(device)

    def shard(self, idx):
        """This rank's slice of a global batch of indices."""
        part = torch.tensor_split(idx, self.world)[self.rank]
        self._n_local, self._scale = len(part), self.world * len(part) / len(idx)
        # A rank left without samples (a last batch smaller than the world) runs the step on
        # one sample at weight 0: DDP needs every rank in every backward.
        return part if len(part) else idx[:1]

    def step(self, model, fn, *args):
        """fn(model, *args) -> (loss, ...) through DDP; the loss comes back weighted by this
        rank's share, so the averaged gradient is the global batch's. A new model (one that
        compacted training swapped in) or a new fn is wrapped anew."""
        if self._wrapped is None or self._wrapped[0] is not model or self._wrapped[1] is not fn:
            ids = [self.device] if self.device.type == "cuda" else None
            self._wrapped = (model, fn, DistributedDataParallel(_Step(model, fn), device_ids=ids))
        loss, *rest = self._wrapped[2](*args)
        return (loss * self._scale, *rest)

    def batch_totals(self, loss, logits, y):
        """(mean loss over the global batch, correct predictions in it), the same on every rank."""
        correct = (logits.argmax(1) == y)[:self._n_local].sum()
        t = torch.stack([loss.detach().double() / self.world, correct.double()])
        dist.all_reduce(t)
        return float(t[0]), float(t[1])

    def average(self, tensors):
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    @torch.no_grad()
    def update_masks(self, model, fn):
        """fn() (a mask update) on rank 0, then every rank takes rank 0's weights and masks."""
        with self.main_only():
            if self.is_main:
                fn()
        for t in model.state_dict().values():
            dist.broadcast(t, 0)

    @contextmanager
    def main_only(self):
        """Around a block only rank 0 runs: its outcome reaches every rank; an error there
        stops the others with the same kind of exit (2 for a user's error, 3 for a bug)."""
        try:
            yield
        except Exception as e:
            if self.is_main:
                self.from_main((isinstance(e, (VeriSparseError, OSError)), " ".join(str(e).split())[:300]))
            raise
        failed = self.from_main(None)
        if failed is not None:
            user_error, what = failed
            raise (VeriSparseError if user_error else RuntimeError)(
                f"rank {self.rank} stopped: rank 0 failed ({what})")

    def from_main(self, obj):
        """Rank 0's obj on every rank (pickled within the job; never read from a file)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def same_everywhere(self, fingerprint, what):
        """Refuse a job whose ranks disagree on fingerprint() (e.g. a node that holds other data)."""
        seen = [None] * self.world
        dist.all_gather_object(seen, fingerprint())
        if any(s != seen[0] for s in seen):
            raise VeriSparseError(f"the processes disagree on {what}; give every node the same files")


def _leave():
    if dist.is_initialized():
        dist.destroy_process_group()


# --- launching: `verisparse train --nproc N` ----------------------------------------------

def launch(nproc: int, argv: list[str], device: str) -> int:
    """Run `python -m verisparse <argv>` in nproc processes through torch.distributed.run
    (torchrun --standalone) and return the CLI exit code: 0, or a failed rank's
    2/3 (a rank killed by a signal counts as 2: resume the run with --resume)."""
    import uuid

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    if device != "cpu" and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise VeriSparseError(f"--nproc {nproc} needs {nproc} GPUs, torch sees {torch.cuda.device_count()}; "
                              "lower --nproc or pass --device cpu")
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun would give each process 1 thread; share the cores out instead.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # torchrun's own parser reads only its options (ours could pass for abbreviations of its
    # own, e.g. --nproc); the settings are those of `torchrun --standalone`.
    args = torchrun.parse_args(["--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
                                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
                                "--rdzv-id", str(uuid.uuid4()), "-m", "verisparse"])
    config, cmd, cmd_args = torchrun.config_from_args(args)
    try:
        elastic_launch(config, cmd)(*cmd_args, *argv)
    except ChildFailedError as e:
        codes = {rank: failure.exitcode for rank, failure in sorted(e.failures.items())}
        own = [c for c in codes.values() if c in (2, 3)]
        # torchrun stops the other processes with SIGTERM when one fails; any other signal
        # killed a process from outside, and the others then lose their connection to it
        killed = any(c < 0 and c != -signal.SIGTERM for c in codes.values())
        if own and not killed:  # that rank printed what to do
            return own[0]
        # every failed rank, since torchrun may record the consequences first
        what = ", ".join(f"process {rank} ended with " + (f"signal {-c}" if c < 0 else f"exit code {c}")
                         for rank, c in codes.items())
        print(f"error: {what}; continue the run with --resume", file=sys.stderr)
        return 2 if any(c < 0 for c in codes.values()) else 3
    except SignalException as e:  # Ctrl-C or SIGTERM on the launcher: torchrun has stopped the processes
        print(f"error: stopped by signal {e.sigval.name}; continue the run with --resume", file=sys.stderr)
        return 2
    return 0
