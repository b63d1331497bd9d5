"""`make bench`: every performance target, measured as a ratio against a bare
baseline in the same run, one table, and a final `bench: N/M targets met` line.

Each benchmark runs in its own process so its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import bench_audits, bench_cluster, bench_log, bench_runtime, bench_verify  # noqa: E402
from benchmarks.common import Measure, peak_rss_mb  # noqa: E402

MODULES = (bench_runtime, bench_verify, bench_audits, bench_log, bench_cluster)


def _child(fn, queue) -> None:
    try:
        measures = fn()
        peak = peak_rss_mb()
        for m in measures:
            m.peak_mb = m.peak_mb or peak
        queue.put(("ok", measures))
    except BaseException as exc:  # reported as a failed target, not a crash of the table
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_isolated(fn) -> list[Measure]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status == "error":
        return [Measure(f"{fn.__name__} (crashed: {payload})", 0.0, 1.0, "", 1.0)]
    return payload


def main(argv: list[str]) -> int:
    wanted = set(argv)
    benches = [fn for mod in MODULES for fn in mod.BENCHES if not wanted or fn.__name__ in wanted]
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}")
    rows: list[Measure] = []
    header = f"{'measure':<58} {'kit':>12} {'baseline':>12} {'ratio':>7} {'target':>8} {'peak MB':>8}  result"
    print(header)
    print("-" * len(header))
    for fn in benches:
        for m in run_isolated(fn):
            rows.append(m)
            op = ">=" if m.higher_is_better else "<="
            print(
                f"{m.name:<58} {m.kit:>12,.1f} {m.baseline:>12,.1f} {m.ratio:>7.2f} {op + format(m.target, '.2f'):>8} "
                f"{m.peak_mb:>8.0f}  {'PASS' if m.passed else 'FAIL'}",
                flush=True,
            )
    met = sum(m.passed for m in rows)
    print(f"bench: {met}/{len(rows)} targets met")
    return 0 if met == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
