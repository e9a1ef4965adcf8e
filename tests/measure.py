"""Measuring a command's wall time and peak memory (tests and ``make bench``)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float
    peak_rss_mb: float


def measure(command: list) -> Measured:
    """Run ``command``; its peak RSS is its own VmHWM, sampled every 5 ms.

    (rusage would count the memory of this process too, which a child shares
    until it execs.)
    """
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.005)
    return Measured(proc.returncode, time.perf_counter() - started, peak_kb / 1024)
