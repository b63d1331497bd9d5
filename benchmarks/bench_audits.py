"""Audit targets (issue: reproducibility and replay detection).

- find_replays over 4 archives (1,000,000 attestations in all) at most 2x a bare
  DuckDB GROUP BY execution_fingerprint HAVING count(*) > 1 over the same files, and at most 3x
  on a LocalCluster of 2 single-threaded workers (scale-out issue);
- reproduce at least 0.35x a bare loop doing the same unavoidable work per record: parse the
  attestation and signals lines with orjson, canonicalize and hash the signals, call `decide`
  on the policy (re-based in the fast-paths issue: an evaluate-only loop is no floor).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import duckdb
import orjson

from parmana_lab import PolicyStore, Runtime, canonicalize, default_policy_dir
from parmana_lab.evaluate import decide
from parmana_lab.replays import find_replays
from parmana_lab.reproducibility import reproduce

from .bench_runtime import loan_requests
from .common import Measure, interleaved

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
        cluster_times = _on_cluster(paths, Path(tmp), len(found))
    kit, bare = min(kit_times), min(bare_times)
    return [Measure(f"find_replays 4 archives ({total:,} records): time vs bare GROUP BY", kit, bare, "s", 2.0,
                    higher_is_better=False),
            Measure("find_replays on a 2-worker Dask cluster: time vs bare GROUP BY", min(cluster_times), bare, "s", 3.0,
                    higher_is_better=False, note="pays for bucketing through Parquet, so it can outgrow one machine")]


def _on_cluster(paths: list[Path], tmp: Path, expected: int) -> list[float]:
    from distributed import Client, LocalCluster

    times = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for n in range(3):
            start = time.perf_counter()
            with find_replays(paths, client=client, scratch=tmp / f"scratch{n}") as report:
                assert report.summary.replayed_fingerprints == expected
            times.append(time.perf_counter() - start)
    return times


def bench_reproduce(n: int = 20_000) -> list[Measure]:
    with tempfile.TemporaryDirectory() as tmp:
        with Runtime(Path(tmp) / "ws", policies=default_policy_dir()) as rt:
            rt.execute_many(loan_requests(n, seed=5))
            path = Path(rt.export_archive(Path(tmp) / "archive").path)
        store = PolicyStore(default_policy_dir())
        lines = list(zip((path / "attestations.jsonl").read_bytes().splitlines(),
                         (path / "signals.jsonl").read_bytes().splitlines()))

        def bare() -> int:
            for att_line, sig_line in lines:
                att = orjson.loads(att_line)
                signals = orjson.loads(sig_line)["signals"]
                hashlib.sha256(canonicalize(signals)).hexdigest()
                decide(store.get(att["policyId"], att["policyVersion"]), signals)
            return len(lines)

        def kit() -> int:
            report = reproduce(path)
            assert report.summary.statuses["MATCH"] == len(lines)
            return len(lines)

        best_kit, best_bare = interleaved(kit, bare, rounds=3)
    return [Measure("reproduce vs bare parse+hash+decide loop", best_kit, best_bare, "exec/s", 0.35)]


BENCHES = (bench_replays, bench_reproduce)
