"""The local runtime: validate, load policy, evaluate, reserve, sign, record.

Each stage fails closed. An attestation is handed back only after the
transaction that records it has committed, so nothing a caller holds can be
missing from the audit DB. ``execute`` is ``execute_many`` of one: both use
exactly two transactions per batch (reserve, then record-and-confirm).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from . import audit
from .attestation import ExecutionAttestation, sign_body
from .audit import AuditDB
from .canonical import canonical_hash, canonicalize, sha256_hex
from .errors import AuditStoreError, ParmanaError, PolicyError, ReplayError
from .evaluate import Decision, evaluate
from .keys import Keyring, TrustStore
from .policy import Policy, PolicyStore
from .provenance import RuntimeInfo, evaluator_artifact_hash, runtime_hash, runtime_manifest
from .timestamps import Clock, format_ts, system_clock
from .validation import ExecutionRequest, parse_request, validate_signals
from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir

Result = ExecutionAttestation | ParmanaError
DEFAULT_CHUNK = 5_000


@dataclass(slots=True)
class _Pending:
    """One execution that passed every pure stage and awaits reservation."""

    index: int
    request: ExecutionRequest
    policy: Policy
    decision: Decision
    fingerprint: str
    signals_json: str


class Runtime:
    """A workspace's runtime: its policies, signing key and audit database.

    Use as a context manager (or call ``close()``) to release the DuckDB file.
    ``clock`` and ``new_id`` are injectable so tests can move time and fix ids.
    """

    def __init__(
        self,
        workspace: str | Path = DEFAULT_WORKSPACE,
        *,
        policies: str | Path | PolicyStore | None = None,
        clock: Clock = system_clock,
        reservation_ttl: float = 300.0,
        failed_ttl: float = 30.0,
        new_id=uuid.uuid4,
    ) -> None:
        self.workspace = Workspace(workspace)
        self.policies = policies if isinstance(policies, PolicyStore) else PolicyStore(policies or default_policy_dir())
        self.keyring = Keyring(self.workspace.keys_dir, clock=clock)
        self._clock = clock
        self._new_id = new_id
        self.reservation_ttl = reservation_ttl
        self.failed_ttl = failed_ttl
        self.manifest = runtime_manifest()
        self.runtime_hash = runtime_hash(self.manifest)
        self.evaluator_artifact_hash = evaluator_artifact_hash()
        self.db = AuditDB(self.workspace.audit_path)
        try:
            self._key = self.keyring.signing_key(create=True)
        except BaseException:
            self.db.close()
            raise

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
        chunk: list[Any] = []
        for request in requests:
            chunk.append(request)
            if len(chunk) >= chunk_size:
                yield from self._run_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk)

    # -- the flow ----------------------------------------------------------------------------

    def _prepare(self, index: int, raw: Any) -> _Pending:
        request = parse_request(raw, new_id=self._new_id)
        policy = self.policies.get(request.policyId, request.policyVersion)
        validate_signals(request.signals, policy)
        decision = evaluate(policy, request.signals)
        signals_json = canonicalize(request.signals)
        fingerprint = canonical_hash(
            {"policyId": request.policyId, "policyVersion": request.policyVersion, "signals": request.signals}
        )
        return _Pending(index, request, policy, decision, fingerprint, signals_json.decode("utf-8"))

    def _run_chunk(self, raws: list[Any]) -> list[Result]:
        now = self._clock()
        results: list[Result | None] = [None] * len(raws)
        refusals: list[tuple] = []
        pending: list[_Pending] = []
        seen_fp: set[str] = set()
        seen_id: set[str] = set()
        for i, raw in enumerate(raws):
            try:
                item = self._prepare(i, raw)
            except ParmanaError as exc:
                results[i] = exc
                refusals.append(_refusal_row(now, exc, raw))
                continue
            if item.fingerprint in seen_fp or item.request.executionId in seen_id:
                code, what = (
                    ("INV-013", f"Replay detected: execution_fingerprint {item.fingerprint} has already been consumed earlier in this batch")
                    if item.fingerprint in seen_fp
                    else ("INV-015", f"executionId {item.request.executionId!r} appears twice in this batch")
                )
                exc = ReplayError(code, "replay", what)
                results[i] = exc
                refusals.append(_refusal_row(now, exc, raw, item))
                continue
            seen_fp.add(item.fingerprint)
            seen_id.add(item.request.executionId)
            pending.append(item)

        if not pending:
            self._record_refusals(refusals)
            return results  # type: ignore[return-value]

        candidates = [(p.fingerprint, p.request.executionId, p.policy.key) for p in pending]
        policies = {p.policy.key: (p.policy.bundleHash, canonicalize(p.policy.document).decode()) for p in pending}
        try:
            refused = audit.reserve(self.db, candidates, policies, refusals, now=now, ttl=self.reservation_ttl)
        except (duckdb.Error, AuditStoreError) as exc:
            raise ReplayError(
                "INV-REPLAY-001", "replay", f"no usable replay store in {self.db.path} ({_first_line(exc)}); execution refused"
            ) from None
        signed: list[tuple[_Pending, dict[str, Any]]] = []
        for n, item in enumerate(pending):
            if n in refused:
                code, reason = refused[n]
                results[item.index] = ReplayError(code, "replay", reason) if code.startswith("INV") else _policy_error(code, reason)
            else:
                signed.append((item, self._sign(item)))
        if signed:
            self._confirm(signed)
            for item, body in signed:
                results[item.index] = _attestation(body, item.decision)
        return results  # type: ignore[return-value]

    def _sign(self, item: _Pending) -> dict[str, Any]:
        request, policy, decision = item.request, item.policy, item.decision
        body: dict[str, Any] = {
            "executionId": request.executionId,
            "execution_fingerprint": item.fingerprint,
            "policyId": policy.policyId,
            "policyVersion": policy.policyVersion,
            "schemaVersion": policy.schemaVersion,
            "runtimeVersion": self.manifest.runtimeVersion,
            "runtimeHash": self.runtime_hash,
            "evaluatorArtifactHash": self.evaluator_artifact_hash,
            "signalsHash": sha256_hex(item.signals_json.encode("utf-8")),
            "bundleHash": policy.bundleHash,
            "decision": {
                "action": decision.action,
                "requires_override": decision.requires_override,
                "reason": decision.reason,
                "ruleId": decision.ruleId,
            },
            "execution_state": decision.execution_state,
            "issuedAt": format_ts(self._clock()),
            "signerKeyId": self._key.key_id,
        }
        body["signature"] = sign_body(body, self._key)
        return body

    def _confirm(self, signed: list[tuple[_Pending, dict[str, Any]]]) -> None:
        rows, signal_rows = [], []
        for item, att in signed:
            d = att["decision"]
            rows.append((
                att["executionId"], att["execution_fingerprint"], att["policyId"], att["policyVersion"], att["schemaVersion"],
                att["runtimeVersion"], att["runtimeHash"], att["evaluatorArtifactHash"], att["signalsHash"], att["bundleHash"],
                d["action"], d["requires_override"], d["reason"], d["ruleId"], att["execution_state"], att["issuedAt"],
                att["signerKeyId"], att["signature"], canonicalize(att).decode("utf-8"),
            ))
            signal_rows.append((att["executionId"], item.signals_json))
        try:
            audit.confirm(self.db, rows, signal_rows, now=self._clock())
        except (duckdb.Error, AuditStoreError) as exc:
            try:
                audit.mark_failed(self.db, [item.fingerprint for item, _ in signed], now=self._clock(), ttl=self.failed_ttl)
            except (duckdb.Error, AuditStoreError):
                pass  # the reservation then simply expires
            raise AuditStoreError(
                "AUD-006", "audit", f"could not record {len(rows)} attestation(s) in {self.db.path}: {_first_line(exc)}; nothing was returned"
            ) from None

    def _record_refusals(self, refusals: list[tuple]) -> None:
        try:
            audit.record_refusals(self.db, refusals)
        except (duckdb.Error, AuditStoreError):
            pass  # a refusal is still returned to the caller; recording it is best effort


def _attestation(body: dict[str, Any], decision: Decision) -> ExecutionAttestation:
    return ExecutionAttestation.model_construct(**{**body, "decision": decision})


def _policy_error(code: str, reason: str) -> ParmanaError:
    return PolicyError(code, "policy", reason)


def _refusal_row(now, exc: ParmanaError, raw: Any, item: _Pending | None = None) -> tuple:
    if item is not None:
        req = item.request
        return (now, exc.code, exc.stage, exc.reason, item.fingerprint, req.policyId, req.policyVersion, req.executionId)
    get = raw.get if isinstance(raw, dict) else (lambda _k: None)
    try:
        input_hash = sha256_hex(raw) if isinstance(raw, bytes) else canonical_hash(raw)
    except ParmanaError:
        input_hash = None
    return (now, exc.code, exc.stage, exc.reason, input_hash, *(_text(get(k)) for k in ("policyId", "policyVersion", "executionId")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
