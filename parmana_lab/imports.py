"""Importing archives into an audit DB: verified first, then streamed in committed chunks.

An archive is verified against the importer's trust store before a byte is
written; one with any failure is refused whole (ARC-009). ``unverified=True``
imports anyway and marks every row it writes ``import_status = 'unverified'``,
so later reports can say which records nobody checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict

from .archive import ATTESTATIONS, POLICIES, SIGNALS, ArchiveError, iter_lines, open_archive, require_attestations
from .attestation import parse_attestation_line
from .audit import ATTESTATION_COLUMNS, AuditDB, Registered, column, first_line, storage_hint, utc
from .canonical import canonicalize, parse_json
from .errors import AuditStoreError, CanonicalizationError
from .keys import TrustStore
from .timestamps import Clock, system_clock

ImportStatus = Literal["verified", "unverified"]
_SIDES = {None: "recorded by this runtime", "verified": "imported after verification", "unverified": "imported unverified"}


class ImportResult(BaseModel):
    """What an import did; conflicts are records that differ from what the DB already holds."""

    model_config = ConfigDict(defer_build=True)

    archive: str
    status: ImportStatus
    trust: str
    inserted: int
    already_present: int
    conflicts: list[dict[str, Any]]
    malformed: list[dict[str, Any]]
    policies_added: int
    verification: dict[str, Any]


class ImportRefused(ArchiveError):
    """The archive did not verify, so nothing of it was imported (ARC-009); ``summary`` says why."""

    def __init__(self, reason: str, summary: dict[str, Any]) -> None:
        super().__init__("ARC-009", reason)
        self.summary = summary

    def __reduce__(self):
        return (type(self), (self.reason, self.summary))


def import_archive(
    path: str | Path,
    db: AuditDB,
    trust_store: TrustStore | str | Path | None = None,
    *,
    unverified: bool = False,
    known_runtimes: Iterable[str] | None = None,
    clock: Clock = system_clock,
    chunk_lines: int = 20_000,
) -> ImportResult:
    """Verify an archive against ``trust_store``, then load it into an audit DB.

    Any verification failure refuses the whole archive (ImportRefused, ARC-009)
    and writes nothing. ``unverified=True`` skips that gate and marks the rows.
    The same record twice is one row; a different record under an existing
    executionId is reported and never overwritten. Streams ``chunk_lines`` lines
    at a time, each chunk committed with its signals: memory stays bounded, and
    an interrupted import is completed by importing again.
    """
    from .verify import load_trust, verify_tree  # verify reads archives; imported lazily to keep layers one-way

    if trust_store is None and not unverified:
        raise ArchiveError("ARC-009", f"importing {path} needs a trust store to verify it first (or unverified=True)")
    with open_archive(path) as root:
        require_attestations(root, path)
        if unverified:
            verification: dict[str, Any] = {"status": "not checked"}
            trust = "none: imported unverified"
        else:
            report = verify_tree(Path(path), root, load_trust(trust_store), workers=1, progress=False,
                                 known_runtimes=known_runtimes)
            s = report.summary
            verification = s.model_dump(include={"status", "total", "verified", "warnings", "failed", "codes", "archive_codes"})
            trust = s.trust
            if s.status != "verified":
                codes = [*s.archive_codes, *(c for c in s.codes if c not in ("VERIFIED", "RUNTIME_UNKNOWN"))]
                raise ImportRefused(f"{path} did not verify ({', '.join(codes)}; trust: {s.trust}); nothing was imported. "
                                    "Run `parmana-lab verify` on it for the details", verification)
        status: ImportStatus = "unverified" if unverified else "verified"
        try:
            result = _import(db, root, str(path), utc(clock()), max(chunk_lines, 1), status)
        except duckdb.Error as exc:  # a statement failed mid-chunk (commit failures are AUD-006 already)
            raise AuditStoreError(
                "AUD-006", "audit", f"importing {path} into {db.path} stopped: {first_line(exc)}; the chunk in progress was "
                f"rolled back, earlier ones are committed, and importing again once that is fixed completes it{storage_hint(exc)}"
            ) from None
        finally:
            with suppress(duckdb.Error, AuditStoreError), db.transaction() as con:  # scratch tables only
                _drop(con, *_IMPORT_TABLES)
    return result.model_copy(update={"trust": trust, "verification": verification})


_IMPORT_TABLES = ("import_seen", "import_signals", "import_chunk")  # import_chunk is replaced chunk by chunk


def _import(db: AuditDB, root: Path, archive: str, imported_at, chunk_lines: int, status: ImportStatus) -> ImportResult:
    conflicts: list[dict[str, Any]] = []
    with db.transaction() as con:  # policies first: no record is ever in the DB without the policy it names
        added_policies = 0
        for pid, pver, bundle_hash, document in _read_policies(root):
            known = con.execute("SELECT bundleHash, import_status FROM policies WHERE policyId = ? AND policyVersion = ?",
                                [pid, pver]).fetchall()
            if not known:
                con.execute("INSERT INTO policies (policyId, policyVersion, bundleHash, document, first_used_at, import_status) "
                            "VALUES (?, ?, ?, ?, ?, ?)", [pid, pver, bundle_hash, document, imported_at, status])
                added_policies += 1
            elif known[0][0] != bundle_hash:
                conflicts.append({"policy": f"{pid}@{pver}", "with": "a different document already in the audit DB",
                                  "archive_side": status, "db_side": _SIDES[known[0][1]]})
        con.execute("CREATE OR REPLACE TEMP TABLE import_seen (executionId VARCHAR, line BIGINT, digest VARCHAR)")
        con.execute("CREATE OR REPLACE TEMP TABLE import_signals (n BIGINT, executionId VARCHAR, signals VARCHAR)")
        for first, lines in _chunks(iter_lines(root / SIGNALS), chunk_lines) if (root / SIGNALS).is_file() else ():
            _stage_signals(con, first, lines)
        # the first usable signals line of an execution wins, as its first attestation line does
        con.execute("CREATE OR REPLACE TEMP TABLE import_signals AS SELECT executionId, signals FROM import_signals "
                    "QUALIFY row_number() OVER (PARTITION BY executionId ORDER BY n) = 1")
    malformed: list[dict[str, Any]] = []
    inserted = present = 0
    for first, lines in _chunks(iter_lines(root / ATTESTATIONS), chunk_lines):
        rows = []
        for number, line in enumerate(lines, start=first):
            att, problem = parse_attestation_line(line)
            if problem is not None:
                malformed.append({"line": number, "reason": problem})
                continue
            d = att["decision"]
            rows.append((
                number, att["executionId"], att["execution_fingerprint"], att["policyId"], att["policyVersion"],
                att["schemaVersion"], att["runtimeVersion"], att["runtimeHash"], att["evaluatorArtifactHash"],
                att["signalsHash"], att["bundleHash"], d["action"], d["requires_override"], d["reason"], d["ruleId"],
                att["execution_state"], att["issuedAt"], att["signerKeyId"], att["signature"], line.decode("utf-8"),
            ))
        if rows:
            with db.transaction() as con:
                added, same, clashes = _import_chunk(con, rows, status)
            inserted, present = inserted + added, present + same
            conflicts += clashes
    return ImportResult(archive=archive, status=status, trust="", inserted=inserted, already_present=present,
                        conflicts=conflicts, malformed=malformed, policies_added=added_policies, verification={})


def _drop(con, *tables: str) -> None:
    """Drop scratch tables; after a failed statement the rollback that follows discards them anyway."""
    try:
        for table in tables:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    except duckdb.Error:
        pass


def _chunks(lines: Iterator[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, up to ``size`` lines) at a time."""
    chunk: list[bytes] = []
    first = 1
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield first, chunk
            first, chunk = first + size, []
    if chunk:
        yield first, chunk


def _import_chunk(con, rows: list[tuple], status: ImportStatus) -> tuple[int, int, list[dict[str, Any]]]:
    """Insert one chunk's new records and their signals; returns (inserted, already present, conflicts)."""
    incoming = dict(zip(("line", *ATTESTATION_COLUMNS[1:]), (column(c) for c in zip(*rows))))
    with Registered(con, incoming=incoming):
        con.execute("CREATE OR REPLACE TEMP TABLE import_chunk AS SELECT *, sha256(canonical) AS digest FROM incoming")
    # a line that repeats an executionId met earlier in the archive: the same record is skipped, another one reported
    repeats = con.execute(
        """
        WITH firsts AS (
            SELECT * FROM (SELECT executionId, line, digest FROM import_seen
                           UNION ALL SELECT executionId, line, digest FROM import_chunk)
            QUALIFY row_number() OVER (PARTITION BY executionId ORDER BY line) = 1
        )
        SELECT c.line, c.executionId, c.digest <> f.digest FROM import_chunk c JOIN firsts f USING (executionId)
        WHERE c.line <> f.line ORDER BY c.line
        """
    ).fetchall()
    conflicts = [{"executionId": eid, "line": line, "with": "an earlier line of the archive"}
                 for line, eid, differs in repeats if differs]
    con.execute(
        "DELETE FROM import_chunk WHERE line IN (SELECT unnest(?::BIGINT[]))", [[line for line, _, _ in repeats]]
    )
    con.execute("INSERT INTO import_seen SELECT executionId, line, digest FROM import_chunk")
    clash = con.execute(
        "SELECT i.line, i.executionId, a.canonical = i.canonical, a.import_status FROM import_chunk i "
        "JOIN attestations a USING (executionId) ORDER BY i.line"
    ).fetchall()
    conflicts += [{"executionId": eid, "line": line, "with": "the record already in the audit DB", "archive_side": status,
                   "db_side": _SIDES[side]} for line, eid, same, side in clash if not same]
    present = sum(1 for _, _, same, _ in clash if same)
    columns = ", ".join(ATTESTATION_COLUMNS[1:])
    con.execute("DELETE FROM import_chunk WHERE executionId IN (SELECT executionId FROM attestations)")
    seq = con.execute("SELECT coalesce(max(seq), 0) FROM attestations").fetchall()[0][0]
    added = con.execute(
        f"INSERT INTO attestations ({', '.join(ATTESTATION_COLUMNS)}, issued_at, import_status) "
        f"SELECT ? + row_number() OVER (ORDER BY line), {columns}, CAST(issuedAt AS TIMESTAMPTZ), ? FROM import_chunk",
        [seq, status],
    ).fetchall()[0][0]
    con.execute("INSERT INTO signals SELECT executionId, signals FROM import_signals SEMI JOIN import_chunk USING (executionId)")
    return added, present, conflicts


def _stage_signals(con, first: int, lines: list[bytes]) -> None:
    staged = []
    for n, line in enumerate(lines, start=first):
        try:
            item = parse_json(line)
            if type(item["executionId"]) is str and item["signals"] is not None:
                staged.append((n, item["executionId"], canonicalize(item["signals"]).decode("utf-8")))
        except (CanonicalizationError, KeyError, TypeError):
            continue  # unusable signals only make re-execution impossible later
    if staged:
        with Registered(con, staged=dict(zip(("n", "executionId", "signals"), (column(c) for c in zip(*staged))))):
            con.execute("INSERT INTO import_signals SELECT n, executionId, signals FROM staged")


def _read_policies(root: Path) -> list[tuple[str, str, str, str]]:
    out = []
    for path in sorted((root / POLICIES).glob("*/*/policy.json")) if (root / POLICIES).is_dir() else ():
        try:
            document = parse_json(path.read_bytes())
            canonical = canonicalize(document)
        except CanonicalizationError:
            continue
        out.append((path.parent.parent.name, path.parent.name, hashlib.sha256(canonical).hexdigest(), canonical.decode()))
    return out
