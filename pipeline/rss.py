"""This process's own peak resident set size.

getrusage(RUSAGE_SELF).ru_maxrss is not that for a process started by another: Linux carries the
parent's high-water mark across fork and exec (the exec keeps the larger of the old and new
address space's peaks), so a compaction child spawned by a 380 MiB job reported 380 MiB before it
had done anything. /proc/self/status's VmHWM is the high-water mark of this address space alone;
ru_maxrss is the fallback where there is no /proc.
"""

from __future__ import annotations

import sys
from typing import Optional


def own_peak_rss_mib() -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError):
        return None
