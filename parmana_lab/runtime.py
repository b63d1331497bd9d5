"""The local runtime: validate, load policy, evaluate, reserve, sign, record.

Each stage fails closed. An attestation is handed back only after the
transaction that records it has committed, so nothing a caller holds can be
missing from the audit DB. ``execute`` is ``execute_many`` of one: both use
exactly two transactions per batch (reserve, then record-and-confirm).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb

from . import audit, resolve
from ._gc import cyclic_gc_paused
from .archive import CHECKPOINT, LOG_PROOFS, ExportResult, export_archive
from .attestation import ExecutionAttestation, seal
from .audit import AuditDB, first_line, storage_hint
from .authority import AUTHORITY_FILE, Authority
from .bundles import BundleVerdict, verify_bundle
from .canonical import canonical_hash, canonicalize, fingerprint_payload, sha256_hex
from .dsse import seal_payload
from .errors import AuditStoreError, ParmanaError, PolicyError, ReplayError, RequestError
from .evaluate import Decision, decide
from .keys import Keyring, TrustStore
from .overrides import REQUEST_TYPE, OverrideStatus, OverrideTrail, request_payload
from .policy import DEFAULT_PENDING_TTL, Policy, PolicyStore
from .provenance import RuntimeInfo, evaluator_artifact_hash, runtime_hash, runtime_manifest
from .timestamps import Clock, format_ts, system_clock
from .translog import LogError, TransparencyLog
from .validation import check_request, new_execution_id, validate_signals
from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir

Result = ExecutionAttestation | ParmanaError
DEFAULT_CHUNK = 10_000


@dataclass(slots=True)
class _Pending:
    """One execution that passed every pure stage and awaits reservation."""

    index: int
    execution_id: str
    policy: Policy
    decision: Decision
    fingerprint: str
    signals_jcs: bytes
    signals: dict[str, Any]
    requested_by: str | None


class Runtime:
    """A workspace's runtime: its policies, signing key and audit database.

    Use as a context manager (or call ``close()``) to release the DuckDB file.
    ``clock`` and ``new_id`` are injectable so tests can move time and fix ids.
    ``wait`` is how long to wait for another process that holds the audit DB
    (a notebook kernel, another command) before refusing with AUD-001.
    ``authority`` (default: the workspace's ``keys/authority.json`` if present)
    makes the runtime refuse any policy version no authorized author signed.
    """

    def __init__(
        self,
        workspace: str | Path = DEFAULT_WORKSPACE,
        *,
        policies: str | Path | PolicyStore | None = None,
        clock: Clock = system_clock,
        reservation_ttl: float = 300.0,
        failed_ttl: float = 30.0,
        new_id=new_execution_id,
        wait: float = 0.0,
        authority: str | Path | Authority | None = None,
    ) -> None:
        self.workspace = Workspace(workspace)
        self.policies = policies if isinstance(policies, PolicyStore) else PolicyStore(policies or default_policy_dir())
        default_authority = self.workspace.keys_dir / AUTHORITY_FILE
        if authority is None and default_authority.is_file():
            authority = default_authority
        self.authority = authority if isinstance(authority, Authority) or authority is None else Authority.load(authority)
        self._bundles: dict[tuple[str, str], BundleVerdict] = {}
        self._rule_jcs: dict[str, bytes] = {}  # bundleHash -> JCS of the policy's effective override rule
        self.keyring = Keyring(self.workspace.keys_dir, clock=clock)
        self._clock = clock
        self._new_id = new_id
        self._last_ms, self._last_text = None, ""
        self.reservation_ttl = reservation_ttl
        self.failed_ttl = failed_ttl
        self.manifest = runtime_manifest()
        self.runtime_hash = runtime_hash(self.manifest)
        self.evaluator_artifact_hash = evaluator_artifact_hash()
        self.db = AuditDB(self.workspace.audit_path, wait=wait)
        try:
            self._key = self.keyring.signing_key(create=True)
        except BaseException:
            self.db.close()
            raise
        self.log = TransparencyLog(self.db, lambda: self._key, lambda: self.trust_store().keys[0].keyId, clock)

    def __repr__(self) -> str:
        return f"Runtime(workspace={str(self.workspace.root)!r}, signerKeyId={self._key.key_id!r})"

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- public API ------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The runtime's clock (what a vote signed beside it should be stamped with, e.g. in the override panel)."""
        return self._clock

    @property
    def signer_key_id(self) -> str:
        return self._key.key_id

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(manifest=self.manifest, runtimeHash=self.runtime_hash, evaluatorArtifactHash=self.evaluator_artifact_hash)

    def trust_store(self) -> TrustStore:
        return self.keyring.trust_store()

    def rotate_key(self) -> str:
        """Switch to a fresh signing key; returns its keyId."""
        self._key = self.keyring.rotate()
        return self._key.key_id

    def export_archive(self, out: str | Path, **options: Any) -> ExportResult:
        """Write this workspace's attestations as a signed archive (see archive.export_archive for options).

        A full export of the log carries ``checkpoint``, signed now, whose size and root are the archive's
        count and merkleRoot; it is refused (LOG-002) if the records no longer hash to the log.
        """
        resolve.open_missing(self)  # every pending execution in an export has its request
        resolve.expire_due(self)
        return export_archive(self.db, out, key=self._key, trust_store=self.trust_store(), clock=self._clock,
                              extras=self._archive_extras, **options)

    def _archive_extras(self, count: int, root: str, indices: list[int | None]) -> dict[str, bytes]:
        """The exporter's authority file (information only), and what an export carries of the log."""
        extras = {AUTHORITY_FILE: self.authority.to_json().encode("utf-8")} if self.authority is not None else {}
        return {**extras, **self._log_files(count, root, indices)}

    def _log_files(self, count: int, root: str, indices: list[int | None]) -> dict[str, bytes]:
        """A full export carries the log's checkpoint; a filtered one the checkpoint of the whole log and each
        line's inclusion proof in it; one holding imported records, nothing (it is not this log)."""
        if None in indices:
            return {}
        checkpoint = self.log.checkpoint()
        if count == checkpoint.size and indices == list(range(count)):
            if checkpoint.root.hex() != root:
                raise LogError("LOG-002", f"the exported records do not hash to this runtime's log at size {count} (root "
                                          f"{checkpoint.root.hex()[:16]}…, records {root[:16]}…): a record was edited behind "
                                          "the runtime's back; nothing was exported")
            return {CHECKPOINT: checkpoint.render().encode("utf-8")}
        proofs = self.log.inclusion_proofs(indices, checkpoint)
        lines = b"".join(canonicalize({"index": i, "proof": [base64.b64encode(h).decode("ascii") for h in hashes]}) + b"\n"
                         for i, hashes in zip(indices, proofs))
        return {CHECKPOINT: checkpoint.render().encode("utf-8"), LOG_PROOFS: lines}

    # -- overrides (resolve.py) ----------------------------------------------------------------

    def pending_overrides(self, *, include_resolved: bool = False) -> list[OverrideStatus]:
        """This runtime's pending_override executions awaiting votes (with ``include_resolved``, all of them)."""
        return resolve.pending(self, include_resolved=include_resolved)

    def override_request(self, execution_id: str) -> dict[str, Any]:
        """The OverrideRequest envelope to hand to approvers (they sign it offline: overrides.sign_resolution)."""
        return resolve.request_for(self, execution_id)

    def submit_resolution(self, envelope: Any) -> OverrideStatus:
        """Record an approver's signed vote (raises OverrideError with its code); signs the outcome when it decides."""
        return resolve.submit(self, envelope)

    def override_status(self, execution_id: str) -> OverrideStatus | None:
        """Where one execution stands (votes so far, what is needed); None if it is no pending execution here."""
        return resolve.status_of(self, execution_id)

    def override_trail(self, execution_id: str) -> OverrideTrail:
        """Every request, vote and outcome of one execution, in the order recorded."""
        return resolve.trail(self, execution_id)

    def reopen_override(self, execution_id: str) -> dict[str, Any]:
        """A fresh request for an expired one; returns its envelope (earlier votes do not count for it)."""
        return resolve.reopen(self, execution_id)

    def execute(self, request: Any) -> ExecutionAttestation:
        """Run one request; returns its committed attestation or raises a ParmanaError."""
        (result,) = self.execute_many([request])
        if isinstance(result, ParmanaError):
            raise result
        return result

    def execute_many(self, requests: Iterable[Any], *, chunk_size: int = DEFAULT_CHUNK) -> list[Result]:
        """Run requests in order; each result is an attestation or the refusal for that request."""
        return list(self.iter_execute(requests, chunk_size=chunk_size))

    def iter_execute(self, requests: Iterable[Any], *, chunk_size: int = DEFAULT_CHUNK) -> Iterator[Result]:
        """Like execute_many, yielding each chunk's results once that chunk has committed."""
        if isinstance(requests, (dict, str, bytes, bytearray)) or not isinstance(requests, Iterable):
            # one request would otherwise run as a sequence of its keys or characters
            raise RequestError("VAL-001", "validate", f"execute_many takes a list of requests, not {type(requests).__name__}; "
                               "for one request use execute")
        chunk: list[Any] = []
        for request in requests:
            chunk.append(request)
            if len(chunk) >= chunk_size:
                yield from self._run_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk)

    # -- the flow ----------------------------------------------------------------------------

    @property
    def authorship(self) -> str:
        """Whether policy authorship is enforced, in words (shown by the CLI and the demo)."""
        if self.authority is None:
            return "authorship not checked: no authority file, so unsigned policies load"
        return f"authorship checked: {len(self.authority.authors)} author key(s) in the authority file"

    def _bundle(self, policy: Policy) -> BundleVerdict:
        """The bundle verdict of a policy version, checked once per batch (revocations take effect at the next one)."""
        found = self._bundles.get(policy.key)
        if found is None:
            folder = Path(policy.source).parent if policy.source else Path(".")
            runtime_keys = frozenset(k.keyId for k in self.trust_store().keys)
            found = self._bundles[policy.key] = verify_bundle(folder, self.authority, runtime_keys=runtime_keys,
                                                              now=format_ts(self._clock()))
        if found.status != "verified":
            raise PolicyError(found.code, "policy", found.reason)
        return found

    def _prepare(self, index: int, raw: Any) -> _Pending:
        pid, pver, signals, execution_id, signals_jcs, requested_by = check_request(raw, new_id=self._new_id)
        policy = self.policies.get(pid, pver)
        if self.authority is not None:
            self._bundle(policy)  # before any reservation or signature
        validate_signals(signals, policy)
        decision = decide(policy, signals)
        fingerprint = sha256_hex(fingerprint_payload(pid, pver, signals_jcs))
        return _Pending(index, execution_id, policy, decision, fingerprint, signals_jcs, signals, requested_by)

    def _run_chunk(self, raws: list[Any]) -> list[Result]:
        with cyclic_gc_paused():
            return self._run_chunk_unpaused(raws)

    def _run_chunk_unpaused(self, raws: list[Any]) -> list[Result]:
        now = self._clock()
        self._bundles = {}
        results: list[Result | None] = [None] * len(raws)
        refusals: list[tuple] = []  # each stamped when it happened
        pending: list[_Pending] = []
        repeats: list[tuple[ParmanaError, Any, _Pending]] = []  # refused by an earlier request of this batch
        seen_fp: set[str] = set()
        seen_id: set[str] = set()
        for i, raw in enumerate(raws):
            try:
                item = self._prepare(i, raw)
            except ParmanaError as exc:
                results[i] = exc
                refusals.append(_refusal_row(self._clock(), exc, raw))
                continue
            if item.fingerprint in seen_fp or item.execution_id in seen_id:
                code, what = (
                    ("INV-013", f"Replay detected: execution_fingerprint {item.fingerprint} has already been consumed earlier in this batch")
                    if item.fingerprint in seen_fp
                    else ("INV-015", f"executionId {item.execution_id!r} appears twice in this batch")
                )
                exc = ReplayError(code, "replay", what)
                results[i] = exc
                repeats.append((exc, raw, item))
                continue
            seen_fp.add(item.fingerprint)
            seen_id.add(item.execution_id)
            pending.append(item)

        if not pending:
            self._record_refusals(refusals)
            return results  # type: ignore[return-value]

        candidates = [(p.fingerprint, p.execution_id, p.policy.key) for p in pending]
        used = {id(p.policy): p.policy for p in pending}.values()
        policies = {p.key: (p.bundleHash, canonicalize(p.document).decode("utf-8")) for p in used}
        try:
            bundles = {k: (v.sequence, v.manifestHash, v.signerKeyIds, v.manifest, v.signatures)
                       for k, v in self._bundles.items() if k in policies}
            refused = audit.reserve(self.db, candidates, policies, refusals, now=now, ttl=self.reservation_ttl, clock=self._clock,
                                    bundles=bundles)
        except (duckdb.Error, AuditStoreError) as exc:
            raise ReplayError(
                "INV-REPLAY-001", "replay", f"no usable replay store in {self.db.path} ({first_line(exc)}); execution refused"
            ) from None
        signed: list[tuple[_Pending, dict[str, Any], tuple]] = []
        requests: list[tuple[str, str, str]] = []
        templates: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        for n, item in enumerate(pending):
            if n in refused:
                code, reason = refused[n]
                results[item.index] = ReplayError(code, "replay", reason) if code.startswith("INV") else _policy_error(code, reason)
            else:
                signed.append(self._sign(item, templates))
                if item.decision.requires_override:
                    requests.append(self._override_request(item, *signed[-1][1:]))
        # a repeat is refused once the request it repeats has been decided: stamped after that was signed
        late = [_refusal_row(self._clock(), exc, raw, item) for exc, raw, item in repeats]
        if signed:
            shared = [{**before, **after, "signerKeyId": self._key.key_id} for _, (before, after) in templates.values()]
            self._confirm(signed, shared, late, requests)
            for item, body, _ in signed:
                results[item.index] = ExecutionAttestation._trusted(body, item.decision)
        else:
            self._record_refusals(late)
        return results  # type: ignore[return-value]

    def _template(self, item: _Pending) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fields all attestations of one policy rule share, in wire order around signalsHash."""
        policy, decision = item.policy, item.decision
        before = {
            "policyId": policy.policyId,
            "policyVersion": policy.policyVersion,
            "schemaVersion": policy.schemaVersion,
            "runtimeVersion": self.manifest.runtimeVersion,
            "runtimeHash": self.runtime_hash,
            "evaluatorArtifactHash": self.evaluator_artifact_hash,
        }
        after = {
            "bundleHash": policy.bundleHash,
            "decision": {
                "action": decision.action,
                "requires_override": decision.requires_override,
                "reason": decision.reason,
                "ruleId": decision.ruleId,
            },
            "execution_state": decision.execution_state,
        }
        return before, after

    def _sign(self, item: _Pending, templates: dict) -> tuple[_Pending, dict[str, Any], tuple]:
        """Sign one execution: (item, attestation dict in wire field order, its audit row)."""
        key = (item.policy.bundleHash, item.decision.ruleId)
        found = templates.get(key)
        if found is None:
            found = templates[key] = (len(templates), self._template(item))
        tpl, (before, after) = found
        signals_hash = sha256_hex(item.signals_jcs)
        issued_at = self._issued_at()
        body = {
            "executionId": item.execution_id,
            "execution_fingerprint": item.fingerprint,
            **before,
            "signalsHash": signals_hash,
            **after,
            "issuedAt": issued_at,
            "signerKeyId": self._key.key_id,
        }
        signature, canonical = seal(body, self._key)
        body["signature"] = signature
        row = (
            tpl, item.execution_id, item.fingerprint, signals_hash, issued_at, signature,
            canonical.decode("utf-8"), item.signals_jcs.decode("utf-8"),
        )
        return item, body, row

    def _issued_at(self) -> str:
        """format_ts(clock()), formatted once per millisecond (the wire precision)."""
        now = self._clock()
        ms = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if ms != self._last_ms:
            self._last_ms, self._last_text = ms, format_ts(ms)
        return self._last_text

    def _override_request(self, item: _Pending, body: dict[str, Any], row: tuple) -> tuple[str, str, str]:
        """The OverrideRequest of a pending_override execution: (executionId, hash, envelope JCS), recorded with it.

        Opened at the attestation's issuedAt (the clock reading it was formatted from), open pendingTtlSeconds."""
        rule = item.policy.override
        ttl = rule.pendingTtlSeconds if rule else DEFAULT_PENDING_TTL
        expires = format_ts(self._last_ms + timedelta(seconds=ttl))
        rule_jcs = self._rule_jcs.get(item.policy.bundleHash)
        if rule_jcs is None:
            rule_jcs = self._rule_jcs[item.policy.bundleHash] = canonicalize(rule.to_wire()) if rule else b"null"
        payload = request_payload(body, row[6].encode("utf-8"), item.signals_jcs, item.requested_by, rule_jcs,
                                  body["issuedAt"], expires)
        envelope = seal_payload(REQUEST_TYPE, payload, self._key)
        return item.execution_id, sha256_hex(envelope), envelope.decode("ascii")

    def _confirm(self, signed: list[tuple[_Pending, dict[str, Any], tuple]], templates: list[dict[str, Any]],
                 refusals: list[tuple], requests: list[tuple[str, str, str]] = ()) -> None:
        try:
            audit.confirm(self.db, templates, [row for _, _, row in signed], now=self._clock(), refusals=refusals,
                          requests=requests)
        except (duckdb.Error, AuditStoreError) as exc:
            try:
                audit.mark_failed(self.db, [item.fingerprint for item, _, _ in signed], now=self._clock(), ttl=self.failed_ttl)
            except (duckdb.Error, AuditStoreError):
                pass  # the reservation then simply expires
            raise AuditStoreError(
                "AUD-006", "audit", f"could not record {len(signed)} attestation(s) in {self.db.path}: {first_line(exc)}; "
                f"nothing was returned and they can be retried{storage_hint(exc)}"
            ) from None

    def _record_refusals(self, refusals: list[tuple]) -> None:
        try:
            audit.record_refusals(self.db, refusals)
        except (duckdb.Error, AuditStoreError):
            pass  # a refusal is still returned to the caller; recording it is best effort


def _policy_error(code: str, reason: str) -> ParmanaError:
    return PolicyError(code, "policy", reason)


def _refusal_row(now, exc: ParmanaError, raw: Any, item: _Pending | None = None) -> tuple:
    if item is not None:
        pid, pver = item.policy.key
        return (now, exc.code, exc.stage, exc.reason, item.fingerprint, pid, pver, item.execution_id)
    get = raw.get if isinstance(raw, dict) else (lambda _k: None)
    try:
        input_hash = sha256_hex(raw) if isinstance(raw, bytes) else canonical_hash(raw)
    except ParmanaError:
        input_hash = None
    return (now, exc.code, exc.stage, exc.reason, input_hash, *(_text(get(k)) for k in ("policyId", "policyVersion", "executionId")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


