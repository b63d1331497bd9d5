"""Shared helpers: ratio measurements against a bare baseline in the same run."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Measure:
    """One target: the kit's figure, the bare baseline's, and the ratio that is judged."""

    name: str
    kit: float
    baseline: float
    unit: str
    target: float
    higher_is_better: bool = True  # ratio = kit / baseline must be >= target; else <= target
    peak_mb: float = 0.0
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.kit / self.baseline if self.baseline else float("inf")

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def best_rate(work: Callable[[], int], rounds: int = 5) -> float:
    """Items per second of the fastest round (least disturbed by a noisy neighbour)."""
    best = 0.0
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        n = work()
        elapsed = time.perf_counter() - start
        best = max(best, n / elapsed)
    return best


def interleaved(kit: Callable[[], int], bare: Callable[[], int], rounds: int = 5) -> tuple[float, float]:
    """Best rate of each, alternating runs so both see the same machine conditions."""
    k = b = 0.0
    for _ in range(rounds):
        b = max(b, best_rate(bare, 1))
        k = max(k, best_rate(kit, 1))
    return k, b


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: Linux carries a
    parent's ru_maxrss over fork and exec, which would charge the parent's memory."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
