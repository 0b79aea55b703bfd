"""What training costs: peak memory and the multiply-accumulates the training steps performed.

Peak memory: on CUDA, torch.cuda.max_memory_allocated over the epoch (reset at each epoch
start); on CPU, the process's peak resident set size (resource.getrusage), which is a
process-lifetime peak: it includes the dataset, torch itself and everything before this
epoch, and a resumed run starts a new process. The run's figure is the largest epoch's.

MACs: one multiply-accumulate per multiply in the matrix products and convolutions that a
training step runs (forward, IBP / CROWN-IBP bound passes, RigL's extra gradient, and the
backward pass), as torch.utils.flop_counter counts them from the shapes actually computed
(its FLOPs / 2). A masked layer computed densely counts as dense; a compacted layer counts
at its compacted size. Elementwise ops (ReLU relaxations, masks, the optimiser) are not
counted. Evaluation is not training and is not counted.

Counting every op of every step through a dispatch mode costs more than the step on small
models, so each distinct step is counted once and reused: the key holds everything the step's
control flow reads (passed in by the loop: phase, batch size, which loss terms run) and the
shape of every parameter of the module the step computes with. Under torchrun each rank
counts its own slice; the log holds rank 0's. That holds because the training
losses' work depends on shapes alone (CROWN-IBP uses IBP intermediate bounds, so no step's
work depends on how many neurons are unstable).
"""
from __future__ import annotations

import resource
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode


def _weight_shapes(module):
    return tuple(tuple(p.shape) for p in module.parameters())


class Resources:
    def __init__(self):
        self.device, self.train_macs, self.epoch_macs = torch.device("cpu"), 0, 0
        self._seen: dict = {}
        self._key = self._mode = None

    def start(self, device: torch.device, train_macs: int = 0):
        """train_macs: what the epochs before a resume performed (from the checkpoint)."""
        self.device, self.train_macs = device, int(train_macs)

    def epoch_start(self):
        self.epoch_macs = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def step_begin(self, key: tuple, module):
        """Call before the loss, with the module whose weights the step computes with (the
        compacted one where training is compacted); step_end after the optimiser step."""
        self._key = (key, _weight_shapes(module))
        if self._key not in self._seen:
            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()

    def step_end(self):
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._seen[self._key] = self._mode.get_total_flops() // 2
            self._mode = None
        self.epoch_macs += self._seen[self._key]

    def abort(self):
        """Leave the counting mode if a step raised between step_begin and step_end."""
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def epoch_record(self) -> dict:
        self.train_macs += self.epoch_macs
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_allocated"
        else:
            unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit, "process_peak_rss"
        return dict(macs=self.epoch_macs, train_macs=self.train_macs, peak_memory_bytes=int(peak),
                    peak_memory_kind=kind)


def run_totals(log: list[dict]) -> dict:
    """The run's training MACs and its peak memory (the largest epoch's), from train_log.jsonl."""
    if not log:
        return dict(train_macs=0, peak_memory_bytes=0, peak_memory_kind=None)
    return dict(train_macs=log[-1]["train_macs"], peak_memory_bytes=max(r["peak_memory_bytes"] for r in log),
                peak_memory_kind=log[-1]["peak_memory_kind"])
