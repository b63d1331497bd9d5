"""Audit targets (issue: reproducibility and replay detection).

- find_replays over 4 archives (1,000,000 attestations in all) at most 2x a bare
  DuckDB GROUP BY execution_fingerprint HAVING count(*) > 1 over the same files;
- reproduce at least 0.5x a bare loop that only evaluates the policies on the same signals.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import duckdb

from parmana_lab import PolicyStore, Runtime, default_policy_dir, evaluate
from parmana_lab.replays import find_replays
from parmana_lab.reproducibility import reproduce

from .bench_runtime import loan_requests
from .common import Measure

SCALE = float(os.environ.get("BENCH_SCALE", "1"))


def _archives(tmp: Path, count: int, each: int) -> list[Path]:
    paths = []
    for i in range(count):
        with Runtime(tmp / f"ws{i}", policies=default_policy_dir()) as rt:
            for start in range(0, each, 10_000):
                rt.execute_many(loan_requests(min(10_000, each - start), seed=1000 * i + start))
            # every archive also replays a few executions of the first one
            rt.execute_many(loan_requests(50, seed=0))
            paths.append(Path(rt.export_archive(tmp / f"archive{i}").path))
    return paths


def bench_replays() -> list[Measure]:
    each = int(250_000 * SCALE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _archives(Path(tmp), 4, each)
        files = [str(p / "attestations.jsonl") for p in paths]
        total = sum(sum(1 for _ in open(f, "rb")) for f in files)
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        bare_query = (
            f"SELECT execution_fingerprint, count(*) FROM read_json({files!r}, format='newline_delimited', "
            "columns={'execution_fingerprint': 'VARCHAR'}) GROUP BY ALL HAVING count(*) > 1"
        )
        kit_times, bare_times = [], []
        for _ in range(3):
            start = time.perf_counter()
            found = con.execute(bare_query).fetchall()
            bare_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with find_replays(paths) as report:
                replayed = report.summary.replayed_fingerprints
            kit_times.append(time.perf_counter() - start)
            assert replayed == len(found) > 0
    kit, bare = min(kit_times), min(bare_times)
    return [Measure(f"find_replays 4 archives ({total:,} records): time vs bare GROUP BY", kit, bare, "s", 2.0,
                    higher_is_better=False)]


def bench_reproduce(n: int = 20_000) -> list[Measure]:
    with tempfile.TemporaryDirectory() as tmp:
        with Runtime(Path(tmp) / "ws", policies=default_policy_dir()) as rt:
            rt.execute_many(loan_requests(n, seed=5))
            path = Path(rt.export_archive(Path(tmp) / "archive").path)
        store = PolicyStore(default_policy_dir())
        work = []
        for line in (path / "signals.jsonl").read_bytes().splitlines():
            work.append(json.loads(line)["signals"])
        policy = store.get("loan-approval", "1.1.0")
        best_kit = best_bare = 0.0
        for _ in range(3):
            start = time.perf_counter()
            for signals in work:
                evaluate(policy, signals)
            best_bare = max(best_bare, len(work) / (time.perf_counter() - start))
            start = time.perf_counter()
            report = reproduce(path)
            best_kit = max(best_kit, len(work) / (time.perf_counter() - start))
            assert report.summary.statuses["MATCH"] == len(work)
    return [Measure("reproduce vs bare evaluate loop", best_kit, best_bare, "exec/s", 0.5)]


BENCHES = (bench_replays, bench_reproduce)
