"""Cluster targets (issue: scale-out on Dask), on LocalClusters of single-threaded worker processes.

- verify_archives over 4 archives of 50,000 attestations: 2 workers at least 1.6x 1 worker, and at least 0.85x
  the kit's own workers=2 process pool on one machine;
- the client's peak memory verifying 20 archives of 50,000 attestations at most 1.5x its peak for one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from parmana_lab.batch import verify_archives

from .bench_verify import _archive
from .common import Measure, peak_rss_mb

EACH = int(50_000 * float(os.environ.get("BENCH_SCALE", "1")))


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return cluster, Client(cluster)


def _rate(paths, store, total: int, **kw) -> float:
    start = time.perf_counter()
    report = verify_archives(paths, store, progress=False, **kw)
    elapsed = time.perf_counter() - start
    assert report.summary["attestations"]["verified"] == total, report
    return total / elapsed


def bench_cluster_scaling() -> list[Measure]:
    with tempfile.TemporaryDirectory() as tmp:
        path, store = _archive(Path(tmp), EACH)
        paths = [path] * 4  # four archives' worth of work; every task reads its own byte range
        rates, pool = {}, 0.0
        for workers in (1, 2):
            cluster, client = _cluster(workers)
            try:
                _rate(paths[:1], store, EACH, client=client)  # warm the workers' imports
                for _ in range(2 if workers == 1 else 3):  # the pool alternates with the 2-worker cluster: same minutes
                    rates[workers] = max(rates.get(workers, 0.0), _rate(paths, store, 4 * EACH, client=client))
                    if workers == 2:
                        pool = max(pool, _rate(paths, store, 4 * EACH, workers=2))
            finally:
                client.close()
                cluster.close()
    return [Measure(f"verify_archives 4x{EACH:,} on Dask: 2 workers vs 1 worker", rates[2], rates[1], "att/s", 1.6),
            Measure("verify_archives on Dask 2 workers vs the kit's workers=2 pool", rates[2], pool, "att/s", 0.85)]


def bench_cluster_memory() -> list[Measure]:
    with tempfile.TemporaryDirectory() as tmp:
        path, store = _archive(Path(tmp), EACH)
        cluster, client = _cluster(2)
        try:
            _rate([path], store, EACH, client=client)
            one = peak_rss_mb()
            _rate([path] * 20, store, 20 * EACH, client=client)
            twenty = peak_rss_mb()
        finally:
            client.close()
            cluster.close()
    return [Measure(f"client peak memory, 20 vs 1 archive of {EACH:,} on Dask (MB)", twenty, one, "MB", 1.5,
                    higher_is_better=False)]


BENCHES = (bench_cluster_scaling, bench_cluster_memory)
