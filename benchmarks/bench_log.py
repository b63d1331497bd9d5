"""Transparency-log targets (issue: transparency).

- On an audit DB of 1,000,000 attestations: signing a checkpoint (the steady state: a checkpoint
  exists and 1,000 records came since, which are rehashed before signing) and producing one
  inclusion proof, each at least 100x faster than recomputing the root from all lines.
- execute_many with the log maintained at least 0.9x its rate without it (the same runtime with
  the subtree-hash writes switched off, alternating rounds on fresh workspaces).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from parmana_lab import Runtime, default_policy_dir, translog
from parmana_lab.merkle import MerkleBuilder

from .bench_runtime import loan_requests
from .common import Measure

SCALE = float(os.environ.get("BENCH_SCALE", "1"))


def _no_nodes(con, size, lines, builder=None):
    return {"level": np.zeros(0, dtype=np.int8), "end_leaf": np.zeros(0, dtype=np.int64), "hash": np.zeros(0, dtype=object)}


def bench_log_overhead(n: int = 10_000, rounds: int = 5) -> list[Measure]:
    requests = loan_requests(n, seed=21)
    real = translog.append_nodes
    best = {True: 0.0, False: 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for with_log in (False, True):
                translog.append_nodes = real if with_log else _no_nodes
                try:
                    with Runtime(Path(tmp) / f"ws{r}{with_log}", policies=default_policy_dir()) as rt:
                        start = time.perf_counter()
                        results = rt.execute_many(requests)
                        elapsed = time.perf_counter() - start
                finally:
                    translog.append_nodes = real
                assert sum(1 for x in results if hasattr(x, "signature")) == n
                best[with_log] = max(best[with_log], n / elapsed)
    return [Measure("execute_many 10k with the log vs without it", best[True], best[False], "exec/s", 0.9)]


def bench_log_proofs() -> list[Measure]:
    total = int(1_000_000 * SCALE)
    with tempfile.TemporaryDirectory() as tmp, Runtime(Path(tmp) / "ws", policies=default_policy_dir()) as rt:
        for start in range(0, total - 1_000, 10_000):
            rt.execute_many(loan_requests(min(10_000, total - 1_000 - start), seed=start))
        rt.log.checkpoint()
        rt.execute_many(loan_requests(1_000, seed=-1))
        total = rt.log.info().size  # random requests may repeat one now and then: those are refused replays
        middle = rt.db.sql("SELECT executionId FROM attestations WHERE log_index = ?", [total // 2]).iloc[0, 0]

        def recompute() -> float:
            begin = time.perf_counter()
            builder = MerkleBuilder()
            cur = rt.db.connection.cursor()
            cur.execute("SELECT canonical FROM attestations WHERE log_index IS NOT NULL ORDER BY log_index")
            while rows := cur.fetchmany(50_000):
                builder.add_many([r[0].encode("utf-8") for r in rows])
            cur.close()
            assert builder.count == total
            return time.perf_counter() - begin, builder.root()

        bare, root = min(recompute() for _ in range(2))
        begin = time.perf_counter()
        checkpoint = rt.log.checkpoint()
        sign = time.perf_counter() - begin
        assert checkpoint.size == total and checkpoint.root.hex() == root
        proofs = []
        for _ in range(5):
            begin = time.perf_counter()
            rt.log.prove(middle, checkpoint)
            proofs.append(time.perf_counter() - begin)
    return [
        Measure(f"sign a checkpoint of {total:,} (1,000 new): speed-up vs root recompute", bare / sign, 1.0, "x", 100.0),
        Measure(f"one inclusion proof in {total:,}: speed-up vs root recompute", bare / min(proofs), 1.0, "x", 100.0),
    ]


BENCHES = (bench_log_overhead, bench_log_proofs)
