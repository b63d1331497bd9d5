"""Replay detection across exported logs: the same execution consumed twice.

Any mix of archives (directory, .zip, .tar.gz) and audit DB files is read by
DuckDB as one view, ``records``; the findings are plain SQL over it, so users
can ask their own questions of the same view (``report.sql(...)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from pydantic import BaseModel

from .archive import ATTESTATIONS, ArchiveError, open_archive
from .audit import is_duckdb_file, open_refusal
from .charts import bar_chart

# read straight from the JSON lines: DuckDB parses only the members a query touches
_STRING_MEMBERS = ("executionId", "execution_fingerprint", "policyId", "policyVersion", "schemaVersion", "runtimeVersion",
                   "runtimeHash", "evaluatorArtifactHash", "signalsHash", "bundleHash", "execution_state", "issuedAt",
                   "signerKeyId", "signature")
_JSON_COLUMNS = "{" + ", ".join(f"'{m}': 'VARCHAR'" for m in _STRING_MEMBERS) + (
    ", 'decision': 'STRUCT(action VARCHAR, requires_override BOOLEAN, reason VARCHAR, ruleId VARCHAR)'}"
)
_SELECT = ", ".join(_STRING_MEMBERS) + ", decision.action AS action"
OCCURRENCE_COLUMNS = ("execution_fingerprint", "source", "executionId", "issuedAt", "signerKeyId", "runtimeHash", "action")


class ReplaySummary(BaseModel):
    sources: list[str]
    records: int
    replayed_fingerprints: int
    extra_uses: int
    reused_execution_ids: int


class ReplayReport:
    """Replayed fingerprints and reused executionIds across sources.

    Holds the DuckDB connection (and any unpacked archives) open so that
    ``sql()`` and ``relation`` work; ``close()`` (or a ``with`` block) releases them.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sources: list[str], stack: ExitStack) -> None:
        self.con, self.sources = con, sources
        self._finalizer = weakref.finalize(self, _release, con, stack)
        self.occurrences = con.execute(
            f"""
            WITH replayed AS (SELECT execution_fingerprint FROM records GROUP BY ALL HAVING count(*) > 1)
            SELECT {", ".join(OCCURRENCE_COLUMNS)} FROM records SEMI JOIN replayed USING (execution_fingerprint)
            ORDER BY execution_fingerprint, issuedAt, source, executionId
            """
        ).df()
        # content is compared only for executionIds seen more than once
        content = "md5(concat_ws('|', " + ", ".join(_STRING_MEMBERS) + ", decision::VARCHAR))"
        self.reused_ids = con.execute(
            f"""
            WITH repeated AS (SELECT executionId FROM records GROUP BY ALL HAVING count(*) > 1)
            SELECT executionId, count(DISTINCT {content}) AS versions, list(DISTINCT source ORDER BY source) AS sources
            FROM records SEMI JOIN repeated USING (executionId)
            GROUP BY executionId HAVING count(DISTINCT {content}) > 1 ORDER BY executionId
            """
        ).df()
        self.records = con.execute("SELECT count(*) FROM records").fetchall()[0][0]

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
        """Every record of every source: its source and every attestation member (decision as a struct)."""
        return self.con.table("records")

    def sql(self, query: str) -> pd.DataFrame:
        """Your own SQL over the view ``records`` (source, every attestation member, action)."""
        return self.con.execute(query).df()

    @property
    def summary(self) -> ReplaySummary:
        fps = self.occurrences["execution_fingerprint"]
        return ReplaySummary(
            sources=self.sources,
            records=self.records,
            replayed_fingerprints=int(fps.nunique()),
            extra_uses=int(len(fps) - fps.nunique()),
            reused_execution_ids=len(self.reused_ids),
        )

    def findings(self) -> list[dict[str, Any]]:
        """One finding per replayed fingerprint, with each occurrence (the --json line format)."""
        out = []
        for fp, group in self.occurrences.groupby("execution_fingerprint", sort=True):
            occurrences = group.drop(columns=["execution_fingerprint"]).rename(columns={"action": "decision"})
            out.append({"execution_fingerprint": fp, "occurrences": occurrences.to_dict("records")})
        return out

    def to_pandas(self) -> pd.DataFrame:
        return self.occurrences.copy()

    def to_markdown(self) -> str:
        s = self.summary
        lines = [
            f"# Replay detection over {len(s.sources)} source(s)",
            "",
            f"{s.records} records; {s.replayed_fingerprints} fingerprints used more than once ({s.extra_uses} extra uses); "
            f"{s.reused_execution_ids} executionIds reused with different content.",
        ]
        if len(self.occurrences):
            lines += ["", "| execution_fingerprint | source | executionId | issuedAt | signerKeyId | decision |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += [
                f"| {r.execution_fingerprint[:16]}… | {r.source} | {r.executionId} | {r.issuedAt} | {r.signerKeyId} | {r.action} |"
                for r in self.occurrences.itertuples()
            ]
        return "\n".join(lines) + "\n"

    def by_source(self) -> pd.DataFrame:
        """Replayed occurrences counted per source: the chart's data."""
        occ = self.occurrences.assign(kind="occurrences of replayed fingerprints")
        return occ.pivot_table(index="source", columns="kind", values="executionId", aggfunc="count", fill_value=0)

    def to_html(self) -> str:
        s = self.summary
        head = (f"<h3>Replay detection over {len(s.sources)} source(s)</h3><p>{s.records} records; "
                f"{s.replayed_fingerprints} replayed fingerprints ({s.extra_uses} extra uses); "
                f"{s.reused_execution_ids} reused executionIds.</p>")
        if not len(self.occurrences):
            return head
        return head + bar_chart(self.by_source(), "replays by source") + self.occurrences.to_html(index=False)

    def _repr_html_(self) -> str:
        return self.to_html()


def _release(con: duckdb.DuckDBPyConnection, stack: ExitStack) -> None:
    con.close()
    stack.close()


def find_replays(sources: str | Path | Sequence[str | Path]) -> ReplayReport:
    """Every execution_fingerprint that occurs more than once across ``sources`` (archives or audit DB files, or one)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]  # not its characters
    if not sources:
        raise ArchiveError("ARC-005", "find_replays needs at least one archive or audit DB")
    stack = ExitStack()
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        parts, names = [], []
        for i, source in enumerate(sources):
            path = Path(source)
            name = path.name
            names.append(name)
            if is_duckdb_file(path):
                try:
                    con.execute(f"ATTACH '{_sql_path(path)}' AS src{i} (READ_ONLY)")
                except duckdb.Error as exc:
                    raise open_refusal(path, exc) from None
                members = ", ".join(m for m in _STRING_MEMBERS)
                parts.append(
                    f"SELECT '{_sql_text(name)}' AS source, {members}, {{'action': decision_action, 'requires_override': "
                    "decision_requires_override, 'reason': decision_reason, 'ruleId': decision_ruleId} AS decision "
                    f"FROM src{i}.attestations"
                )
            else:
                root = stack.enter_context(open_archive(path))
                if not (root / ATTESTATIONS).is_file():
                    raise ArchiveError("ARC-005", f"{path} has no {ATTESTATIONS}; is this a parmana archive?")
                parts.append(
                    f"SELECT '{_sql_text(name)}' AS source, * FROM read_json('{_sql_path(root / ATTESTATIONS)}', "
                    f"format='newline_delimited', columns={_JSON_COLUMNS}, ignore_errors=true)"
                )
        con.execute(f"CREATE TEMP VIEW records AS SELECT source, {_SELECT}, decision FROM ({' UNION ALL '.join(parts)})")
        return ReplayReport(con, names, stack)
    except BaseException:
        con.close()
        stack.close()
        raise


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _sql_path(path: Path) -> str:
    return _sql_text(str(path))
