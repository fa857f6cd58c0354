"""The C heap of the sidecar's processes: large request buffers reused from one request to the next in a
worker, and the transient memory of start-up given back before anything inherits or keeps it.

A 10 MB body lives in three buffers of its size (the bytes received, their decoded text, the parsed
string). glibc maps each with ``mmap`` and returns it on ``free``, or trims the heap's top once more
than twice the (self-raising) mapping threshold is free, so every request faults its buffers in again
page by page: about 4,850 page faults and a third of the CPU of a 10 MB OCR request. Raising both
thresholds to glibc's ceiling keeps up to 32 MiB of freed heap in each worker for the next body.
"""

from __future__ import annotations

import ctypes

KEEP = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit; the default body limit too
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h


def keep_large_buffers(keep: int = KEEP) -> bool:
    """Serve allocations below ``keep`` from the heap and keep up to ``keep`` of it free; False where
    the C library has no ``mallopt`` (musl accepts and ignores it, macOS has none): nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, keep)) and bool(mallopt(M_TRIM_THRESHOLD, keep))


def trim() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's ``malloc_trim``); False without it.

    Compiling the validators in the gunicorn master leaves ~8 MB of freed Rust and Python buffers in its
    heap: trimmed before the fork, no worker counts them in its memory."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(malloc_trim(0))
