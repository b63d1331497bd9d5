"""The DuckDB audit database: attestations, signals, replay store, refusals, policies.

One file, one writer process at a time (DuckDB's file lock). Every write
goes through ``transaction()``, which also counts transactions so the
"at most two per execution" budget is observable. The replay table is the
replay store: a fingerprint is RESERVED before signing and CONFIRMED in the
same transaction that records the attestation.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from . import translog
from .attestation import FIELDS
from .errors import AuditStoreError, ParmanaError
from .merkle import MerkleBuilder

SCHEMA_VERSION = 5
DECISION_FIELDS = ("action", "requires_override", "reason", "ruleId")
# every attestation member as a column (decision flattened), in wire order, then the canonical JSON
ATTESTATION_COLUMNS = (
    "seq",
    *chain.from_iterable(((f"decision_{d}" for d in DECISION_FIELDS) if f == "decision" else (f,)) for f in FIELDS),
    "canonical",
)

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE attestations (
            seq BIGINT NOT NULL,
            executionId VARCHAR PRIMARY KEY,
            execution_fingerprint VARCHAR NOT NULL,
            policyId VARCHAR NOT NULL,
            policyVersion VARCHAR NOT NULL,
            schemaVersion VARCHAR NOT NULL,
            runtimeVersion VARCHAR NOT NULL,
            runtimeHash VARCHAR NOT NULL,
            evaluatorArtifactHash VARCHAR NOT NULL,
            signalsHash VARCHAR NOT NULL,
            bundleHash VARCHAR NOT NULL,
            decision_action VARCHAR NOT NULL,
            decision_requires_override BOOLEAN NOT NULL,
            decision_reason VARCHAR NOT NULL,
            decision_ruleId VARCHAR NOT NULL,
            execution_state VARCHAR NOT NULL,
            issuedAt VARCHAR NOT NULL,
            signerKeyId VARCHAR NOT NULL,
            signature VARCHAR NOT NULL,
            canonical VARCHAR NOT NULL
        );
        -- one row per attestation, written in the same transaction (its uniqueness is the attestations key's)
        CREATE TABLE signals (
            executionId VARCHAR NOT NULL,
            signals VARCHAR NOT NULL
        );
        CREATE TABLE replay (
            execution_fingerprint VARCHAR PRIMARY KEY,
            state VARCHAR NOT NULL,
            executionId VARCHAR NOT NULL,
            reserved_at TIMESTAMP NOT NULL,
            expires_at TIMESTAMP,
            updated_at TIMESTAMP NOT NULL
        );
        CREATE TABLE refusals (
            refused_at TIMESTAMP NOT NULL,
            code VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            input_hash VARCHAR,
            policyId VARCHAR,
            policyVersion VARCHAR,
            executionId VARCHAR
        );
        CREATE TABLE policies (
            policyId VARCHAR NOT NULL,
            policyVersion VARCHAR NOT NULL,
            bundleHash VARCHAR NOT NULL,
            document VARCHAR NOT NULL,
            first_used_at TIMESTAMP NOT NULL,
            PRIMARY KEY (policyId, policyVersion)
        );
        """,
    ),
    (
        # v2: every timestamp is TIMESTAMPTZ (UTC); issuedAt also typed, for analysis (the text stays the signed truth);
        # import_status tells this runtime's own records (NULL) from imported ones ('verified' / 'unverified')
        2,
        """
        ALTER TABLE attestations ADD COLUMN issued_at TIMESTAMPTZ;
        UPDATE attestations SET issued_at = CAST(issuedAt AS TIMESTAMPTZ);
        ALTER TABLE attestations ADD COLUMN import_status VARCHAR;
        ALTER TABLE replay ALTER COLUMN reserved_at TYPE TIMESTAMPTZ;
        ALTER TABLE replay ALTER COLUMN expires_at TYPE TIMESTAMPTZ;
        ALTER TABLE replay ALTER COLUMN updated_at TYPE TIMESTAMPTZ;
        ALTER TABLE refusals ALTER COLUMN refused_at TYPE TIMESTAMPTZ;
        ALTER TABLE policies ALTER COLUMN first_used_at TYPE TIMESTAMPTZ;
        ALTER TABLE policies ADD COLUMN import_status VARCHAR;
        ALTER TABLE schema_migrations ALTER COLUMN applied_at TYPE TIMESTAMPTZ;
        """,
    ),
    (
        # v3: the transparency log (translog.py): this runtime's records numbered as leaves, the hash of every
        # complete aligned subtree, and the checkpoints signed (their nodes are backfilled by _backfill_log)
        3,
        """
        ALTER TABLE attestations ADD COLUMN log_index BIGINT;
        UPDATE attestations SET log_index = r.i
        FROM (SELECT executionId, row_number() OVER (ORDER BY seq) - 1 AS i FROM attestations WHERE import_status IS NULL) r
        WHERE attestations.executionId = r.executionId;
        CREATE TABLE log_nodes (level TINYINT NOT NULL, end_leaf BIGINT NOT NULL, hash BLOB NOT NULL);
        CREATE TABLE log_checkpoints (size BIGINT PRIMARY KEY, root BLOB NOT NULL, note VARCHAR NOT NULL,
                                      signed_at TIMESTAMPTZ NOT NULL);
        """,
    ),
    (
        # v4: each signed policy bundle the first time it is used (bundles.py): what rollback protection checks
        4,
        """
        CREATE TABLE bundles (policyId VARCHAR NOT NULL, policyVersion VARCHAR NOT NULL, sequence BIGINT NOT NULL,
                              manifest_hash VARCHAR NOT NULL, signer_key_ids VARCHAR[] NOT NULL,
                              first_used_at TIMESTAMPTZ NOT NULL, manifest VARCHAR NOT NULL, signatures VARCHAR NOT NULL,
                              PRIMARY KEY (policyId, manifest_hash));
        """,
    ),
    (
        # v5: override records (overrides.py), every request, resolution and outcome envelope in the order recorded;
        # once_key makes the store itself refuse a second vote by one approver or a second outcome for one request.
        # Pending executions move from CONFIRMED to PENDING_OVERRIDE (their requests are issued on first use).
        5,
        """
        CREATE TABLE override_records (seq BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, hash VARCHAR NOT NULL UNIQUE,
                                       executionId VARCHAR NOT NULL, request_hash VARCHAR NOT NULL, approverId VARCHAR,
                                       decision VARCHAR, once_key VARCHAR NOT NULL UNIQUE, recorded_at TIMESTAMPTZ NOT NULL,
                                       envelope VARCHAR NOT NULL);
        UPDATE replay SET state = 'PENDING_OVERRIDE' FROM attestations a
        WHERE a.execution_fingerprint = replay.execution_fingerprint AND a.executionId = replay.executionId
          AND a.execution_state = 'pending_override' AND replay.state = 'CONFIRMED';
        """,
    ),
)
# what an insert writes: the wire columns, then issued_at derived from issuedAt
INSERT_COLUMNS = (*ATTESTATION_COLUMNS, "issued_at", "log_index")

_LOCK_PID = re.compile(r"\(PID (\d+)\)")


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC), as every TIMESTAMPTZ column holds."""
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def is_duckdb_file(path: Path) -> bool:
    """A DuckDB database file starts with a checksum and the magic bytes DUCK."""
    try:
        with open(path, "rb") as fh:
            return fh.read(12)[8:12] == b"DUCK"
    except OSError:
        return False


_OPEN: weakref.WeakValueDictionary[Path, AuditDB] = weakref.WeakValueDictionary()


class AuditDB:
    """A DuckDB audit database file, migrated to the current schema on open."""

    def __init__(self, path: str | Path, *, read_only: bool = False, wait: float = 0.0) -> None:
        """``wait``: seconds to keep retrying while another process holds the file (0: refuse at once with AUD-001)."""
        self.path = Path(path)
        self.read_only = read_only
        self.transactions = 0
        # Kept from this process's own committed writes (the file is ours alone while open): a policy version's
        # first-used bundleHash, and the log frontier after the last append, so that one execution needs no reads.
        self.known_policies: dict[tuple[str, str], str] = {}
        self._tail: Tail | None = None
        self._lock = threading.RLock()
        self._con = connect(self.path, read_only=read_only, wait=wait)
        self._con.execute("SET enable_progress_bar = false")  # long exports must not scribble on stdout
        if not read_only:
            self._migrate()
        else:
            self._check_version()
        _OPEN[self.path.resolve()] = self  # DuckDB lets one process open a file once: readers reuse this

    def __repr__(self) -> str:
        return f"AuditDB({str(self.path)!r})"

    def __enter__(self) -> AuditDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The raw DuckDB connection, for your own SQL and relations."""
        self._tail = None  # whatever is done with it, the next append reads where the log ends
        return self._open_connection()

    def _open_connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise AuditStoreError("AUD-005", "audit", f"audit database {self.path} is closed")
        return self._con

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a query and return a DataFrame (e.g. ``db.sql("from attestations")``)."""
        with self._lock:
            return self.connection.execute(query, params or []).df()

    def tail(self, con: duckdb.DuckDBPyConnection) -> Tail:
        """Where the attestations end: the next seq, the log's size and its frontier; read once, then kept."""
        if self._tail is None:
            start, leaves = con.execute("SELECT coalesce(max(seq), 0) + 1, coalesce(max(log_index) + 1, 0) FROM attestations"
                                        ).fetchall()[0]
            self._tail = Tail(start, translog.frontier(con, leaves))
        return self._tail

    # -- schema -------------------------------------------------------------------

    def schema_version(self) -> int:
        exists = self.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
        ).fetchall()[0][0]
        if not exists:
            return 0
        return self.connection.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]

    def _check_version(self) -> int:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise AuditStoreError(
                "AUD-003",
                "audit",
                f"audit database {self.path} has schema v{version}, newer than this kit understands (v{SCHEMA_VERSION}); upgrade parmana-lab",
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        pending = [(v, sql) for v, sql in MIGRATIONS if v > version]
        if not pending:
            return
        with self.transaction() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
            for v, sql in pending:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [v, utc(datetime.now(timezone.utc))])
                if v == 3:
                    _backfill_log(con)

    # -- transactions ----------------------------------------------------------------

    @contextmanager
    def transaction(self, *, keeps_tail: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing: commits on success, rolls back and re-raises on any error.

        ``keeps_tail``: the transaction does not add attestations behind ``confirm``'s back (reservations do not),
        so the kept tail stays valid; any other transaction, and any failure, makes the next append read it again.
        """
        with self._lock:
            con = self._open_connection()
            if not keeps_tail:
                self._tail = None
            self.transactions += 1
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                self._tail = None
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:
                self._tail = None
                raise AuditStoreError("AUD-006", "audit", f"commit to {self.path} failed: {exc}") from exc

    # -- reads ------------------------------------------------------------------------

    def count(self, table: str = "attestations") -> int:
        if table not in ("attestations", "signals", "replay", "refusals", "policies", "override_records"):
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            return self.connection.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    def attestations(self) -> pd.DataFrame:
        return self.sql("SELECT * EXCLUDE (canonical) FROM attestations ORDER BY seq")

    def refusals(self) -> pd.DataFrame:
        return self.sql("SELECT * FROM refusals ORDER BY refused_at")

    def replay_states(self) -> pd.DataFrame:
        return self.sql("SELECT * FROM replay ORDER BY reserved_at")



def open_in_process(source: Any) -> AuditDB | None:
    """The open AuditDB that ``source`` is or names (an AuditDB, anything with a ``.db``, or its path), if any.

    DuckDB refuses a second handle on a file this process already holds, so a
    report over the audit DB of an open Runtime reads through that Runtime's.
    """
    db = getattr(source, "db", source)
    if isinstance(db, AuditDB):
        return db if db._con is not None else None
    if isinstance(source, (str, Path)):
        try:
            found = _OPEN.get(Path(source).resolve())
        except OSError:
            return None
        return found if found is not None and found._con is not None else None
    return None


def source_name(source: Any) -> str:
    """How a report names a source: the path as given (an open AuditDB or Runtime: its DB's path)."""
    db = None if isinstance(source, (str, Path)) else open_in_process(source)
    return str(db.path) if db is not None else str(source)


@contextmanager
def reading(source: Any) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to read an audit DB: a cursor on this process's open handle, else a read-only open of the file.

    A DuckDB file that is not an audit DB (no attestations table) is AUD-002.
    """
    db = open_in_process(source)
    if db is not None:
        con = db.connection.cursor()
        con.execute("SET TimeZone = 'UTC'")
    else:
        con = connect(Path(source), read_only=True)
    try:
        require_audit_tables(con, db.path if db is not None else Path(source))
        yield con
    finally:
        con.close()


def require_audit_tables(con: duckdb.DuckDBPyConnection, path: Path, schema: str | None = None) -> None:
    """AUD-002 unless the database holds the audit tables a reader needs."""
    where = f"table_catalog = '{schema}' AND " if schema else ""
    names = {r[0] for r in con.execute(
        f"SELECT table_name FROM information_schema.tables WHERE {where}table_name IN ('attestations', 'policies', 'signals')"
    ).fetchall()}
    if names != {"attestations", "policies", "signals"}:
        missing = ", ".join(sorted({"attestations", "policies", "signals"} - names))
        raise AuditStoreError("AUD-002", "audit", f"{path} is a DuckDB file but not a parmana audit database (no {missing} table)")


def connect(path: Path, *, read_only: bool = False, wait: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with the kit's refusals (AUD-001 in use, AUD-002 not a DB, AUD-004 cannot open),
    retrying while another process holds its lock, up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    pause = 0.02
    while True:
        try:
            return _connect(path, read_only)
        except AuditStoreError as exc:
            if exc.code != "AUD-001" or wait <= 0:
                raise
            if time.monotonic() + pause > deadline:
                raise AuditStoreError(exc.code, exc.stage, f"{exc.reason} (waited {wait:g} s)") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only and not path.exists():
        raise AuditStoreError("AUD-002", "audit", f"no audit database at {path}")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditStoreError("AUD-004", "audit", f"cannot create {path.parent}: {exc.strerror}") from None
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise open_refusal(path, exc) from None
    con.execute("SET TimeZone = 'UTC'")  # TIMESTAMPTZ values come back, and print, in UTC
    return con


def first_line(exc: BaseException) -> str:
    """The gist of an error for a refusal's reason (DuckDB's messages run to many lines)."""
    text = exc.reason if isinstance(exc, ParmanaError) else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def storage_hint(exc: BaseException) -> str:
    """What a person can do about a failed write, when the error says."""
    text = str(exc)
    if "No space left" in text or "File too large" in text or "Disk quota" in text:
        return " (the disk or a file size limit is full: free space first)"
    if "Read-only file system" in text or "Permission denied" in text:
        return " (the workspace is not writable)"
    return ""


def open_refusal(path: Path, exc: duckdb.Error) -> AuditStoreError:
    """What DuckDB's failure to open (or ATTACH) an audit DB file means for a person."""
    text = str(exc)
    if isinstance(exc, duckdb.IOException) and "lock" in text.lower():
        pid = _LOCK_PID.search(text)
        holder = f" (process {pid.group(1)})" if pid else ""
        return AuditStoreError(
            "AUD-001",
            "audit",
            f"audit database {path} is in use by another process{holder}. Close that notebook kernel or "
            "command (or wait for it: --wait SECONDS), or pass another --workspace.",
        )
    if isinstance(exc, duckdb.IOException):
        return AuditStoreError("AUD-004", "audit", f"cannot open audit database {path}: {text.splitlines()[0]}")
    return AuditStoreError("AUD-002", "audit", f"{path} is not a usable DuckDB audit database: {text.splitlines()[0]}")


def expiry(now: datetime, seconds: float) -> datetime:
    return utc(now) + timedelta(seconds=seconds)


# -- replay store and recording ---------------------------------------------------------
# Rows are plain tuples so this layer knows SQL, not the runtime's models.

REFUSAL_COLUMNS = ("refused_at", "code", "stage", "reason", "input_hash", "policyId", "policyVersion", "executionId")
CONSUMED = ("CONFIRMED", "PENDING_OVERRIDE", "OVERRIDDEN", "REJECTED", "EXPIRED")
# What each state of a fingerprint in the replay table means (shown to students where they first meet the table).
REPLAY_STATES = {
    "RESERVED": "an execution is between its two transactions: the fingerprint is held (until reservation_ttl) so that a "
                "second process cannot sign the same request meanwhile",
    "FAILED": "the execution failed after reserving (nothing was signed); held for failed_ttl, then free to run again",
    "CONFIRMED": "signed and recorded: the fingerprint is consumed for good, the same request again is INV-013",
    "PENDING_OVERRIDE": "signed as pending_override and waiting for approvers' signatures; consumed all the same",
    "OVERRIDDEN": "a pending execution the approvers approved (the threshold of distinct approvers was met); consumed",
    "REJECTED": "a pending execution the approvers rejected; consumed: a rejected request is not tried again",
    "EXPIRED": "a pending execution nobody decided in time (pendingTtlSeconds); consumed, `overrides reopen` asks again",
}


def _frame(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, np.ndarray]:
    return {c: column([r[i] for r in rows]) for i, c in enumerate(columns)}


@dataclass
class Tail:
    """The end of this process's attestations: kept between executions so that one append reads nothing."""

    next_seq: int
    frontier: MerkleBuilder  # its count is the log's size


class Registered:
    """Expose column dicts to SQL under fixed names for one block."""

    def __init__(self, con: duckdb.DuckDBPyConnection, **frames: dict[str, np.ndarray]) -> None:
        self.con, self.frames = con, frames

    def __enter__(self) -> None:
        for name, frame in self.frames.items():
            self.con.register(name, frame)

    def __exit__(self, *exc: object) -> None:
        for name in self.frames:
            try:
                self.con.unregister(name)
            except duckdb.Error:
                if exc[0] is None:
                    raise
                # the statement that failed aborted the transaction, so this fails too;
                # the first error is the one that says what happened


def reserve(
    db: AuditDB,
    candidates: Sequence[tuple[str, str, tuple[str, str]]],
    policies: dict[tuple[str, str], tuple[str, str]],
    refusals: list[tuple],
    *,
    now: datetime,
    ttl: float,
    clock: Any = None,
    bundles: dict[tuple[str, str], tuple[int, str, list[str], str, str]] | None = None,
) -> dict[int, tuple[str, str]]:
    """Transaction 1: reserve fingerprints, register policies, record refusals.

    ``candidates`` are (fingerprint, executionId, (policyId, policyVersion));
    ``policies`` maps a policy key to (bundleHash, canonical document).
    Returns {candidate index: (code, reason)} for the ones refused; their
    refusals are recorded in the same transaction, as are ``refusals``.
    """
    at = utc(now)
    fps, ids, keys = zip(*candidates) if candidates else ((), (), ())
    with db.transaction(keeps_tail=True) as con:
        changed, first_used = _register_policies(con, policies, at, db.known_policies)
        if bundles:
            changed = {**_register_bundles(con, bundles, at), **changed}
        refused = {i: changed[key] for i, key in enumerate(keys) if key in changed} if changed else {}
        times = [at, at + timedelta(seconds=ttl), at]
        _reserve_checked(con, fps, ids, refused, times, at)
        decided = clock() if clock is not None and refused else now  # when these refusals happened
        for i, (code, reason) in refused.items():
            pid, pver = keys[i]
            refusals.append((decided, code, "replay" if code.startswith("INV") else "policy", reason, fps[i], pid, pver, ids[i]))
        _insert_refusals(con, refusals)
    db.known_policies.update(first_used)  # committed: later reservations need not read them again
    return refused


def _reserve_checked(con, fps: Sequence[str], ids: Sequence[str], refused: dict[int, tuple[str, str]],
                     times: list[datetime], at: datetime) -> None:
    """Every candidate against the replay store and the recorded ids: consumed (INV-013), held (INV-014), id used
    (INV-015) go into ``refused``; the rest are reserved, an expired or failed hold replaced."""
    if len(fps) == 1:  # parameters cost less than a registered frame
        seen = [(0, *r) for r in con.execute("SELECT state, expires_at FROM replay WHERE execution_fingerprint = ?",
                                             [fps[0]]).fetchall()]
        used_ids = con.execute("SELECT 0 FROM attestations WHERE executionId = ?", [ids[0]]).fetchall()
    else:
        with Registered(con, cand={"i": np.arange(len(fps), dtype=np.int64), "execution_fingerprint": column(fps),
                                   "executionId": column(ids)}):
            seen = con.execute(
                "SELECT c.i, r.state, r.expires_at FROM cand c JOIN replay r USING (execution_fingerprint)"
            ).fetchall()
            used_ids = con.execute("SELECT c.i FROM cand c JOIN attestations a USING (executionId)").fetchall()
    for i, state, expires_at in seen:
        if state in CONSUMED:
            refused.setdefault(i, ("INV-013", f"Replay detected: execution_fingerprint {fps[i]} has already been consumed"))
        elif expires_at is None or expires_at > at:
            why = "reserved by an execution in progress" if state == "RESERVED" else "held after a failed attempt"
            refused.setdefault(
                i, ("INV-014", f"execution_fingerprint {fps[i]} is {why}; retry after {expires_at:%Y-%m-%dT%H:%M:%SZ}")
            )
    for (i,) in used_ids:
        refused.setdefault(i, ("INV-015", f"executionId {ids[i]!r} is already recorded; each execution needs a new id"))
    stale = {i for i, _, _ in seen} - refused.keys()  # expired or failed: replaced
    fresh = [i for i in range(len(fps)) if i not in refused and i not in stale]
    for picked, verb in ((fresh, ""), (sorted(stale), "OR REPLACE ")):
        if len(picked) == len(fps) == 1:
            con.execute(f"INSERT {verb}INTO replay VALUES (?, 'RESERVED', ?, ?, ?, ?)", [fps[0], ids[0], *times])
        elif picked:
            with Registered(con, pick={"i": np.array(picked, dtype=np.int64), "execution_fingerprint":
                                       column([fps[i] for i in picked]), "executionId": column([ids[i] for i in picked])}):
                con.execute(f"INSERT {verb}INTO replay SELECT execution_fingerprint, 'RESERVED', executionId, ?, ?, ? "
                            "FROM pick", times)


def _backfill_log(con) -> None:
    """Log nodes for the records an audit DB held before it had a log (migration to v3), 50,000 leaves at a time."""
    size, chunk = 0, 50_000
    while rows := con.execute("SELECT canonical FROM attestations WHERE log_index >= ? AND log_index < ? ORDER BY log_index",
                              [size, size + chunk]).fetchall():
        with Registered(con, backfill=translog.append_nodes(con, size, [r[0].encode("utf-8") for r in rows])):
            con.execute("INSERT INTO log_nodes SELECT level, end_leaf, hash FROM backfill")
        size += len(rows)


def _register_bundles(con, bundles: dict[tuple[str, str], tuple[int, str, list[str], str, str]], at: datetime) -> dict:
    """Rollback protection: a bundle's sequence may not be below the highest used for its policyId (POL-034),
    nor equal to a used one with another manifest (POL-035); a new bundle is recorded on first use."""
    refused: dict[tuple[str, str], tuple[str, str]] = {}
    for (pid, pver), (sequence, manifest_hash, signers, manifest, signatures) in sorted(bundles.items(), key=lambda kv: kv[1][0]):
        used = con.execute("SELECT policyVersion, sequence, manifest_hash FROM bundles WHERE policyId = ?", [pid]).fetchall()
        top = max((s for _, s, _ in used), default=0)
        same = [v for v, s, h in used if s == sequence and h != manifest_hash]
        if same:
            refused[(pid, pver)] = ("POL-035", f"bundle sequence {sequence} of {pid} was already used by another manifest "
                                               f"({pid} {same[0]}): a sequence names one bundle only")
        elif sequence < top:
            refused[(pid, pver)] = ("POL-034", f"rollback: {pid} {pver} has bundle sequence {sequence}, but sequence {top} "
                                               f"of {pid} has been used in this audit DB")
        elif not any(h == manifest_hash for _, _, h in used):
            con.execute("INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [pid, pver, sequence, manifest_hash, signers, at, manifest, signatures])
    return refused


def _register_policies(con, policies: dict[tuple[str, str], tuple[str, str]], at: datetime,
                       known: dict[tuple[str, str], str]) -> tuple[dict, dict[tuple[str, str], str]]:
    """Record first use of each policy version; refuse one whose bytes changed since.

    ``known`` holds first-used bundleHashes already read or written by this process (rows are never changed);
    returns the refusals and the bundleHashes this call learned, to remember once the transaction commits.
    """
    changed: dict[tuple[str, str], tuple[str, str]] = {}
    learned: dict[tuple[str, str], str] = {}
    for (pid, pver), (bundle_hash, document) in policies.items():
        first = known.get((pid, pver))
        if first is None:
            rows = con.execute("SELECT bundleHash FROM policies WHERE policyId = ? AND policyVersion = ?", [pid, pver]).fetchall()
            if not rows:
                con.execute("INSERT INTO policies (policyId, policyVersion, bundleHash, document, first_used_at) "
                            "VALUES (?, ?, ?, ?, ?)", [pid, pver, bundle_hash, document, at])
            first = learned[(pid, pver)] = rows[0][0] if rows else bundle_hash
        if first != bundle_hash:
            changed[(pid, pver)] = (
                "POL-022",
                f"policy {pid} {pver} changed after it was first used (bundleHash was {first}, now {bundle_hash}); "
                "published policies are immutable: publish the change as a new version",
            )
    return changed, learned


def _insert_refusals(con, refusals: list[tuple]) -> None:
    if not refusals:
        return
    rows = [(utc(r[0]), *r[1:]) for r in refusals]
    with Registered(con, new_refusals=_frame(REFUSAL_COLUMNS, rows)):
        con.execute("INSERT INTO refusals SELECT * FROM new_refusals")


def record_refusals(db: AuditDB, refusals: list[tuple]) -> None:
    """Refusals that happened before any reservation, in one transaction."""
    if refusals:
        with db.transaction(keeps_tail=True) as con:  # refusals only: the attestations' tail is untouched
            _insert_refusals(con, refusals)


def confirm(db: AuditDB, templates: list[dict[str, Any]], rows: list[tuple], *, now: datetime,
            refusals: Sequence[tuple] = (), requests: Sequence[tuple[str, str, str]] = ()) -> None:
    """Transaction 2: record attestations and their signals, mark fingerprints CONFIRMED.

    Fields shared by many attestations (policy, runtime, decision, key) come
    once per ``templates`` entry; each row of ``rows`` is (template index,
    executionId, execution_fingerprint, signalsHash, issuedAt, signature,
    canonical attestation, canonical signals). ``refusals`` are recorded in the
    same transaction (replays of these very executions within their batch), as are ``requests``
    (executionId, hash, envelope JSON): the OverrideRequest of each pending_override execution, whose
    fingerprint is left PENDING_OVERRIDE instead of CONFIRMED.
    """
    at = utc(now)
    with db.transaction(keeps_tail=True) as con:
        tail = db.tail(con)
        start, leaves, builder = tail.next_seq, tail.frontier.count, tail.frontier.copy()
        if len(rows) == 1:
            _confirm_one(con, templates[rows[0][0]], rows[0], start, leaves, builder, at)
        else:
            _confirm_many(con, templates, rows, start, leaves, builder, at)
        if requests:
            insert_override_records(con, [("request", h, eid, h, None, None, h, envelope) for eid, h, envelope in requests], at)
        _insert_refusals(con, list(refusals))
    db._tail = Tail(start + len(rows), builder)  # committed: the next append reads nothing


def _confirm_many(con, templates: list[dict[str, Any]], rows: list[tuple], start: int, leaves: int, builder: MerkleBuilder,
                  at: datetime) -> None:
    """A batch: shared fields once per template, rows and log nodes as registered frames, four statements."""
    shared = {
        "tpl": np.arange(len(templates), dtype=np.int64),
        **{name: column([t[name] for t in templates]) for name in _SHARED_FIELDS},
        **{f"decision_{name}": column([t["decision"][name] for t in templates]) for name in DECISION_FIELDS},
    }
    new_rows = {"seq": np.arange(start, start + len(rows), dtype=np.int64), **dict(zip(_ROW_FIELDS, map(column, zip(*rows)))),
                "log_index": np.arange(leaves, leaves + len(rows), dtype=np.int64)}
    nodes = translog.append_nodes(con, leaves, [r[6].encode("utf-8") for r in rows], builder)
    with Registered(con, new_rows=new_rows, templates=shared, new_nodes=nodes):
        con.execute(
            f"INSERT INTO attestations ({', '.join(INSERT_COLUMNS)}) SELECT "
            f"{', '.join(_select_column(c) for c in ATTESTATION_COLUMNS)}, CAST(n.issuedAt AS TIMESTAMPTZ), n.log_index "
            "FROM new_rows n JOIN templates t USING (tpl)"
        )
        con.execute("INSERT INTO log_nodes SELECT level, end_leaf, hash FROM new_nodes")
        con.execute("INSERT INTO signals SELECT executionId, signals FROM new_rows")
        con.execute(
            "UPDATE replay SET state = CASE WHEN t.execution_state = 'pending_override' THEN 'PENDING_OVERRIDE' "
            "ELSE 'CONFIRMED' END, expires_at = NULL, updated_at = ? "
            "FROM new_rows n JOIN templates t USING (tpl) WHERE replay.execution_fingerprint = n.execution_fingerprint",
            [at],
        )


_ONE_ATTESTATION = (f"INSERT INTO attestations ({', '.join(INSERT_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(ATTESTATION_COLUMNS))}, CAST(? AS TIMESTAMPTZ), ?)")


def _confirm_one(con, template: dict[str, Any], row: tuple, start: int, leaves: int, builder: MerkleBuilder,
                 at: datetime) -> None:
    """One execution: the same four writes with bound parameters (registering frames costs more than the rows)."""
    fields = dict(zip(_ROW_FIELDS, row))
    values = [start if c == "seq" else fields[c] if c in fields else template["decision"][c[9:]] if c.startswith("decision_")
              else template[c] for c in ATTESTATION_COLUMNS]
    con.execute(_ONE_ATTESTATION, [*values, fields["issuedAt"], leaves])
    nodes = translog.new_nodes(builder, leaves, [fields["canonical"].encode("utf-8")])
    con.execute(f"INSERT INTO log_nodes VALUES {', '.join(['(?, ?, ?)'] * len(nodes))}", [v for n in nodes for v in n])
    con.execute("INSERT INTO signals VALUES (?, ?)", [fields["executionId"], fields["signals"]])
    state = "PENDING_OVERRIDE" if template["execution_state"] == "pending_override" else "CONFIRMED"
    con.execute("UPDATE replay SET state = ?, expires_at = NULL, updated_at = ? WHERE execution_fingerprint = ?",
                [state, at, fields["execution_fingerprint"]])


OVERRIDE_COLUMNS = ("kind", "hash", "executionId", "request_hash", "approverId", "decision", "once_key", "envelope")


def insert_override_records(con, records: Sequence[tuple], at: datetime) -> None:
    """Append override records (OVERRIDE_COLUMNS each) in order; a second vote by one approver on one request, or
    a second outcome, violates once_key and aborts the transaction."""
    start = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM override_records").fetchall()[0][0]
    frame = {"seq": np.arange(start, start + len(records), dtype=np.int64), **_frame(OVERRIDE_COLUMNS, records)}
    with Registered(con, new_overrides=frame):
        con.execute(f"INSERT INTO override_records (seq, {', '.join(OVERRIDE_COLUMNS)}, recorded_at) "
                    f"SELECT seq, {', '.join(OVERRIDE_COLUMNS)}, ? FROM new_overrides", [at])


def set_replay_state(con, execution_id: str, state: str, at: datetime) -> None:
    con.execute("UPDATE replay SET state = ?, updated_at = ? WHERE executionId = ?", [state, utc(at), execution_id])


_ROW_FIELDS = ("tpl", "executionId", "execution_fingerprint", "signalsHash", "issuedAt", "signature", "canonical", "signals")
_SHARED_FIELDS = tuple(
    c for c in ATTESTATION_COLUMNS if c not in _ROW_FIELDS and c != "seq" and not c.startswith("decision_")
)


def _select_column(name: str) -> str:
    return f"n.{name}" if name in _ROW_FIELDS or name == "seq" else f"t.{name}"


def column(values: Sequence[Any]) -> np.ndarray:
    """A column for DuckDB's numpy scan (object arrays convert faster than pandas strings)."""
    if values and type(values[0]) is bool:
        return np.array(values, dtype=bool)
    return np.array(values, dtype=object)


def mark_failed(db: AuditDB, fingerprints: Sequence[str], *, now: datetime, ttl: float) -> None:
    """Release reservations whose execution failed after reserving; retryable after ``ttl``."""
    at = utc(now)
    with db.transaction() as con:
        with Registered(con, failed=_frame(("execution_fingerprint",), [(fp,) for fp in fingerprints])):
            con.execute(
                "UPDATE replay SET state = 'FAILED', expires_at = ?, updated_at = ? "
                "FROM failed WHERE replay.execution_fingerprint = failed.execution_fingerprint AND replay.state = 'RESERVED'",
                [at + timedelta(seconds=ttl), at],
            )
