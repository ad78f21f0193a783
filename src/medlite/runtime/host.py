"""What a runtime needs to know about the process it runs in: its cores and its memory.

Standard library on Linux (the edge runner's import rule); psutil only where the kernel keeps
no high-water mark we can read directly (Windows).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medlite.runtime.errors import ArtifactError

MB = 1024 * 1024


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    """0 means "all cores this process may use"; the resolved number is passed to the runtime, so
    the thread count we report is the one that ran."""
    if threads < 0:
        raise ArtifactError(f"--threads {threads}: must be 0 (all cores) or a positive number")
    return threads or cpu_count()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: the kernel's high-water mark.

    Linux: VmHWM from /proc/self/status. psutil has no peak RSS on Linux (psutil issue 383), and
    ru_maxrss survives execve, so a worker started from a large parent would report the parent's
    peak. Windows: psutil's peak working set. macOS and the BSDs: ru_maxrss (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 2)
    if sys.platform == "win32":
        import psutil  # the one platform without the resource module

        return round(psutil.Process().memory_info().peak_wset / MB, 2)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / MB if sys.platform == "darwin" else peak / 1024, 2)
