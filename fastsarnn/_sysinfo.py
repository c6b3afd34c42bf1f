"""What the machine is: CPU model, cores, SIMD flags, load, GPU (for ``info`` and ``bench``)."""

from __future__ import annotations

import os
import platform

_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f")


def cpu_info() -> dict:
    """CPU model, logical cores and the SIMD flags fastsarnn cares about."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "simd": [f for f in _SIMD_FLAGS if f in flags]}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_per_core() -> float | None:
    """The 1-minute load average divided by the number of cores (None where unknown)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None
