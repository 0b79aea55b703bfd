"""The arena TFLM needs for the same model, read from its Python interpreter (tflite_micro).

TFLM's RecordingMicroAllocator prints, on the C stderr, the arena's head (the tensors its
greedy memory planner places: activations, the input and output, scratch buffers) and its tail
(persistent data: eval tensors, op data, node structs; their sizes are the 64-bit host build's,
larger than on a 32-bit microcontroller). The head is what the firmware's one static arena
replaces, so it is the number the arena is compared with. The smallest arena_size TFLM's
AllocateTensors accepts (found by bisection) is larger again: it also holds the planner's
working memory while it plans."""
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


def _interpreter(data: bytes, arena_size=None):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(data, arena_size=arena_size,
                                          intrepreter_config=runtime.InterpreterConfig.kAllocationRecording)


def _accepts(data: bytes, arena_size: int) -> bool:
    try:
        _interpreter(data, arena_size)
    except RuntimeError:  # "TFLM failed to allocate tensors"
        return False
    return True


def tflm_arena(data: bytes) -> dict:
    """head_bytes (planned tensors), tail_bytes, total_bytes and min_arena_size_bytes of TFLM for
    the model; raises VeriSparseError when TFLM cannot run it."""
    with tempfile.TemporaryFile(mode="w+") as log:
        with _c_stderr(log):
            try:
                m = _interpreter(data)
                m.print_allocations()
            except RuntimeError as e:
                m = e
            lo, hi = 0, len(data) * 10 + 4096  # the interpreter's own default arena, and some
            if not isinstance(m, RuntimeError):
                while hi - lo > 16:  # TFLM aligns buffers to 16 bytes
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if _accepts(data, mid) else (mid, hi)
        log.seek(0)
        text = log.read()
    if isinstance(m, RuntimeError):
        raise VeriSparseError(f"TFLM cannot run the model ({m}): {text.strip()[-500:]}")
    found = {k: int(v) for k, v in _LINE.findall(text)}
    if set(found) != {"total", "head", "tail"}:
        raise VeriSparseError("TFLM's interpreter did not report its arena use; check the tflite-micro package "
                              f"(`pip install tflite-micro`): {text.strip()[-500:]}")
    return dict(head_bytes=found["head"], tail_bytes=found["tail"], total_bytes=found["total"],
                min_arena_size_bytes=hi,
                how="tflite_micro RecordingMicroAllocator (64-bit host build, reference kernels): head = tensors "
                    "its memory planner places; min_arena_size = smallest arena_size its AllocateTensors accepts "
                    "(bisected to 16 bytes)")
