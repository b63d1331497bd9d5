"""Replay detection across exported logs: one fingerprint consumed by different executions.

Any mix of archives (directory, .zip, .tar.gz) and audit DBs is read by DuckDB
as one view, ``records`` (one row per record per source, with its line). The
definitions, which the CLI, the panel and the notebook share:

- an *execution* is an executionId with its content; the same record seen in
  several sources (an archive and the DB it came from, a folder and its zip) is
  one execution, and its other places are *copies* ("also in"), never replays;
- a *replay* is an execution_fingerprint consumed by two or more distinct
  executionIds, wherever they are;
- a *reused executionId* is one executionId seen with different content.

The views ``executions`` and ``replays`` hold exactly those, for your own SQL.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from pydantic import BaseModel, ConfigDict

from .archive import MAX_LINE_BYTES, ArchiveError, iter_lines, open_archive, require_attestations
from .attestation import parse_attestation_line
from .audit import AuditDB, is_duckdb_file, open_in_process, open_refusal, reading, require_audit_tables, source_name
from .charts import bar_chart

# read straight from the JSON lines: DuckDB parses only the members a query touches
_STRING_MEMBERS = ("executionId", "execution_fingerprint", "policyId", "policyVersion", "schemaVersion", "runtimeVersion",
                   "runtimeHash", "evaluatorArtifactHash", "signalsHash", "bundleHash", "execution_state", "issuedAt",
                   "signerKeyId", "signature")
_DECISION = "STRUCT(action VARCHAR, requires_override BOOLEAN, reason VARCHAR, ruleId VARCHAR)"
_JSON_COLUMNS = "{" + ", ".join(f"'{m}': 'VARCHAR'" for m in _STRING_MEMBERS) + f", 'decision': '{_DECISION}'}}"
_MEMBERS = ", ".join(_STRING_MEMBERS)
_CONTENT = "md5(concat_ws('|', " + _MEMBERS + ", decision::VARCHAR))"
_BAD = "executionId IS NULL OR execution_fingerprint IS NULL OR decision IS NULL"
EXECUTION_COLUMNS = ("execution_fingerprint", "executionId", "source", "line", "issuedAt", "signerKeyId", "runtimeHash",
                     "action", "also_in")
Source = str | Path | AuditDB | Any  # a path, an AuditDB, or a Runtime (anything with a .db)


class ReplaySummary(BaseModel):
    model_config = ConfigDict(defer_build=True)

    sources: list[str]
    records: int
    executions: int
    copies: int
    replayed_fingerprints: int
    extra_uses: int
    reused_execution_ids: int
    unreadable_records: int
    unverified_records: int


class ReplayReport:
    """Replayed fingerprints, reused executionIds and copies across sources.

    Holds the DuckDB connection (and any unpacked archives) open so that
    ``sql()`` and ``relation`` work; ``close()`` (or a ``with`` block) releases them.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sources: list[str], stack: ExitStack,
                 unreadable: list[dict[str, Any]], counts: tuple[int, int],
                 grouped: tuple[pd.DataFrame, pd.DataFrame, int] | None = None, views: Callable[[], None] | None = None) -> None:
        """``grouped``: (occurrences, reused ids, copies) already computed on a cluster; ``views``: what creates the views
        ``sql()`` reads, on its first use (a cluster's report reads the sources only if asked)."""
        self.con, self.sources, self.unreadable, self._views = con, sources, unreadable, views
        self._finalizer = weakref.finalize(self, _release, con, stack)
        self.records, self.unverified = counts
        occurrences, self.reused_ids, self.copies = grouped if grouped is not None else group_records(con)
        self.executions = _collapse_copies(occurrences)

    def __enter__(self) -> ReplayReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        s = self.summary
        return f"ReplayReport({len(s.sources)} sources, {s.records} records, {s.replayed_fingerprints} replayed fingerprints)"

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        """Every record of every source: source, line, every attestation member (decision as a struct), action."""
        self._create_views()
        return self.con.table("records")

    def sql(self, query: str) -> pd.DataFrame:
        """Your own SQL over the views ``records``, ``executions`` and ``replays``."""
        self._create_views()
        return self.con.execute(query).df()

    def _create_views(self) -> None:
        views, self._views = self._views, None
        if views is not None:
            views()

    @property
    def occurrences(self) -> pd.DataFrame:
        """One row per execution of a replayed fingerprint (copies folded into ``also_in``)."""
        return self.executions

    @property
    def found(self) -> bool:
        """Anything a person must look at: a replay, a reused executionId, or a record that could not be read."""
        return bool(len(self.executions) or len(self.reused_ids) or self.unreadable)

    @property
    def summary(self) -> ReplaySummary:
        fps = self.executions["execution_fingerprint"]
        return ReplaySummary(
            sources=self.sources,
            records=self.records,
            executions=self.records - self.copies,
            copies=self.copies,
            replayed_fingerprints=int(fps.nunique()),
            extra_uses=int(len(fps) - fps.nunique()),
            reused_execution_ids=len(self.reused_ids),
            unreadable_records=len(self.unreadable),
            unverified_records=self.unverified,
        )

    def findings(self) -> list[dict[str, Any]]:
        """One finding per replayed fingerprint, with each execution that consumed it (the --json line format)."""
        out = []
        for fp, group in self.executions.groupby("execution_fingerprint", sort=True):
            executions = group.drop(columns=["execution_fingerprint"]).rename(columns={"action": "decision"})
            out.append({"execution_fingerprint": fp, "executions": executions.to_dict("records")})
        return out

    def to_pandas(self) -> pd.DataFrame:
        return self.executions.copy()

    def headline(self) -> str:
        """The counts in one sentence, as the CLI, the panel and the reports say them."""
        s = self.summary
        text = (f"{s.records} records, {s.executions} distinct executions ({s.copies} copies of the same record in several "
                f"places); {s.replayed_fingerprints} fingerprints consumed by more than one execution ({s.extra_uses} extra "
                f"uses); {s.reused_execution_ids} executionIds reused with different content")
        if s.unreadable_records:
            text += f"; {s.unreadable_records} records could not be read, so were not checked"
        if s.unverified_records:
            text += f"; {s.unverified_records} records were imported unverified"
        return text + "."

    def to_markdown(self) -> str:
        s = self.summary
        lines = [f"# Replay detection over {len(s.sources)} source(s)", "", self.headline()]
        if len(self.executions):
            lines += ["", "| execution_fingerprint | executionId | source | line | issuedAt | signerKeyId | decision | also in |",
                      "| --- | --- | --- | ---: | --- | --- | --- | --- |"]
            lines += [
                f"| {r.execution_fingerprint[:16]}… | {r.executionId} | {r.source} | {r.line} | {r.issuedAt} | {r.signerKeyId} "
                f"| {r.action} | {', '.join(r.also_in)} |"
                for r in self.executions.itertuples()
            ]
        return "\n".join(lines) + "\n"

    def by_source(self) -> pd.DataFrame:
        """Executions of replayed fingerprints counted per source where first seen: the chart's data."""
        occ = self.executions.assign(kind="executions of replayed fingerprints")
        return occ.pivot_table(index="source", columns="kind", values="executionId", aggfunc="count", fill_value=0)

    def to_html(self) -> str:
        s = self.summary
        head = f"<h3>Replay detection over {len(s.sources)} source(s)</h3><p>{self.headline()}</p>"
        if not len(self.executions):
            return head
        return head + bar_chart(self.by_source(), "replays by source") + self.executions.to_html(index=False)

    def _repr_html_(self) -> str:
        return self.to_html()


def index_records(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int, int, int]]:
    """One scan of the ``records`` view into ``record_groups``: per source its counts, and the 64-bit hashes of the
    fingerprints and executionIds seen more than once (integer keys group far faster than the hex and UUID text).
    Returns (src, records without their keys, records, unverified) per source; a duckdb.Error when a source cannot
    be read."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE record_groups AS
        SELECT CASE WHEN grouping(src) = 0 THEN 'src' WHEN grouping(fp) = 0 THEN 'fp' ELSE 'id' END AS kind,
               src, hash(execution_fingerprint) AS fp, hash(executionId) AS id, count(*) AS n,
               count(*) FILTER (WHERE {_BAD}) AS bad, count(*) FILTER (WHERE import_status = 'unverified') AS unverified
        FROM records GROUP BY GROUPING SETS ((src), (fp), (id)) HAVING grouping(src) = 0 OR count(*) > 1
        """
    )
    return con.execute("SELECT src, bad, n, unverified FROM record_groups WHERE kind = 'src' ORDER BY src").fetchall()


FP_CANDIDATE_COLUMNS = "execution_fingerprint, executionId, source, line, issuedAt, signerKeyId, runtimeHash, action, src"
ID_CANDIDATE_COLUMNS = f"executionId, source, {_CONTENT} AS content"


def group_records(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(occurrences of replayed fingerprints, executionIds reused with other content, copies) of the ``records`` view,
    once index_records has read it.

    Only records whose fingerprint or executionId hash occurs more than once can be in a group (a hash collision
    only adds a candidate), so just those are kept from a second scan (the content of every member only when an
    executionId hash repeats) and grouped by their real values. The cluster finds the same candidates source by
    source (cluster_replays.py) and groups them with group_candidates, as here.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE fp_candidates AS SELECT {FP_CANDIDATE_COLUMNS} FROM records "
                "WHERE hash(execution_fingerprint) IN (SELECT fp FROM record_groups WHERE kind = 'fp')")
    repeated = con.execute("SELECT count(*) FROM record_groups WHERE kind = 'id'").fetchall()[0][0]
    con.execute(f"CREATE OR REPLACE TEMP TABLE id_candidates AS SELECT {ID_CANDIDATE_COLUMNS} FROM records WHERE "
                + ("hash(executionId) IN (SELECT id FROM record_groups WHERE kind = 'id')" if repeated else "false"))
    return group_candidates(con, "fp_candidates", "id_candidates")


def group_candidates(con: duckdb.DuckDBPyConnection, fp_candidates: str, id_candidates: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The exact groups among candidate records: ``fp_candidates`` has FP_CANDIDATE_COLUMNS and every record of each
    fingerprint it holds, ``id_candidates`` ID_CANDIDATE_COLUMNS and every record of each executionId it holds."""
    occurrences = con.execute(
        f"""
        WITH replayed AS (SELECT execution_fingerprint FROM {fp_candidates} GROUP BY ALL HAVING count(DISTINCT executionId) > 1)
        SELECT {FP_CANDIDATE_COLUMNS} FROM {fp_candidates} SEMI JOIN replayed USING (execution_fingerprint)
        ORDER BY execution_fingerprint, executionId, src, line
        """
    ).df()
    reused, copies = reused_ids(con, id_candidates, "content")
    return occurrences, reused, copies


def reused_ids(con: duckdb.DuckDBPyConnection, relation: str, content: str) -> tuple[pd.DataFrame, int]:
    """(executionIds seen with different content, copies of the same record) over ``relation``; ``content`` is hashed
    only for executionIds seen more than once."""
    repeated = con.execute(
        f"""
        WITH repeated AS (SELECT executionId FROM {relation} GROUP BY ALL HAVING count(*) > 1)
        SELECT executionId, count(*) AS n, count(DISTINCT {content}) AS versions, list(DISTINCT source ORDER BY source) AS sources
        FROM {relation} SEMI JOIN repeated USING (executionId) GROUP BY executionId
        """
    ).df()
    reused = repeated[repeated["versions"] > 1][["executionId", "versions", "sources"]]
    reused = reused.sort_values("executionId", kind="stable").reset_index(drop=True)
    return reused, int((repeated.loc[repeated["versions"] == 1, "n"] - 1).sum())


def _collapse_copies(occurrences: pd.DataFrame) -> pd.DataFrame:
    """One row per (fingerprint, executionId): the first place it was seen, the others as ``also_in``."""
    ordered = occurrences.sort_values(["execution_fingerprint", "executionId", "src", "line"], kind="stable")
    rows: list[list[Any]] = []
    for r in ordered.itertuples(index=False):
        if rows and rows[-1][0] == r.execution_fingerprint and rows[-1][1] == r.executionId:
            rows[-1][-1].append(f"{r.source}:{r.line}")
        else:
            rows.append([r.execution_fingerprint, r.executionId, r.source, int(r.line), r.issuedAt, r.signerKeyId,
                         r.runtimeHash, r.action, []])
    frame = pd.DataFrame(rows, columns=list(EXECUTION_COLUMNS))
    return frame.sort_values(["execution_fingerprint", "issuedAt", "source", "line"], kind="stable").reset_index(drop=True)


def _release(con: duckdb.DuckDBPyConnection, stack: ExitStack) -> None:
    con.close()
    stack.close()


def find_replays(sources: Source | Sequence[Source], *, client: Any = None, scratch: str | Path | None = None) -> ReplayReport:
    """Every execution_fingerprint consumed by more than one execution across ``sources``.

    Sources are archives, audit DB files, or an open AuditDB / Runtime of this
    process (read through its own connection). A record that cannot be read is
    listed in ``report.unreadable``, never skipped silently. With a Dask ``client``
    the workers read and group (cluster_replays.py; ``scratch``: shared storage).
    """
    if isinstance(sources, (str, Path)) or open_in_process(sources) is not None:
        sources = [sources]  # one source, not its characters
    if client is not None:
        from .cluster_replays import find_replays_on_cluster

        return find_replays_on_cluster(client, list(sources), scratch=scratch)
    if not sources:
        raise ArchiveError("ARC-005", "find_replays needs at least one archive or audit DB")
    stack = ExitStack()
    con = memory_connection()
    try:
        names = [source_name(source) for source in sources]
        parts = [_part(con, stack, i, source, name) for i, (source, name) in enumerate(zip(sources, names))]
        unreadable: list[dict[str, Any]] = []
        _create_views(con, parts)
        damaged, counts = _damaged_sources(con, parts)
        if damaged or counts is None:  # read those line by line, so each unreadable record is named (an oversized
            for i in damaged:  # line is ARC-006); an audit DB that cannot be read raises DuckDB's error from here
                parts[i] = _strict_part(con, i, names[i], parts[i][1], unreadable)
            _create_views(con, parts)
            counts = _totals(index_records(con))
        return ReplayReport(con, names, stack, unreadable, counts)
    except BaseException:
        con.close()
        stack.close()
        raise


def memory_connection(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """The in-memory DuckDB a replay search runs in (here, or a cluster's worker with its share of the cores)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")
    if threads is not None:
        con.execute(f"SET threads = {threads}")
    return con


def _create_views(con, parts: list[tuple[str, Path | None]]) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW records AS {' UNION ALL '.join(sql for sql, _ in parts)}")
    # fingerprints seen more than once first (a plain count), distinct executionIds only among those
    con.execute("CREATE OR REPLACE TEMP VIEW replays AS WITH multi AS (SELECT execution_fingerprint FROM records GROUP BY ALL "
                "HAVING count(*) > 1) SELECT execution_fingerprint, count(DISTINCT executionId) AS executions, count(*) AS records "
                "FROM records SEMI JOIN multi USING (execution_fingerprint) GROUP BY ALL HAVING count(DISTINCT executionId) > 1")
    con.execute("CREATE OR REPLACE TEMP VIEW executions AS SELECT executionId, execution_fingerprint, "
                "any_value(issuedAt) AS issuedAt, list(source || ':' || line ORDER BY src, line) AS places FROM records GROUP BY ALL")


def _damaged_sources(con, parts: list[tuple[str, Path | None]]) -> tuple[list[int], tuple[int, int] | None]:
    """Archives with a line DuckDB cannot read, or a record without its keys, and the (records, unverified)
    counts: one scan (index_records) when all is well."""
    try:
        per_source = index_records(con)
        return sorted(i for i, n, _, _ in per_source if n and parts[i][1] is not None), _totals(per_source)
    except duckdb.Error:
        pass
    damaged = []
    for i, (sql, lines) in enumerate(parts):
        if lines is None:
            continue
        try:
            if con.execute(f"SELECT count(*) FROM ({sql}) WHERE {_BAD}").fetchall()[0][0]:
                damaged.append(i)
        except duckdb.Error:
            damaged.append(i)
    return damaged, None


def _totals(per_source: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """(records, unverified) over every source, from index_records' rows."""
    return sum(c[2] for c in per_source), sum(c[3] for c in per_source)


def _select(i: int, name: str, relation: str, line: str, import_status: str) -> str:
    return (f"SELECT {i} AS src, '{_sql_text(name)}' AS source, {line} AS line, {_MEMBERS}, decision, "
            f"decision.action AS action, {import_status} AS import_status FROM {relation}")


def _part(con, stack: ExitStack, i: int, source: Source, name: str) -> tuple[str, Path | None]:
    """The SELECT reading one source into the ``records`` shape, and the archive's lines file (None for a DB)."""
    db_struct = ("{'action': decision_action, 'requires_override': decision_requires_override, "
                 "'reason': decision_reason, 'ruleId': decision_ruleId} AS decision")
    if open_in_process(source) is not None:  # this process holds it: copy the rows through its connection
        with reading(source) as cur:
            status = "import_status" if _has_column(cur, "attestations", "import_status") else "NULL AS import_status"
            frame = cur.execute(f"SELECT seq, {_MEMBERS}, {db_struct}, {status} FROM attestations").df()
        con.register(f"src{i}_rows", frame)
        return _select(i, name, f"src{i}_rows", "seq", "import_status"), None
    path = Path(source)
    if is_duckdb_file(path):
        try:
            con.execute(f"ATTACH '{_sql_text(str(path))}' AS src{i} (READ_ONLY)")
        except duckdb.Error as exc:
            raise open_refusal(path, exc) from None
        require_audit_tables(con, path, schema=f"src{i}")
        status = "import_status" if _has_column(con, "attestations", "import_status", f"src{i}") else "NULL"
        return _select(i, name, f"(SELECT *, {db_struct} FROM src{i}.attestations)", "seq", status), None
    root = stack.enter_context(open_archive(path))
    lines = require_attestations(root, path)
    relation = (f"read_json('{_sql_text(str(lines))}', format='newline_delimited', columns={_JSON_COLUMNS}, "
                f"maximum_object_size={MAX_LINE_BYTES + 1}) WITH ORDINALITY AS t({_MEMBERS}, decision, n)")
    return _select(i, name, relation, "n", "NULL"), lines


def _strict_part(con, i: int, name: str, path: Path, unreadable: list[dict[str, Any]]) -> tuple[str, Path]:
    frame = _strict_rows(path, name, unreadable)
    if len(frame):
        con.register(f"src{i}_rows", frame)
        return _select(i, name, f"src{i}_rows", "n", "NULL"), path
    empty = ", ".join(f"NULL::VARCHAR AS {m}" for m in _STRING_MEMBERS) + f", NULL::{_DECISION} AS decision, 0::BIGINT AS n"
    return _select(i, name, f"(SELECT {empty} WHERE false)", "n", "NULL"), path


def _strict_rows(path: Path, name: str, unreadable: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(iter_lines(path), start=1):
        att, problem = parse_attestation_line(line)
        if att is None:
            unreadable.append({"source": name, "line": number, "reason": problem})
            continue
        d = att["decision"]  # members in _DECISION's order, so the struct (and its text) is the one read_json gives
        decision = {"action": d["action"], "requires_override": d["requires_override"], "reason": d["reason"],
                    "ruleId": d["ruleId"]}
        rows.append((*(att[m] for m in _STRING_MEMBERS), decision, number))
    return pd.DataFrame(rows, columns=[*_STRING_MEMBERS, "decision", "n"])


def _has_column(con, table: str, column: str, catalog: str | None = None) -> bool:
    where = f" AND table_catalog = '{catalog}'" if catalog else ""
    return bool(con.execute(
        f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = '{column}'{where}"
    ).fetchall()[0][0])


def _sql_text(text: str) -> str:
    return text.replace("'", "''")

