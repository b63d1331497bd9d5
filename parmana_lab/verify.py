"""Offline verification: one attestation, or whole archives in bulk.

Trust comes from the verifier's trust store only (never from the archive's
keys.json unless explicitly asked). Each attestation gets a status per check
and one primary reason code, the most fundamental failure:

    MALFORMED > KEY_UNKNOWN > SIGNATURE_INVALID > KEY_REVOKED > KEY_NOT_VALID_AT_ISSUE
    > content checks (fingerprint, signals hash, policy, bundle, decision, duplicate)
    > RUNTIME_UNKNOWN (a warning: another runtime, not tampering)

The per-line work is a pure function of (line, signals line, context), so it
runs the same in-process or in worker processes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import nacl.bindings
import nacl.exceptions
import orjson
from pydantic import BaseModel, ConfigDict, Field

from ._gc import cyclic_gc_paused
from .archive import (
    ATTESTATIONS,
    CHECKPOINT,
    KEYS,
    LOG_PROOFS,
    MANIFEST,
    SIGNALS,
    ArchiveError,
    ArchiveManifest,
    iter_line_blocks,
    manifest_message,
    open_archive,
    require_attestations,
)
from .attestation import ExecutionAttestation, decode_signature, parse_attestation_line
from .authority import Authority
from .canonical import canonicalize, parse_json
from .checks import (
    CHECK_INDEX,
    CHECKS,
    CODE_ORDER,
    CODE_RANK,
    FAILED,
    HINTS,
    NOT_CHECKABLE,
    SINGLE_HINTS,
    STATUS_NAMES,
    VERIFIED,
    CheckStatus,
    Context,
    PackedRows,
    PolicyEntry,
    Row,
    SignalsAligner,
    check_chunk,
    check_line,
    check_lines,
    load_archive_policies,
    pack_rows,
)
from .errors import CanonicalizationError, KeyStoreError, ParmanaError
from .keys import TrustStore
from .merkle import MerkleBuilder, leaf_hash
from .override_check import check_overrides
from .policy import Policy
from .progress import Progress, progress_bar

if TYPE_CHECKING:
    import multiprocessing.context

    import pandas as pd


class Finding(BaseModel):
    """One failed (or warning) check with what was expected and what was seen."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    code: str
    check: str
    expected: str
    observed: str


class VerificationResult(BaseModel):
    """The verdict on one attestation."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    executionId: str | None
    line: int | None = None
    status: Literal["verified", "warning", "failed"]
    code: str
    checks: dict[str, CheckStatus]
    expected: str | None = None
    observed: str | None = None
    hint: str
    findings: list[Finding] = []
    policyId: str | None = None
    policyVersion: str | None = None
    action: str | None = None
    override: Literal["approved", "rejected", "expired", "pending"] | None = None  # pending_override lines, when checked

    @property
    def valid(self) -> bool:
        return self.status != "failed"

    def _repr_html_(self) -> str:
        from ._html import verification_html

        return verification_html(self)


# -- the verification context (what a verifier trusts and knows) -------------------------


# -- one line ---------------------------------------------------------------------------


# -- single attestation API --------------------------------------------------------------


def verify_attestation(
    attestation: ExecutionAttestation | dict[str, Any] | str | bytes,
    trust_store: TrustStore,
    *,
    signals: dict[str, Any] | None = None,
    policy: Policy | None = None,
    known_runtimes: Iterable[str] | None = None,
) -> VerificationResult:
    """Verify one attestation offline; signals and the policy enable the content checks."""
    if isinstance(attestation, ExecutionAttestation):
        line = attestation.canonical()
    elif isinstance(attestation, dict):
        try:
            line = canonicalize(attestation)
        except ParmanaError as exc:
            line = repr(exc).encode()
    elif isinstance(attestation, (str, bytes, bytearray, memoryview)):
        line = attestation.encode("utf-8", "surrogatepass") if isinstance(attestation, str) else bytes(attestation)
    else:
        line = repr(attestation).encode()  # not an attestation in any form: reported as MALFORMED
    ctx = Context.build(trust_store, known_runtimes)
    obj, _ = parse_attestation_line(line)
    if policy is not None:
        ctx.policies[policy.key] = PolicyEntry(policy.bundleHash, policy, None)
    elif obj is not None:  # no policy given: that check cannot run, it has not failed
        ctx.policies[(obj["policyId"], obj["policyVersion"])] = PolicyEntry(obj["bundleHash"], None, None)
    signals_line = None
    if signals is not None:
        signals_line = orjson.dumps({"executionId": obj["executionId"] if obj else None, "signals": signals})
    row = check_line(0, line, signals_line, ctx)
    if policy is None:
        row = _mark(row, "policy", NOT_CHECKABLE)
    return _result(row, with_line=False)


def _mark(row: Row, check: str, status: int) -> Row:
    st = bytearray(row[6])
    st[CHECK_INDEX[check]] = status
    return (*row[:6], bytes(st), row[7])


def _result(row: Row, *, with_line: bool = True, override: str | None = None) -> VerificationResult:
    number, eid, pid, pver, action, _, statuses, findings = row
    checks = {name: STATUS_NAMES[s] for name, s in zip(CHECKS, statuses)}
    ordered = sorted(findings, key=lambda f: CODE_RANK[f[0]])
    failed = [f for f in ordered if f[0] != "RUNTIME_UNKNOWN"]
    if failed:
        status, top = "failed", failed[0]
    elif ordered:
        status, top = "warning", ordered[0]
    else:
        status, top = "verified", None
    return VerificationResult(
        executionId=eid,
        line=number if with_line else None,
        status=status,
        code=top[0] if top else "VERIFIED",
        checks=checks,
        expected=top[2] if top else None,
        observed=top[3] if top else None,
        hint=(HINTS if with_line else SINGLE_HINTS)[top[0] if top else "VERIFIED"],
        findings=[Finding(code=c, check=k, expected=e, observed=o) for c, k, e, o in ordered],
        policyId=pid,
        policyVersion=pver,
        action=action,
        override=override,
    )


# -- archives -----------------------------------------------------------------------------


class ArchiveCheck(BaseModel):
    """An archive-level finding (manifest, file hashes, count, Merkle root)."""

    model_config = ConfigDict(defer_build=True)

    code: str
    expected: str
    observed: str
    lines: str | None = None
    hint: str


ARCHIVE_HINTS = {
    "CHECKPOINT_INVALID": "the archive's checkpoint is not a valid checkpoint of the producer's log for exactly these lines",
    "INCLUSION_PROOF_INVALID": "lines of this filtered export are not proven to be in the producer's log: edited, added, "
                               "or their proofs do not match the checkpoint",
    "HISTORY_INCONSISTENT": "an older checkpoint of the log is not a prefix of this archive: a record was removed, reordered "
                            "or changed since that checkpoint was published",
    "TRUST_FROM_ARCHIVE": "the trust store given is the archive's own keys.json: anyone who edits an archive can re-sign it "
                          "and rewrite that file, so it proves nothing about who produced it; use the producer's trust store "
                          "(or pass --trust-archive-keys to accept integrity only, explicitly)",
    "MANIFEST_MALFORMED": "manifest.json is missing or not a valid v1 manifest: nothing in the archive can be tied together",
    "MANIFEST_KEY_UNKNOWN": "the manifest is signed by a key your trust store does not hold",
    "MANIFEST_SIGNATURE_INVALID": "the manifest's signature does not verify: the manifest was edited or forged",
    "FILE_HASH_MISMATCH": "a file differs from what the manifest lists (edited, added or removed)",
    "COUNT_MISMATCH": "attestations.jsonl has another number of lines than the manifest says",
    "MERKLE_ROOT_MISMATCH": "the attestation lines are not the ones exported: lines were deleted, inserted or reordered",
    "OVERRIDES_MALFORMED": "lines of overrides.jsonl are not override records (DSSE envelopes of a request, resolution or "
                           "outcome): the decision trails cannot be read whole",
}


def reason_codes() -> dict[str, str]:
    """Every code a verification can report, each with its hint: attestation codes from the most fundamental
    (the one reported when several fail) down, then the archive-level codes."""
    return {**{code: HINTS[code] for code in ("VERIFIED", *CODE_ORDER)}, **ARCHIVE_HINTS}


class ArchiveSummary(BaseModel):
    model_config = ConfigDict(defer_build=True)

    source: str
    status: Literal["verified", "failed"]
    total: int
    verified: int
    warnings: int
    failed: int
    codes: dict[str, int]
    archive_codes: list[str]
    trust: str
    authorship: str = "authorship not checked"
    overrides: dict[str, int] = {}  # pending_override lines by resolution, when the override check ran


_HASHED_DUPLICATES = 50_000  # up to this many lines duplicates are found with a dict, beyond by sorting (memory)
_NO_FINGERPRINT = bytes(32)  # a line too malformed to have one


class RowTable:
    """Per-attestation results in a few flat buffers (about 90 bytes a row).

    A million-line archive must verify in well under 1 GiB: millions of small
    Python objects would fragment the heap far past that. Lines are numbered
    1..n in order; only lines with findings keep Python tuples.
    """

    def __init__(self) -> None:
        self._ids = bytearray()
        self._id_ends = array("Q")
        self._kinds: list[tuple[str | None, str | None, str | None]] = []
        self._kind_index: dict[tuple, int] = {}
        self._kind_of = array("I")
        self._statuses = bytearray()
        self._fps = bytearray()
        self.findings: dict[int, tuple] = {}  # 0-based row -> findings
        self.override_states: dict[int, str] = {}  # 0-based row -> approved / rejected / expired / pending

    def __len__(self) -> int:
        return len(self._id_ends)

    def add(self, chunk: list[Row]) -> None:
        self.add_packed(pack_rows(chunk))

    def add_packed(self, packed: PackedRows) -> None:
        """Append rows packed by pack_rows (here or in a worker): a few buffer extends, no per-row objects."""
        ids, id_ends, kinds, kind_of, statuses, fps, findings = packed
        base, offset = len(self), len(self._ids)
        ends, local = array("Q"), array("I")
        ends.frombytes(id_ends)
        local.frombytes(kind_of)
        self._ids += ids
        self._id_ends.extend([end + offset for end in ends] if offset else ends)
        remap = [self._kind(key) for key in kinds]
        self._kind_of.extend(local if remap == list(range(len(remap))) else [remap[k] for k in local])
        self._statuses += statuses
        self._fps += fps
        for row, found in findings.items():
            self.findings[base + row] = found

    def _kind(self, key: tuple[str | None, str | None, str | None]) -> int:
        kind = self._kind_index.get(key)
        if kind is None:
            kind = self._kind_index[key] = len(self._kinds)
            self._kinds.append(key)
        return kind

    def finish(self) -> None:
        """Mark every later use of an execution_fingerprint as DUPLICATE_FINGERPRINT (sorting, not hashing)."""
        n = len(self)
        if n < 2:
            return
        if n <= _HASHED_DUPLICATES:  # a dict is quicker here, and spares a small verify the numpy import
            seen: dict[bytes, int] = {}
            fps = bytes(self._fps)
            for row in range(n):
                fp = fps[row * 32:row * 32 + 32]
                if fp != _NO_FINGERPRINT and seen.setdefault(fp, row) != row:
                    self._mark_duplicate(row, seen[fp])
            return
        import numpy as np

        fps = np.frombuffer(bytes(self._fps), dtype=">u8").reshape(n, 4)
        order = np.lexsort((fps[:, 3], fps[:, 2], fps[:, 1], fps[:, 0]))  # stable: equal keys keep line order
        ordered = fps[order]
        same = np.all(ordered[1:] == ordered[:-1], axis=1) & np.any(ordered[1:] != 0, axis=1)
        first = None
        for k in range(1, n):
            if same[k - 1]:
                first = order[k - 1] if first is None else first
                self._mark_duplicate(int(order[k]), int(first))
            else:
                first = None

    def _mark_duplicate(self, row: int, first: int) -> None:
        self._statuses[row * len(CHECKS) + CHECK_INDEX["duplicate"]] = FAILED
        finding = ("DUPLICATE_FINGERPRINT", "duplicate", f"first use at line {first + 1}", f"used again at line {row + 1}")
        self.findings[row] = (*self.findings.get(row, ()), finding)

    def row(self, i: int) -> Row:
        start = self._id_ends[i - 1] if i else 0
        eid = self._ids[start:self._id_ends[i]].decode("utf-8", "surrogatepass") or None
        pid, pver, action = self._kinds[self._kind_of[i]]
        width = len(CHECKS)
        return (i + 1, eid, pid, pver, action, None, bytes(self._statuses[i * width:(i + 1) * width]), self.findings.get(i, ()))

    def __iter__(self) -> Iterator[Row]:
        return (self.row(i) for i in range(len(self)))

    def primary_codes(self) -> list[str]:
        codes = ["VERIFIED"] * len(self)
        for i, findings in self.findings.items():
            codes[i] = min((f[0] for f in findings), key=CODE_RANK.__getitem__)
        return codes

    def frame(self) -> dict[str, Any]:
        import numpy as np

        n, width = len(self), len(CHECKS)
        ends = np.frombuffer(self._id_ends, dtype=np.uint64) if n else np.zeros(0, np.uint64)
        starts = np.concatenate((np.zeros(1, np.uint64), ends[:-1])) if n else ends
        ids = bytes(self._ids)
        kinds = np.frombuffer(self._kind_of, dtype=np.uint32) if n else np.zeros(0, np.uint32)
        statuses = np.frombuffer(bytes(self._statuses), dtype=np.uint8).reshape(n, width)
        names = np.array(STATUS_NAMES, dtype=object)
        data: dict[str, Any] = {
            "line": np.arange(1, n + 1),
            "executionId": [ids[a:b].decode("utf-8", "surrogatepass") or None for a, b in zip(starts.tolist(), ends.tolist())],
        }
        for j, column in enumerate(("policyId", "policyVersion", "action")):
            values = np.array([k[j] for k in self._kinds] or [None], dtype=object)
            data[column] = values[kinds] if n else []
        for j, name in enumerate(CHECKS):
            data[name] = names[statuses[:, j]]
        return data




class ArchiveReport(BaseModel):
    """The result of verifying one archive: archive-level checks plus one result per attestation."""

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)
    source: str
    trust: str
    archive_checks: list[ArchiveCheck]
    table: RowTable = Field(repr=False, exclude=True)
    authorship: str = "authorship not checked"

    def __repr__(self) -> str:
        s = self.summary
        return f"ArchiveReport({s.source!r}: {s.status}, {s.verified}/{s.total} verified, {s.failed} failed)"

    __str__ = __repr__

    @property
    def status(self) -> Literal["verified", "failed"]:
        return self.summary.status

    @property
    def summary(self) -> ArchiveSummary:
        total = len(self.table)
        codes = Counter(min((f[0] for f in fs), key=CODE_RANK.__getitem__) for fs in self.table.findings.values())
        if total - len(self.table.findings):
            codes["VERIFIED"] = total - len(self.table.findings)
        failed = sum(n for c, n in codes.items() if c not in ("VERIFIED", "RUNTIME_UNKNOWN"))
        archive_codes = sorted({c.code for c in self.archive_checks})
        return ArchiveSummary(
            source=self.source,
            status="failed" if failed or archive_codes else "verified",
            total=total,
            verified=codes.get("VERIFIED", 0),
            warnings=codes.get("RUNTIME_UNKNOWN", 0),
            failed=failed,
            codes=dict(sorted(codes.items(), key=lambda kv: CODE_RANK.get(kv[0], -1))),
            archive_codes=archive_codes,
            trust=self.trust,
            authorship=self.authorship,
            overrides=dict(sorted(Counter(self.table.override_states.values()).items())),
        )

    def _verdict(self, i: int) -> VerificationResult:
        return _result(self.table.row(i), override=self.table.override_states.get(i))

    def results(self) -> Iterator[VerificationResult]:
        for i in range(len(self.table)):
            yield self._verdict(i)

    def result(self, line: int) -> VerificationResult:
        """The verdict on one attestation line (numbered from 1)."""
        if not 1 <= line <= len(self.table):
            raise IndexError(f"line {line} is not in this archive (1..{len(self.table)})")
        return self._verdict(line - 1)

    def failures(self) -> list[VerificationResult]:
        table = self.table
        return [self._verdict(i) for i in sorted(table.findings) if any(f[0] != "RUNTIME_UNKNOWN" for f in table.findings[i])]

    def to_pandas(self) -> pd.DataFrame:
        """One row per attestation: ids, policy, decided action, every check, the reason code and hint."""
        import pandas as pd

        data = self.table.frame()
        codes = self.table.primary_codes()
        data["status"] = ["verified" if c == "VERIFIED" else "warning" if c == "RUNTIME_UNKNOWN" else "failed" for c in codes]
        data["code"] = codes
        data["hint"] = [HINTS[c] for c in codes]
        data["override_state"] = [self.table.override_states.get(i) for i in range(len(self.table))]  # beside the check
        return pd.DataFrame(data)

    def to_markdown(self) -> str:
        from .reports import archive_markdown

        return archive_markdown(self)

    def to_html(self) -> str:
        from .reports import archive_html

        return archive_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()


def verify_archive(
    path: str | Path,
    trust_store: TrustStore | str | Path | None,
    *,
    workers: int = 1,
    progress: Progress = True,
    known_runtimes: Iterable[str] | None = None,
    trust_archive_keys: bool = False,
    chunk_lines: int = 2_048,
    checkpoint: str | bytes | Path | None = None,
    authority: Any = None,
    client: Any = None,
    scratch: str | Path | None = None,
) -> ArchiveReport:
    """Verify an archive (directory, .zip or .tar.gz) offline against a trust store.

    ``client``: a Dask distributed Client; its workers read the archive (a path they see; a .zip / .tar.gz is
    unpacked onto ``scratch``, shared storage) and the report is the one this machine would give (cluster.py).

    ``checkpoint``: an older checkpoint of the producer's log; the archive must
    extend it (its first ``size`` lines hash to its root), else HISTORY_INCONSISTENT.
    ``authority``: an authority file (or Authority): each attestation's policy must be
    a bundle signed by an author it allowed, as of the decision (the ``authorship`` check).

    ``progress``: True for a tqdm bar (terminal or notebook), False for silence,
    or a callable ``(done, total)`` for a display of your own (``total`` is the
    manifest's count, None when the manifest is unusable).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if client is not None:
        from .cluster import verify_on_cluster

        ((_, result),) = verify_on_cluster(client, [path], trust_store, scratch=scratch, progress=progress,
                                           known_runtimes=known_runtimes, trust_archive_keys=trust_archive_keys,
                                           checkpoint=checkpoint, authority=authority, block_lines=chunk_lines)
        if isinstance(result, ParmanaError):
            raise result
        return result
    with open_archive(path) as root:
        return verify_tree(Path(path), root, trust_store, workers=workers, progress=progress, known_runtimes=known_runtimes,
                           trust_archive_keys=trust_archive_keys, chunk_lines=chunk_lines, checkpoint=checkpoint,
                           authority=authority)


def load_trust(trust_store: TrustStore | str | Path | None) -> TrustStore:
    if isinstance(trust_store, TrustStore):
        return trust_store
    if trust_store is None:
        return TrustStore()
    return TrustStore.load(trust_store)


OWN_KEYS_TRUST = "the archive's own keys.json given as the trust store (proves the archive is intact, not who produced it)"


def _is_archive_keys(trust_path: Path, source: Path, root: Path) -> bool:
    """A trust store file that is the archive's keys.json: inside the archive, or a byte-identical copy."""
    try:
        resolved = trust_path.resolve()
        if any(resolved.is_relative_to(p.resolve()) for p in (source, root) if p.is_dir()):
            return True
        return (root / KEYS).is_file() and trust_path.read_bytes() == (root / KEYS).read_bytes()
    except OSError:
        return False


def _trust(source: Path, root: Path, trust_store: TrustStore | str | Path | None, trust_archive_keys: bool) -> tuple[TrustStore, str, bool]:
    """(keys to trust, how the report names them, whether the given store is the archive's own keys)."""
    own = isinstance(trust_store, (str, Path)) and _is_archive_keys(Path(trust_store), source, root)
    store = load_trust(trust_store)
    trust = OWN_KEYS_TRUST if own else "verifier trust store"
    if trust_archive_keys:
        try:
            archive_keys = TrustStore.from_json((root / KEYS).read_bytes(), source=f"{source}/{KEYS}")
        except (OSError, KeyStoreError) as exc:
            raise ArchiveError("ARC-005", f"--trust-archive-keys given but the archive's {KEYS} is unusable: {exc}") from None
        store = store.merged(archive_keys.keys)
        trust = ("the archive's own keys.json" if own or not trust_store else trust + " + the archive's own keys.json") + \
            " (explicitly trusted: proves integrity, not authorship)"
    if not store.keys:
        raise KeyStoreError("KEY-004", "verify", "the trust store holds no keys, so no signature could be checked; pass the "
                            "producer's trust store (what `parmana-lab keys --json` prints on its side)")
    return store, trust, own and not trust_archive_keys


def verify_tree(source: Path, root: Path, trust_store: TrustStore | str | Path | None, *, workers: int = 1,
                progress: Progress = False, known_runtimes: Iterable[str] | None = None, trust_archive_keys: bool = False,
                chunk_lines: int = 2_048, checkpoint: str | bytes | Path | None = None, authority: Any = None) -> ArchiveReport:
    """verify_archive on an archive already opened at ``root`` (``source`` is the path as given)."""
    start = begin_tree(source, root, trust_store, known_runtimes, trust_archive_keys)
    signals_path = root / SIGNALS
    att_digest = hashlib.sha256()
    merkle = MerkleBuilder()

    def blocks() -> Iterator[tuple[int, list[bytes], list[bytes | None] | None]]:
        """(first line number, attestation lines, their paired signals lines or None) per block read."""
        signals = SignalsAligner(chain.from_iterable(iter_line_blocks(signals_path))) if start.ctx.signals_available else None
        number = 0
        for lines in iter_line_blocks(root / ATTESTATIONS, digest=att_digest):
            yield number + 1, lines, list(map(signals.for_line, lines)) if signals is not None else None
            number += len(lines)

    total = start.manifest.count if start.manifest is not None else None
    table = _run_checks(blocks(), start.ctx, merkle, workers, chunk_lines, progress, total, str(source))
    return finish_tree(start, table, merkle.root(), att_digest.hexdigest(), checkpoint=checkpoint, authority=authority)


@dataclass(frozen=True)
class TreeStart:
    """What verifying an archive tree establishes before its lines are read: trust, the manifest, the context
    (handed between the verifier's own steps, never validated input: a dataclass, not a model)."""

    source: Path
    root: Path
    store: TrustStore
    trust: str
    checks: list[ArchiveCheck]
    manifest: ArchiveManifest | None
    ctx: Context


def begin_tree(source: Path, root: Path, trust_store: TrustStore | str | Path | None, known_runtimes: Iterable[str] | None,
               trust_archive_keys: bool) -> TreeStart:
    require_attestations(root, source)
    store, trust, own_keys = _trust(source, root, trust_store, trust_archive_keys)
    checks: list[ArchiveCheck] = []
    if own_keys:
        checks.append(_archive_check("TRUST_FROM_ARCHIVE", "a trust store from the producer, obtained apart from the archive",
                                     f"{trust_store} is the archive's own {KEYS}"))
    manifest = _check_manifest(root, store, checks)
    ctx = Context.build(store, known_runtimes, policies=load_archive_policies(root), signals_available=(root / SIGNALS).is_file())
    return TreeStart(source=source, root=root, store=store, trust=trust, checks=checks, manifest=manifest, ctx=ctx)


def finish_tree(start: TreeStart, table: RowTable, merkle_root: str, attestations_hash: str, *,
                checkpoint: str | bytes | Path | None = None, authority: Any = None,
                file_hashes: dict[str, str] | None = None) -> ArchiveReport:
    """The archive-level checks once every line was checked (``file_hashes``: already computed where the files are)."""
    root, store, checks, manifest = start.root, start.store, start.checks, start.manifest
    if manifest is not None:
        _check_files(root, manifest, attestations_hash, checks, file_hashes)
        if manifest.count != len(table):
            checks.append(_archive_check("COUNT_MISMATCH", str(manifest.count), str(len(table)),
                                         lines="lines were removed or added; which ones is told by the Merkle root only"))
        if manifest.merkleRoot != merkle_root:
            checks.append(_archive_check("MERKLE_ROOT_MISMATCH", manifest.merkleRoot, merkle_root,
                                         lines="unknown: the manifest holds only the root, not per-line hashes"))
        if (root / CHECKPOINT).is_file() and not any(c.code.startswith("MANIFEST_") for c in checks):
            if (root / LOG_PROOFS).is_file():
                _check_line_proofs(root, store, checks)
            else:
                _check_archive_checkpoint(root, store, manifest.count, manifest.merkleRoot, checks)
    if checkpoint is not None:
        _check_history(root, store, checkpoint, len(table), checks)
    authorship = "authorship not checked"
    if authority is not None:
        authority = authority if isinstance(authority, Authority) else Authority.load(authority)
        authorship = _check_authorship(root, table, authority, store)
        unreadable, _ = check_overrides(root, table, authority, store)
        if unreadable:
            checks.append(_archive_check("OVERRIDES_MALFORMED", "one override record per line", f"{len(unreadable)} line(s) "
                                         "are not", lines=", ".join(map(str, unreadable[:20])) + (" …" if len(unreadable) > 20
                                                                                                    else "")))
    return ArchiveReport(source=str(start.source), trust=start.trust, archive_checks=checks, table=table, authorship=authorship)


_AUTHORSHIP_CODES = {"POL-030": "POLICY_UNSIGNED", "POL-032": "POLICY_SIGNATURE_INVALID", "POL-033": "POLICY_AUTHOR_UNAUTHORIZED",
                     "POL-036": "POLICY_AUTHOR_UNAUTHORIZED"}


def _check_authorship(root: Path, table: RowTable, authority: Authority, store: TrustStore) -> str:
    """Set each line's authorship check: its archived policy is a bundle signed by an author the verifier's
    authority file allowed, as of the decision (a key revoked later leaves earlier decisions standing)."""
    from .bundles import verify_bundle

    runtime_keys = frozenset(k.keyId for k in store.keys)
    static: dict[tuple[str, str], tuple] = {}  # per policy: (code, reason) or (None, manifest issuedAt, expiresAt, signers)
    width, at = len(CHECKS), CHECK_INDEX["authorship"]
    for row, line in enumerate(chain.from_iterable(iter_line_blocks(root / ATTESTATIONS))):
        obj, _ = parse_attestation_line(line)
        if obj is None:
            continue  # MALFORMED: nothing to attribute
        key = (obj["policyId"], obj["policyVersion"])
        if key not in static:
            folder = root / "policies" / key[0] / key[1]
            verdict = verify_bundle(folder, authority, runtime_keys=runtime_keys, now="0000-01-01T00:00:00.000Z")
            if verdict.status != "verified":
                code = _AUTHORSHIP_CODES.get(verdict.code)
                if verdict.code == "POL-031":
                    code = "POLICY_SIGNATURE_INVALID" if "does not verify" in verdict.reason else "POLICY_AUTHOR_UNAUTHORIZED"
                static[key] = (code or "POLICY_UNSIGNED", verdict.reason)
            else:
                manifest = parse_json((folder / "bundle.manifest.json").read_bytes())
                static[key] = (None, manifest["issuedAt"], manifest["expiresAt"],
                               [authority.author(k) for k in verdict.signerKeyIds])
        found = static[key]
        issued = obj["issuedAt"]
        if found[0] is not None:
            problem = found
        elif found[1] > issued:
            problem = ("POLICY_AUTHOR_UNAUTHORIZED", f"the bundle was signed at {found[1]}, after this decision")
        elif found[2] is not None and issued >= found[2]:
            problem = ("POLICY_AUTHOR_UNAUTHORIZED", f"the bundle had expired at {found[2]} when this decision was made")
        elif not any(a.revokedAt is None or issued < a.revokedAt for a in found[3]):
            problem = ("POLICY_AUTHOR_UNAUTHORIZED", "every signing author key was revoked before this decision")
        else:
            problem = None
        if problem is None:
            table._statuses[row * width + at] = VERIFIED
        else:
            table._statuses[row * width + at] = FAILED
            finding = (problem[0], "authorship", "a policy bundle signed by an authorized author", problem[1])
            table.findings[row] = (*table.findings.get(row, ()), finding)
    return f"authorship checked against the verifier's authority file ({len(authority.authors)} author keys)"


def _check_archive_checkpoint(root: Path, store: TrustStore, count: int, merkle_root: str, checks: list[ArchiveCheck]) -> None:
    """The archive's own checkpoint: signed by a trusted key of the log, of the manifest's count and root
    (the lines are held to the manifest by COUNT_MISMATCH / MERKLE_ROOT_MISMATCH; checked once the manifest verified)."""
    from .logverify import verify_checkpoint

    verdict = verify_checkpoint(root / CHECKPOINT, store)
    if not verdict.valid:
        checks.append(_archive_check("CHECKPOINT_INVALID", "a checkpoint signed by the log", f"{verdict.code}: {verdict.reason}"))
    elif (verdict.size, verdict.root) != (count, merkle_root):
        checks.append(_archive_check("CHECKPOINT_INVALID", f"size {count}, root {merkle_root}",
                                     f"size {verdict.size}, root {verdict.root}"))


def _check_line_proofs(root: Path, store: TrustStore, checks: list[ArchiveCheck]) -> None:
    """A filtered export: every line is proven to be a leaf of the producer's log at its checkpoint."""
    from .logverify import verify_checkpoint
    from .notes import b64decode, parse_checkpoint
    from .proofs import ProofError
    from .proofs import verify_inclusion as inclusion

    verdict = verify_checkpoint(root / CHECKPOINT, store)
    if not verdict.valid:
        checks.append(_archive_check("CHECKPOINT_INVALID", "a checkpoint signed by the log", f"{verdict.code}: {verdict.reason}"))
        return
    cp = parse_checkpoint((root / CHECKPOINT).read_bytes())
    bad: list[int] = []
    proofs = chain.from_iterable(iter_line_blocks(root / LOG_PROOFS))
    number = 0
    for number, line in enumerate(chain.from_iterable(iter_line_blocks(root / ATTESTATIONS)), start=1):
        entry = next(proofs, None)
        try:
            item = parse_json(entry) if entry is not None else None
            hashes = [b64decode(h) for h in item["proof"]]
            inclusion(item["index"], cp.size, leaf_hash(line), hashes, cp.root)
        except (ProofError, CanonicalizationError, ValueError, TypeError, KeyError):
            bad.append(number)
    extra = sum(1 for _ in proofs)
    if bad or extra:
        shown = ", ".join(map(str, bad[:20])) + (" …" if len(bad) > 20 else "")
        checks.append(_archive_check("INCLUSION_PROOF_INVALID", f"every line a leaf of the log at size {cp.size}",
                                     f"{len(bad)} line(s) not proven" + (f", {extra} proof line(s) too many" if extra else ""),
                                     lines=shown or None))


def _check_history(root: Path, store: TrustStore, old: str | bytes | Path, count: int, checks: list[ArchiveCheck]) -> None:
    """An older published checkpoint must be a prefix of this archive: its first ``size`` lines hash to its root."""
    from .logverify import verify_checkpoint

    verdict = verify_checkpoint(old, store)
    if not verdict.valid:
        checks.append(_archive_check("HISTORY_INCONSISTENT", "an older checkpoint signed by the log",
                                     f"{verdict.code}: {verdict.reason}"))
        return
    if verdict.size > count:
        checks.append(_archive_check("HISTORY_INCONSISTENT", f"at least {verdict.size} lines (the older checkpoint's size)",
                                     f"{count} lines", lines=f"{count + 1}-{verdict.size} are missing"))
        return
    prefix = MerkleBuilder()
    for lines in iter_line_blocks(root / ATTESTATIONS):
        take = lines[:verdict.size - prefix.count]
        prefix.add_many(take)
        if prefix.count >= verdict.size:
            break
    if prefix.root() != verdict.root:
        checks.append(_archive_check("HISTORY_INCONSISTENT", f"lines 1-{verdict.size} hashing to {verdict.root}",
                                     prefix.root(), lines=f"somewhere in 1-{verdict.size}"))


def _archive_check(code: str, expected: str, observed: str, lines: str | None = None) -> ArchiveCheck:
    return ArchiveCheck(code=code, expected=expected, observed=observed, lines=lines, hint=ARCHIVE_HINTS[code])


def _check_manifest(root: Path, store: TrustStore, checks: list[ArchiveCheck]) -> ArchiveManifest | None:
    try:
        raw = parse_json((root / MANIFEST).read_bytes())
        manifest = ArchiveManifest.model_validate(raw)
    except FileNotFoundError:
        checks.append(_archive_check("MANIFEST_MALFORMED", MANIFEST, "absent"))
        return None
    except (CanonicalizationError, ValueError, OSError) as exc:
        checks.append(_archive_check("MANIFEST_MALFORMED", "a valid v1 manifest", str(exc).splitlines()[0]))
        return None
    trusted = next((k for k in store.keys if k.keyId == manifest.signerKeyId), None)
    if trusted is None:
        checks.append(_archive_check("MANIFEST_KEY_UNKNOWN", "a key in the trust store", f"signerKeyId {manifest.signerKeyId}"))
        return manifest
    sig = decode_signature(manifest.signature)
    try:
        if sig is None:
            raise nacl.exceptions.BadSignatureError
        nacl.bindings.crypto_sign_open(sig + manifest_message(raw), trusted.raw_public_key)
    except nacl.exceptions.BadSignatureError:
        checks.append(_archive_check("MANIFEST_SIGNATURE_INVALID", f"a signature by {manifest.signerKeyId}", "does not verify"))
    return manifest


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of an archive tree but the manifest and the attestations (hashed as they are read)."""
    return {p.relative_to(root).as_posix(): _file_sha256(p) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, ATTESTATIONS)}


def _check_files(root: Path, manifest: ArchiveManifest, attestations_hash: str, checks: list[ArchiveCheck],
                 hashes: dict[str, str] | None = None) -> None:
    hashes = tree_hashes(root) if hashes is None else hashes
    present = set(hashes) | {ATTESTATIONS}
    for name in sorted(present | manifest.files.keys()):
        expected = manifest.files.get(name)
        if name not in present:
            checks.append(_archive_check("FILE_HASH_MISMATCH", f"{name} {expected}", "file absent"))
            continue
        observed = attestations_hash if name == ATTESTATIONS else hashes[name]
        if expected is None:
            checks.append(_archive_check("FILE_HASH_MISMATCH", f"{name} not in the archive", "file present, not in the manifest"))
        elif expected != observed:
            checks.append(_archive_check("FILE_HASH_MISMATCH", f"{name} {expected}", observed))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


# -- running the checks, in-process or in workers ------------------------------------------

def _run_checks(blocks, ctx: Context, merkle: MerkleBuilder, workers: int, chunk_lines: int,
                progress: Progress, total: int | None, label: str) -> RowTable:
    # workers start before the progress bar, whose monitor thread would rule out forking
    pool = None
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor  # imported by the runs that use it (a quick verify does not)

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    bar = progress_bar(progress, total, f"verify {label}", "att")
    collector = RowTable()
    try:
        with cyclic_gc_paused():
            if pool is None:
                for start, lines, sigs in blocks:
                    merkle.add_many(lines)
                    collector.add(check_lines(start, lines, sigs or repeat(None), ctx))
                    bar.update(len(lines))
            else:
                blob = pickle.dumps(ctx)
                # a bounded window of chunks in flight keeps memory flat on huge archives
                window, futures = workers * 4, []

                def collect(future) -> None:
                    rows, subtrees, n = future.result()
                    merkle.add_subtrees(subtrees)  # in line order: chunks are collected in submission order
                    collector.add_packed(rows)
                    bar.update(n)

                for chunk in _aligned_chunks(blocks, chunk_lines):
                    with _main_module_hidden():  # submit is where the pool starts its workers
                        futures.append(pool.submit(check_chunk, blob, chunk))
                    if len(futures) >= window:
                        collect(futures.pop(0))
                for future in futures:
                    collect(future)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    collector.finish()
    return collector


def _aligned_chunks(blocks, chunk_lines: int) -> Iterator[tuple]:
    """Packed runs of 2**k lines (the last may be shorter), each starting at a multiple of 2**k.

    Aligned runs are whole subtrees of the archive's Merkle tree, so workers
    hash them and the parent only joins a few subtree roots per run.
    """
    size = 1 << max(chunk_lines, 1).bit_length() - 1
    pending: list[bytes] = []
    pending_sigs: list[bytes | None] | None = None
    first = 1
    for start, lines, sigs in blocks:
        if not pending:
            first = start
        pending += lines
        if sigs is not None:
            pending_sigs = (pending_sigs or []) + sigs
        while len(pending) >= size:
            yield _pack_chunk(first, pending[:size], pending_sigs[:size] if pending_sigs is not None else None)
            pending, first = pending[size:], first + size
            if pending_sigs is not None:
                pending_sigs = pending_sigs[size:]
    if pending:
        yield _pack_chunk(first, pending, pending_sigs)


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Workers started by a fork server (or spawn) first re-run the parent's main script, and a script
    without an ``if __name__ == "__main__":`` guard would then do all it does again in every worker
    (execute requests, write files). Workers need nothing from __main__, so it is hidden while they start."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _pack_chunk(start: int, lines: list[bytes], sigs: list[bytes | None] | None) -> tuple:
    """Lines travel to workers joined into one bytes object: far cheaper to pickle than a list."""
    if sigs is not None and None not in sigs:
        sigs = b"\n".join(sigs)
    return start, b"\n".join(lines), sigs


def _pool_context() -> multiprocessing.context.BaseContext:
    """How to start workers. Forking is fastest, but forking a process that runs
    other threads (DuckDB's, a progress monitor's) can deadlock the child, so a
    process with more than one thread gets workers from a fork server that has
    imported only the light checks module instead."""
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "fork" in methods and _single_threaded():
        return mp.get_context("fork")
    if "forkserver" in methods:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["parmana_lab.checks"])
        return context
    return mp.get_context("spawn")


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1  # native threads too, not only Python's
    except OSError:
        return False
