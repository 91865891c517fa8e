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
