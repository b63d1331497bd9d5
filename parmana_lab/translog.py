"""The runtime's audit log as an RFC 6962 tree: stored subtree hashes, signed checkpoints, proofs.

Leaves are this runtime's own attestations in audit order (``log_index`` 0, 1,
…; imported records have none), each leaf the attestation's JCS line exactly
as an export writes it, so a full export's merkleRoot is the log's root.

``log_nodes`` holds the hash of every complete aligned subtree (level k, the
leaves [end - 2**k, end)), written in the transaction that records the
attestations. A checkpoint or a proof reads O(log n) of them; nothing ever
rehashes the whole log. Before signing, the runtime checks that the log it is
about to sign extends every checkpoint it signed before and that the records
added since hash to the stored leaves, so it never signs over a rewritten
history (LOG-002, LOG-003).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ParmanaError
from .keys import origin_for
from .merkle import MerkleBuilder, leaf_hash
from .notes import (
    Checkpoint,
    ConsistencyProofText,
    InclusionProofText,
    checkpoint_text,
    parse_checkpoint,
    sign_note,
)
from .proofs import aligned_parts, consistency_ranges, inclusion_ranges, range_hash, verify_consistency

EMPTY_ROOT = hashlib.sha256(b"").digest()
_POINT_LOOKUPS = 256  # more nodes than this at once are read with a join


class LogError(ParmanaError):
    """The log cannot answer or refuses to sign (LOG-xxx)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, "log", reason)


def _level(size: int) -> int:
    return size.bit_length() - 1


# -- writing: the nodes a batch of new leaves completes ------------------------------------------


def append_nodes(con, size: int, lines: Sequence[bytes], builder: MerkleBuilder | None = None) -> dict[str, np.ndarray]:
    """Columns of the log_nodes rows that appending ``lines`` after ``size`` leaves completes.

    ``builder`` stands at ``size`` already (the frontier the audit DB kept from its last append); it is advanced.
    """
    levels, ends, hashes = [], [], []
    for level, end, node in new_nodes(builder or frontier(con, size), size, lines):
        levels.append(level), ends.append(end), hashes.append(node)
    return {"level": np.array(levels, dtype=np.int8), "end_leaf": np.array(ends, dtype=np.int64),
            "hash": np.array(hashes, dtype=object)}


def new_nodes(builder: MerkleBuilder, size: int, lines: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
    """(level, end_leaf, hash) of every subtree that appending ``lines`` to ``builder`` (at ``size``) completes."""
    return [(_level(width), end, node) for end, line in enumerate(lines, start=size + 1)
            for width, node in builder.add_leaf_hash(leaf_hash(line))]


def frontier(con, size: int, nodes: dict[tuple[int, int], bytes] | None = None) -> MerkleBuilder:
    """A MerkleBuilder standing at ``size`` leaves, seeded with the stored frontier (or ``nodes`` already read)."""
    parts = aligned_parts(0, size)
    nodes = nodes if nodes is not None else _nodes(con, parts)
    builder = MerkleBuilder()
    builder.add_subtrees([(b - a, nodes[(a, b)]) for a, b in parts])
    return builder


# -- reading ------------------------------------------------------------------------------------


def _nodes(con, parts: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored hashes of these aligned subtrees; LOG-002 if one is missing or stored twice.

    A few are point lookups in one query (rows are written in end_leaf order, so each touches one row
    group); many, as a filtered export's proofs need, are a join against a registered frame.
    """
    unique = list(dict.fromkeys(parts))
    if not unique:
        return {}
    if len(unique) <= _POINT_LOOKUPS:
        rows = con.execute(" UNION ALL ".join(  # integers only: nothing to quote
            f"SELECT {_level(b - a)}, {b}, hash FROM log_nodes WHERE end_leaf = {b} AND level = {_level(b - a)}"
            for a, b in unique)).fetchall()
    else:
        wanted = {"level": np.array([_level(b - a) for a, b in unique], dtype=np.int8),
                  "end_leaf": np.array([b for _, b in unique], dtype=np.int64)}
        con.register("log_wanted", wanted)
        try:
            rows = con.execute("SELECT n.level, n.end_leaf, n.hash FROM log_nodes n SEMI JOIN log_wanted w "
                               "USING (level, end_leaf)").fetchall()
        finally:
            con.unregister("log_wanted")
    found = {(end - (1 << level), end): bytes(h) for level, end, h in rows}
    missing = [p for p in unique if p not in found]
    if missing or len(rows) != len(unique):
        raise LogError("LOG-002", f"the audit DB's log nodes are incomplete or doubled (e.g. leaves {missing[:1]}): "
                                  "the log was edited behind the runtime's back")
    return found


def _proof(nodes: dict[tuple[int, int], bytes], ranges: Sequence[tuple[int, int]]) -> tuple[bytes, ...]:
    """Proof hashes from stored nodes: each range folded from its aligned parts."""
    return tuple(range_hash([nodes[p] for p in aligned_parts(a, b)]) for a, b in ranges)


def _parts(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return [p for a, b in ranges for p in aligned_parts(a, b)]


def log_size(con) -> int:
    """How many leaves the log has; LOG-002 unless the records and the stored leaves agree on it."""
    size, top = con.execute("SELECT count(log_index), coalesce(max(log_index) + 1, 0) FROM attestations").fetchall()[0]
    # leaves are written in end_leaf order: only the tail is read to find the last one
    tail = con.execute(f"SELECT count(*), coalesce(max(end_leaf), 0) FROM log_nodes WHERE level = 0 AND end_leaf >= {top}"
                       ).fetchall()[0]
    if not size == top or tail != ((1, top) if top else (0, 0)):
        raise LogError("LOG-002", f"the audit DB holds {size} of this runtime's records, numbered up to {top}, and the log's "
                                  f"leaves end at {tail[1]}: records were deleted or added behind the runtime's back")
    return size


def root_at(con, size: int) -> bytes:
    return bytes.fromhex(frontier(con, size).root())


@dataclass(frozen=True)
class LogInfo:
    origin: str
    size: int
    root: str  # hex
    latest_checkpoint: str | None


class TransparencyLog:
    """The log of one Runtime: ``rt.log.checkpoint()``, ``rt.log.prove(execution_id)``, ``rt.log.prove_consistency(old)``."""

    def __init__(self, db, key_provider, first_key_id, clock) -> None:
        self._db, self._key, self._first_key_id, self._clock = db, key_provider, first_key_id, clock
        self._origin: str | None = None

    def __repr__(self) -> str:
        return f"TransparencyLog({self.origin!r})"

    @property
    def origin(self) -> str:
        if self._origin is None:  # the first key never changes, so neither does the name
            self._origin = origin_for(self._first_key_id())
        return self._origin

    def info(self) -> LogInfo:
        with self._db._lock:
            con = self._db.connection
            size = log_size(con)
            latest = con.execute("SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchall()
            return LogInfo(self.origin, size, root_at(con, size).hex(), latest[0][0] if latest else None)

    def checkpoint(self) -> Checkpoint:
        """Sign (and record) a checkpoint of the whole log, after checking it extends every earlier one."""
        with self._db.transaction() as con:
            size = log_size(con)
            root = self._check_history(con, size)
            existing = con.execute("SELECT note FROM log_checkpoints WHERE size = ?", [size]).fetchall()
            if existing:
                return parse_checkpoint(existing[0][0])
            note = sign_note(checkpoint_text(self.origin, size, root), self.origin, self._key())
            con.execute("INSERT INTO log_checkpoints VALUES (?, ?, ?, ?)", [size, root, note.render(), self._clock()])
        return parse_checkpoint(note.render())

    def _check_history(self, con, size: int) -> bytes:
        """The root at ``size``, after checking it extends the latest signed checkpoint (LOG-003) and that the
        records added since then hash to the stored leaves and subtrees (LOG-002 / LOG-003)."""
        last = con.execute("SELECT size, root FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchall()
        old_size, old_root = (last[0][0], bytes(last[0][1])) if last else (0, EMPTY_ROOT)
        if size < old_size:
            raise LogError("LOG-003", f"the log has {size} leaves but a checkpoint of {old_size} was signed: history was removed")
        new_parts = aligned_parts(0, size)
        nodes = _nodes(con, [*aligned_parts(0, old_size), *new_parts])
        rebuilt = frontier(con, old_size, nodes)
        if bytes.fromhex(rebuilt.root()) != old_root:
            raise LogError("LOG-003", f"the stored log no longer has the root signed at size {old_size}: history was rewritten")
        rows = con.execute("SELECT log_index, canonical FROM attestations WHERE log_index >= ? ORDER BY log_index",
                           [old_size]).fetchall()
        stored = dict(con.execute("SELECT end_leaf - 1, hash FROM log_nodes WHERE level = 0 AND end_leaf > ?",
                                  [old_size]).fetchall())
        for index, canonical in rows:
            h = leaf_hash(canonical.encode("utf-8"))
            if bytes(stored.get(index, b"")) != h:
                raise LogError("LOG-002", f"record {index} of the log no longer hashes to its leaf: it was edited after it "
                                          "was recorded")
            rebuilt.add_leaf_hash(h)
        root = range_hash([nodes[p] for p in new_parts]) if new_parts else EMPTY_ROOT
        if bytes.fromhex(rebuilt.root()) != root:
            raise LogError("LOG-003", "the stored subtree hashes do not match the records added since the last checkpoint")
        return root

    def _checkpoint(self, con, checkpoint: Checkpoint | str | bytes | None) -> Checkpoint:
        """The given checkpoint (or the latest signed), if it names this log."""
        if checkpoint is None:
            latest = con.execute("SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchall()
            if not latest:
                raise LogError("LOG-004", "no checkpoint signed yet: run `parmana-lab log checkpoint` first")
            checkpoint = latest[0][0]
        cp = checkpoint if isinstance(checkpoint, Checkpoint) else parse_checkpoint(checkpoint)
        if cp.origin != self.origin:
            raise LogError("LOG-004", f"the checkpoint is of log {cp.origin!r}, not this one ({self.origin})")
        return cp

    def _state(self, con, cp: Checkpoint, also: Sequence[tuple[int, int]] = ()) -> dict[tuple[int, int], bytes]:
        """LOG-003 unless ``cp`` is a state of this log; returns the stored nodes of ``also``, read in the same query."""
        if cp.size > log_size(con):
            raise LogError("LOG-003", f"the checkpoint of size {cp.size} is larger than this log")
        nodes = _nodes(con, [*aligned_parts(0, cp.size), *also])
        if bytes.fromhex(frontier(con, cp.size, nodes).root()) != cp.root:
            raise LogError("LOG-003", f"the checkpoint of size {cp.size} is not a state of this log")
        return nodes

    def prove(self, execution_id: str, checkpoint: Checkpoint | str | bytes | None = None) -> InclusionProofText:
        """A c2sp.org/tlog-proof@v1 for one attestation, carrying the attestation line as its ``extra`` data."""
        with self._db._lock:
            con = self._db.connection
            found = con.execute("SELECT log_index, canonical FROM attestations WHERE executionId = ?", [execution_id]).fetchall()
            if not found or found[0][0] is None:
                raise LogError("LOG-001", f"executionId {execution_id!r} is not in this runtime's log"
                                          + (" (an imported record is in its own runtime's log)" if found else ""))
            index, canonical = found[0]
            cp = self._checkpoint(con, checkpoint)
            if index >= cp.size:
                raise LogError("LOG-001", f"executionId {execution_id!r} was logged after the checkpoint of size {cp.size}; "
                                          "sign a newer checkpoint")
            ranges = inclusion_ranges(index, cp.size)
            nodes = self._state(con, cp, [(index, index + 1), *_parts(ranges)])
            line = canonical.encode("utf-8")
            if nodes[(index, index + 1)] != leaf_hash(line):
                raise LogError("LOG-002", f"the record of {execution_id} no longer hashes to its leaf: it was edited")
            return InclusionProofText(index, _proof(nodes, ranges), cp, extra=line)

    def inclusion_proofs(self, indices: Sequence[int], checkpoint: Checkpoint, batch: int = 20_000) -> list[tuple[bytes, ...]]:
        """The inclusion proof of each leaf index in ``checkpoint`` (a filtered export's lines), read in batches."""
        out: list[tuple[bytes, ...]] = []
        with self._db._lock:
            con = self._db.connection
            self._state(con, self._checkpoint(con, checkpoint))
            for start in range(0, len(indices), batch):
                ranges = [inclusion_ranges(i, checkpoint.size) for i in indices[start:start + batch]]
                nodes = _nodes(con, (p for rs in ranges for p in _parts(rs)))
                out += [_proof(nodes, rs) for rs in ranges]
        return out

    def prove_consistency(self, old: Checkpoint | str | bytes, new: Checkpoint | str | bytes | None = None) -> ConsistencyProofText:
        """The tlog-witness add-checkpoint body from an older checkpoint of this log to the latest (or ``new``)."""
        with self._db._lock:
            con = self._db.connection
            old_cp, new_cp = self._checkpoint(con, old), self._checkpoint(con, new)
            if new_cp.size < old_cp.size:
                raise LogError("LOG-004", f"the old checkpoint ({old_cp.size}) is newer than the new one ({new_cp.size})")
            ranges = consistency_ranges(old_cp.size, new_cp.size) if 0 < old_cp.size < new_cp.size else []
            self._state(con, old_cp)
            hashes = _proof(self._state(con, new_cp, _parts(ranges)), ranges)
            if old_cp.size:  # what a witness will check: never hand out a proof that does not verify
                verify_consistency(old_cp.size, new_cp.size, list(hashes), old_cp.root, new_cp.root)
            return ConsistencyProofText(old_cp.size, hashes, new_cp)
