"""Replay detection on a Dask cluster: the same findings, in the same order, as find_replays on one machine.

Dask schedules and DuckDB groups, as find_replays does, in three passes of small messages. Pass 1, a task per source:
read it once as find_replays does (a damaged archive line by line, naming what cannot be read) and write the 64-bit
hashes of its fingerprints and executionIds to Parquet under ``scratch``, split into buckets by hash. Pass 2, a task
per bucket: the hashes seen more than once across every source. Pass 3, a task per source: its records with those
hashes (the candidates; a collision only adds one). The client groups the candidates by their real values exactly as
one machine does (replays.group_candidates). A .zip or .tar.gz source is unpacked into ``scratch`` once (so
``scratch`` must be storage every worker sees); the report's ``sql()`` reads the sources from this machine, on first
use. DuckDB's ``hash`` must agree everywhere, so every task reports its DuckDB version and one unlike the client's
is refused.
"""

from __future__ import annotations

import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from .archive import ArchiveError
from .audit import is_duckdb_file, open_in_process, source_name
from .cluster import _guarded, _unwrap, unpack_task
from .replays import (
    _BAD,
    FP_CANDIDATE_COLUMNS,
    ID_CANDIDATE_COLUMNS,
    ReplayReport,
    _create_views,
    _part,
    _sql_text,
    _strict_part,
    group_candidates,
    memory_connection,
)


def _worker_threads() -> int | None:
    """A Dask worker's share of the cores (its nthreads), so DuckDB does not oversubscribe the machine."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None


def _load_keys(con, sql: str) -> int:
    """One scan of a source into ``keys`` (the hashes pass 1 writes); returns how many records lack their keys."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE keys AS SELECT hash(execution_fingerprint) AS fp, hash(executionId) AS id, "
                f"import_status = 'unverified' AS unverified, ({_BAD}) AS bad FROM ({sql})")
    return con.execute("SELECT count(*) FROM keys WHERE bad").fetchall()[0][0]


def _source_select(con, stack: ExitStack, i: int, source: Any, name: str, damaged: bool) -> str:
    """The SELECT reading one source in the ``records`` shape as pass 1 read it (a damaged archive line by line)."""
    sql, lines = _part(con, stack, i, source, name)
    return _strict_part(con, i, name, lines, [])[0] if damaged else sql


def _hash_source(i: int, source: Any, name: str, run: str, buckets: int) -> dict[str, Any]:
    """Pass 1 for one source: its hashes into by_fp/src{i}/ and by_id/src{i}/, one folder per bucket; its counts;
    whether it is damaged (read as find_replays reads it: an archive DuckDB cannot read whole, line by line)."""
    con, stack = memory_connection(_worker_threads()), ExitStack()
    try:
        unreadable: list[dict[str, Any]] = []
        sql, lines = _part(con, stack, i, source, name)
        try:
            damaged = bool(_load_keys(con, sql)) and lines is not None
        except duckdb.Error:
            if lines is None:
                raise
            damaged = True
        if damaged:
            _load_keys(con, _strict_part(con, i, name, lines, unreadable)[0])
        counts = con.execute("SELECT count(*), count(*) FILTER (WHERE unverified) FROM keys").fetchall()[0]
        for key in ("fp", "id"):
            target = Path(run) / f"by_{key}" / f"src{i}"
            target.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"COPY (SELECT {key} AS h, {key} % {buckets} AS bucket FROM keys) TO '{_sql_text(str(target))}' "
                        "(FORMAT PARQUET, PARTITION_BY (bucket), OVERWRITE true)")  # a task run twice writes the same
        return {"counts": tuple(counts), "unreadable": unreadable, "damaged": damaged, "duckdb": duckdb.__version__}
    finally:
        con.close()
        stack.close()


def hash_task(i: int, source: str, name: str, run: str, buckets: int) -> tuple[str, Any]:
    return _guarded(_hash_source, name, i, source, name, run, buckets)


def _repeated_in_bucket(run: str, bucket: int) -> dict[str, Any]:
    """Pass 2 for one bucket: the fingerprint and executionId hashes it holds more than once, across every source."""
    con = memory_connection(_worker_threads())
    try:
        found = {"duckdb": duckdb.__version__}
        for key in ("fp", "id"):
            files = sorted(Path(run, f"by_{key}").glob(f"src*/bucket={bucket}/*.parquet"))
            listed = "[" + ", ".join(f"'{_sql_text(str(f))}'" for f in files) + "]"
            found[key] = con.execute(f"SELECT h FROM read_parquet({listed}, hive_partitioning = false) GROUP BY h "
                                     "HAVING count(*) > 1").fetchnumpy()["h"] if files else np.array([], dtype=np.uint64)
        return found
    finally:
        con.close()


def repeated_task(run: str, bucket: int) -> tuple[str, Any]:
    return _guarded(_repeated_in_bucket, f"{run} bucket {bucket}", run, bucket)


def _candidates_of_source(i: int, source: Any, name: str, damaged: bool, repeated: dict[str, np.ndarray]) -> dict[str, Any]:
    """Pass 3 for one source: its records whose fingerprint or executionId hash repeats somewhere."""
    con, stack = memory_connection(_worker_threads()), ExitStack()
    try:
        sql = _source_select(con, stack, i, source, name, damaged)
        out: dict[str, Any] = {"duckdb": duckdb.__version__}
        for key, column, columns in (("fp", "execution_fingerprint", FP_CANDIDATE_COLUMNS), ("id", "executionId",
                                                                                            ID_CANDIDATE_COLUMNS)):
            con.register(f"repeated_{key}", pd.DataFrame({"h": repeated[key]}))
            where = f"hash({column}) IN (SELECT h FROM repeated_{key})" if len(repeated[key]) else "false"
            out[key] = con.execute(f"SELECT {columns} FROM ({sql}) WHERE {where}").df()
        return out
    finally:
        con.close()
        stack.close()


def candidates_task(i: int, source: str, name: str, damaged: bool, repeated: dict[str, np.ndarray]) -> tuple[str, Any]:
    return _guarded(_candidates_of_source, name, i, source, name, damaged, repeated)


def find_replays_on_cluster(client: Any, sources: list[Any], *, scratch: str | Path | None = None,
                            buckets: int | None = None) -> ReplayReport:
    if not sources:
        raise ArchiveError("ARC-005", "find_replays needs at least one archive or audit DB")
    names = [source_name(s) for s in sources]
    base = Path(scratch if scratch is not None else tempfile.mkdtemp(prefix="parmana-replays-"))
    run = base / f"replays-{uuid.uuid4().hex}"
    run.mkdir(parents=True)
    buckets = buckets or max(4, 2 * len(client.scheduler_info()["workers"]))
    here = [open_in_process(s) is not None for s in sources]  # held by this process: only it can read it
    packed = [not here[i] and Path(s).is_file() and not is_duckdb_file(Path(s)) for i, s in enumerate(sources)]
    unpacked = {i: client.submit(unpack_task, str(s), str(base / "unpacked"), pure=False)
                for i, s in enumerate(sources) if packed[i]}
    readable = [_unwrap(unpacked[i].result()) if i in unpacked else s if here[i] else str(s) for i, s in enumerate(sources)]

    def each_source(task, local, remote_extra: list[Any], local_extra: list[Any]) -> list[Any]:
        """One task per source (in this process for a source it holds), results in source order."""
        pending = [_guarded(local, names[i], i, s, names[i], *local_extra[i]) if here[i]
                   else client.submit(task, i, s, names[i], *remote_extra[i], pure=False) for i, s in enumerate(readable)]
        return [_unwrap(p if isinstance(p, tuple) else p.result()) for p in pending]

    every = range(len(sources))
    firsts = _same_duckdb(each_source(hash_task, _hash_source, [(str(run), buckets)] * len(sources),
                                      [(str(run), buckets)] * len(sources)))
    found = _same_duckdb([_unwrap(f.result()) for f in [client.submit(repeated_task, str(run), b, pure=False)
                                                         for b in range(buckets)]])
    repeated = {key: np.concatenate([f[key] for f in found]) for key in ("fp", "id")}
    shared = client.scatter(repeated, broadcast=True, hash=False)
    seconds = each_source(candidates_task, _candidates_of_source, [(firsts[i]["damaged"], shared) for i in every],
                          [(firsts[i]["damaged"], repeated) for i in every])
    _same_duckdb(seconds)
    con = memory_connection()
    try:
        for key in ("fp", "id"):
            con.register(f"{key}_candidates", pd.concat([s[key] for s in seconds], ignore_index=True))
        grouped = group_candidates(con, "fp_candidates", "id_candidates")
        counts = (sum(f["counts"][0] for f in firsts), sum(f["counts"][1] for f in firsts))
        unreadable = [u for f in firsts for u in f["unreadable"]]
        stack = ExitStack()

        def views() -> None:  # your own SQL: the records view over the sources, as one machine reads them
            parts = [_source_select(con, stack, i, s, names[i], firsts[i]["damaged"]) for i, s in enumerate(readable)]
            _create_views(con, [(sql, None) for sql in parts])

        return ReplayReport(con, names, stack, unreadable, counts, grouped=grouped, views=views)
    except BaseException:
        con.close()
        raise


def _same_duckdb(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pass's results, once every task ran this machine's DuckDB (the buckets are DuckDB's ``hash``)."""
    other = sorted({r["duckdb"] for r in results} - {duckdb.__version__})
    if other:
        raise ArchiveError("ARC-010", f"workers run DuckDB {', '.join(other)}, this machine {duckdb.__version__}: replay "
                           "buckets hash values with DuckDB, so the client and every worker must run the same one")
    return results

