"""The arena TFLM needs for the same model, read from its Python interpreter (tflite_micro).

TFLM's RecordingMicroAllocator prints, on the C stderr, the arena's head (the tensors its
greedy memory planner places: activations, the input and output, scratch buffers) and its tail
(persistent data: eval tensors, op data, node structs; their sizes are the 64-bit host build's,
larger than on a 32-bit microcontroller). The head is what the firmware's one static arena
replaces, so it is the number the arena is compared with. (Finding the smallest arena_size TFLM
accepts by bisection is no alternative: its AllocateTensors crashes the process, rather than
failing, on some models given a small arena.)"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager

from verisparse.errors import VeriSparseError

_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


@contextmanager
def _c_stderr(sink):
    """Redirects file descriptor 2 (where TFLM's C++ code prints) into sink while the block runs."""
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tflm_arena(data: bytes, arena_size: int) -> dict:
    """head_bytes (the tensors TFLM's planner places), tail_bytes and total_bytes of TFLM's arena
    for the model, given an arena_size larger than it needs; raises VeriSparseError when TFLM
    cannot run the model."""
    from tflite_micro.python.tflite_micro import runtime

    with tempfile.TemporaryFile(mode="w+") as log:
        with _c_stderr(log):
            try:
                runtime.Interpreter.from_bytes(data, arena_size=arena_size, intrepreter_config=runtime.
                                               InterpreterConfig.kAllocationRecording).print_allocations()
                error = None
            except RuntimeError as e:
                error = e
        log.seek(0)
        text = log.read()
    if error is not None:
        raise VeriSparseError(f"TFLM cannot run the model ({error}): {text.strip()[-500:]}")
    found = {k: int(v) for k, v in _LINE.findall(text)}
    if set(found) != {"total", "head", "tail"}:
        raise VeriSparseError("TFLM's interpreter did not report its arena use; check the tflite-micro package "
                              f"(`pip install tflite-micro`): {text.strip()[-500:]}")
    return dict(head_bytes=found["head"], tail_bytes=found["tail"], total_bytes=found["total"],
                how="tflite_micro's RecordingMicroAllocator (64-bit host build, reference kernels): head = the "
                    "tensors its memory planner places, tail = persistent data")
