"""Keep freed memory in the process, so that model calls stop faulting pages in (glibc).

torch's CPU allocator does not cache: each model call allocates its activations afresh and
frees them at the end. glibc hands freed memory at the top of its heap back to the system
once more than 128 kB is free (``M_TRIM_THRESHOLD``) and serves blocks above a moving
threshold with fresh ``mmap`` pages, so every call faults its pages in again, each one
zero-filled by the kernel. Measured here (192 atoms of water, one thread, per call): a
metatrain PET took 6,662 minor page faults and 14 ms of system time, 0.146 s in all, and
0.116 s with no faults; the shipped PET 2,100 faults, 0.115 -> 0.105 s.

:func:`keep_freed_memory` (called by :class:`symbreak.evaluator.Evaluator`) sets, once per
process: trimming only beyond 2 GiB free, 512 MiB of top pad per heap growth, and glibc's
largest ``mmap`` threshold (32 MiB; larger blocks are still mapped per call). The cost:
the process keeps the heap of its largest call instead of shrinking after it, as a long MD
run does anyway.
``SYMBREAK_KEEP_FREED_MEMORY=0`` leaves glibc's defaults; elsewhere than glibc, nothing is
done.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TOP_PAD = 512 * 1024 * 1024
#: mallopt takes an int: trim only beyond 2 GiB of free memory at the heap's top.
NO_TRIM = 2**31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module says (once per process); whether it was done."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("SYMBREAK_KEEP_FREED_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL(None)
                # glibc only: mallopt's parameters differ elsewhere
                if not hasattr(libc, "gnu_get_libc_version"):
                    return False
                mallopt = libc.mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            except (OSError, AttributeError):
                return False
            _applied = all(
                mallopt(param, value) == 1
                for param, value in (
                    (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
                    (M_TOP_PAD, TOP_PAD),
                    (M_TRIM_THRESHOLD, NO_TRIM),
                )
            )
    return _applied
