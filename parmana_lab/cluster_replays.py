"""Replay detection on a Dask cluster: the same findings, in the same order, as find_replays on one machine.

Dask schedules and DuckDB groups. Pass 1, a task per source on the workers: read the
source as find_replays does (damaged archives line by line, naming what cannot be
read) and write its records to Parquet under ``scratch`` twice, split into buckets
by hash(execution_fingerprint) and by hash(executionId). Pass 2, a task per bucket:
the same GROUP BYs find_replays runs (replays.group_records), over that bucket only.
Every group is one fingerprint or one executionId, so it lies whole in one bucket;
the client joins the buckets' results and sorts them as one machine would. The
report's ``sql()`` reads the Parquet files (so ``scratch`` must be shared storage).
"""

from __future__ import annotations

import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .archive import ArchiveError
from .audit import open_in_process, source_name
from .cluster import _guarded, _unwrap
from .replays import (
    _BAD,
    _CONTENT,
    ReplayReport,
    _create_views,
    _part,
    _strict_part,
    group_records,
    index_records,
    memory_connection,
    reused_ids,
)


def _worker_threads() -> int | None:
    """A Dask worker's share of the cores (its nthreads), so DuckDB does not oversubscribe the machine."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None


def _bucket_source(i: int, source: Any, name: str, run: str, buckets: int) -> dict[str, Any]:
    """Pass 1 for one source: its records into by_fp/src{i}/ and by_id/src{i}/, one folder per bucket."""
    con, stack = memory_connection(_worker_threads()), ExitStack()
    try:
        sql, lines = _part(con, stack, i, source, name)
        unreadable: list[dict[str, Any]] = []
        try:
            damaged = lines is not None and con.execute(f"SELECT count(*) FROM ({sql}) WHERE {_BAD}").fetchall()[0][0] > 0
        except duckdb.Error:
            damaged = lines is not None
        if damaged:
            sql, _ = _strict_part(con, i, name, lines, unreadable)
        counts = con.execute(f"SELECT count(*), count(*) FILTER (WHERE import_status = 'unverified') FROM ({sql})").fetchall()[0]
        # the fingerprint split keeps whole records (the report's sql() reads them); the executionId split only what
        # the reuse grouping needs: the content hash is computed here, once, as group_records computes it
        for key, columns, by in (("by_fp", "*", "execution_fingerprint"),
                                 ("by_id", f"executionId, source, {_CONTENT} AS content", "executionId")):
            target = Path(run) / key / f"src{i}"
            target.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"COPY (SELECT {columns}, hash({by}) % {buckets} AS bucket FROM ({sql})) TO '{_text(str(target))}' "
                        "(FORMAT PARQUET, PARTITION_BY (bucket), OVERWRITE true)")  # a task run twice writes the same
        return {"counts": tuple(counts), "unreadable": unreadable}
    finally:
        con.close()
        stack.close()


def bucket_task(i: int, source: str, name: str, run: str, buckets: int) -> tuple[str, Any]:
    return _guarded(_bucket_source, source, i, source, name, run, buckets)


def _files(run: str | Path, key: str, bucket: int | str = "*") -> str | None:
    """A SQL list of the Parquet files of one bucket (every bucket: "*") of one split; None when there is none."""
    found = sorted(Path(run, key).glob(f"src*/bucket={bucket}/*.parquet"))
    return "[" + ", ".join(f"'{_text(str(f))}'" for f in found) + "]" if found else None


def _group_bucket(run: str, bucket: int) -> tuple[pd.DataFrame | None, pd.DataFrame | None, int]:
    """Pass 2 for one bucket: group_records over the fingerprint bucket (replays) and the executionId bucket (reuse)."""
    con = memory_connection(_worker_threads())
    try:
        occurrences = reused = None
        copies = 0
        by_fp, by_id = _files(run, "by_fp", bucket), _files(run, "by_id", bucket)
        if by_fp is not None:
            _create_views(con, [(f"SELECT * FROM read_parquet({by_fp}, hive_partitioning = false)", None)])
            index_records(con)
            occurrences, _, _ = group_records(con)
        if by_id is not None:
            reused, copies = reused_ids(con, f"read_parquet({by_id}, hive_partitioning = false)", "content")
        return occurrences, reused, copies
    finally:
        con.close()


def group_task(run: str, bucket: int) -> tuple[str, Any]:
    return _guarded(_group_bucket, f"{run} bucket {bucket}", run, bucket)


def find_replays_on_cluster(client: Any, sources: list[Any], *, scratch: str | Path | None = None,
                            buckets: int | None = None) -> ReplayReport:
    if not sources:
        raise ArchiveError("ARC-005", "find_replays needs at least one archive or audit DB")
    names = [source_name(s) for s in sources]
    run = Path(scratch if scratch is not None else tempfile.mkdtemp(prefix="parmana-replays-")) / f"replays-{uuid.uuid4().hex}"
    run.mkdir(parents=True)
    buckets = buckets or max(4, 2 * len(client.scheduler_info()["workers"]))
    passes = []
    for i, (source, name) in enumerate(zip(sources, names)):
        if open_in_process(source) is not None:  # held by this process: only it can read it
            passes.append(_guarded(_bucket_source, name, i, source, name, str(run), buckets))
        else:
            passes.append(client.submit(bucket_task, i, str(source), name, str(run), buckets, pure=False))
    firsts = [_unwrap(p if isinstance(p, tuple) else p.result()) for p in passes]  # every source bucketed before grouping
    every = _files(run, "by_fp")
    if every is None:  # no records anywhere (empty sources): nothing to distribute
        from .replays import find_replays

        return find_replays(sources)
    groups = [client.submit(group_task, str(run), b, pure=False) for b in range(buckets)]
    parts = [_unwrap(g.result()) for g in groups]
    con = memory_connection()
    try:
        _create_views(con, [(f"SELECT * FROM read_parquet({every}, hive_partitioning = false)", None)])
        # some bucket of each kind holds records (there are files), so each concat has a frame with the columns
        occurrences = pd.concat([p[0] for p in parts if p[0] is not None], ignore_index=True)
        occurrences = occurrences.sort_values(["execution_fingerprint", "executionId", "src", "line"], kind="stable")
        reused = pd.concat([p[1] for p in parts if p[1] is not None], ignore_index=True)
        reused = reused.sort_values("executionId", kind="stable").reset_index(drop=True)
        grouped = (occurrences.reset_index(drop=True), reused, sum(p[2] for p in parts))
        counts = (sum(f["counts"][0] for f in firsts), sum(f["counts"][1] for f in firsts))
        unreadable = [u for f in firsts for u in f["unreadable"]]
        return ReplayReport(con, names, ExitStack(), unreadable, counts, grouped=grouped)
    except BaseException:
        con.close()
        raise



def _text(text: str) -> str:
    return text.replace("'", "''")
