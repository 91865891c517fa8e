"""This process's memory as the kernel counts it (``/proc/self/status``), without importing torch:
the training callbacks' per-rank memory report and every benchmark read it here."""

from __future__ import annotations


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, bytes; empty where ``/proc`` is not readable."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
    except OSError:  # pragma: no cover
        pass
    return out


def release_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the kernel (``malloc_trim``), so that RSS
    reads the live objects rather than the allocator's cache (a no-op where there is no glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover
        pass
