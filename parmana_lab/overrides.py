"""Override records: who may resolve a pending_override execution, checked from signatures alone.

Three DSSE envelopes (dsse.py) make one execution's decision trail: the
runtime's OverrideRequest (written with the pending attestation), approvers'
OverrideResolutions (signed offline with their own keys), and the runtime's
OverrideOutcome once enough distinct approvers (or rejecters) agree. The pending
attestation is never rewritten. The rules here are pure, so the runtime that
accepts a vote and the verifier that re-checks an archive apply the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .authority import ApproverEntry, Authority
from .canonical import canonicalize, quote, sha256_hex
from .dsse import EnvelopeError, open_envelope, read_envelope, seal_envelope, signature_valid, signer
from .errors import OverrideError
from .keys import load_key_file
from .policy import OverrideRule
from .timestamps import TIMESTAMP, Clock, format_ts, system_clock

REQUEST_TYPE = "PARMANA_OVERRIDE_REQUEST_V1"
RESOLUTION_TYPE = "PARMANA_OVERRIDE_RESOLUTION_V1"
OUTCOME_TYPE = "PARMANA_OVERRIDE_OUTCOME_V1"
MAX_REASON = 2000
REQUEST_FIELDS = ("executionId", "execution_fingerprint", "pendingAttestationHash", "policyId", "policyVersion", "bundleHash",
                  "ruleId", "signals", "requestedBy", "override", "openedAt", "expiresAt")
RESOLUTION_FIELDS = ("executionId", "execution_fingerprint", "pendingAttestationHash", "overrideRequestHash", "decision",
                     "approverId", "approverRole", "reason", "issuedAt")
OUTCOME_FIELDS = ("executionId", "execution_fingerprint", "pendingAttestationHash", "overrideRequestHash", "outcome",
                  "resolutionHashes", "issuedAt")
KINDS = {REQUEST_TYPE: "request", RESOLUTION_TYPE: "resolution", OUTCOME_TYPE: "outcome"}
State = Literal["pending", "approved", "rejected", "expired"]
OUTCOME_STATE = {"approved": "OVERRIDDEN", "rejected": "REJECTED", "expired": "EXPIRED"}  # the replay state each leaves


class OverrideRecord(BaseModel):
    """One envelope of a decision trail, with its decoded body and its hash (how other records name it)."""

    model_config = ConfigDict(defer_build=True)

    kind: Literal["request", "resolution", "outcome"]
    hash: str
    body: dict[str, Any]
    envelope: dict[str, Any] = Field(repr=False)


class OverrideStatus(BaseModel):
    """Where one execution stands: its current request's votes and what is still needed."""

    model_config = ConfigDict(defer_build=True)

    executionId: str
    state: State
    policyId: str
    policyVersion: str
    ruleId: str
    requestedBy: str | None
    openedAt: str
    expiresAt: str
    approvals: list[str] = []
    rejections: list[str] = []
    needed: str
    requestHash: str


class OverrideTrail(BaseModel):
    """An execution's whole decision trail (every request, vote and outcome, in the order recorded)."""

    model_config = ConfigDict(defer_build=True)

    executionId: str
    state: State
    records: list[OverrideRecord]

    def _repr_html_(self) -> str:
        from ._html import trail_html

        return trail_html(self)


def pending_hash(attestation_line: bytes) -> str:
    """pendingAttestationHash: sha256 of the attestation's canonical line (JCS with its signature)."""
    return sha256_hex(attestation_line)


def request_body(attestation: dict[str, Any], attestation_line: bytes, signals: dict[str, Any], requested_by: str | None,
                 rule: OverrideRule | None, opened_at: str, expires_at: str) -> dict[str, Any]:
    return {
        "executionId": attestation["executionId"], "execution_fingerprint": attestation["execution_fingerprint"],
        "pendingAttestationHash": pending_hash(attestation_line), "policyId": attestation["policyId"],
        "policyVersion": attestation["policyVersion"], "bundleHash": attestation["bundleHash"],
        "ruleId": attestation["decision"]["ruleId"], "signals": signals, "requestedBy": requested_by,
        "override": rule.to_wire() if rule is not None else None, "openedAt": opened_at, "expiresAt": expires_at,
    }


def request_payload(attestation: dict[str, Any], attestation_line: bytes, signals_jcs: bytes, requested_by: str | None,
                    rule_jcs: bytes, opened_at: str, expires_at: str) -> bytes:
    """JCS(request_body(...)) assembled from parts already canonical (the runtime's hot path: a third of a busy
    batch is pending); members in JCS order. tests/test_overrides.py holds it equal to canonicalize(request_body)."""
    a = attestation
    return b"".join((
        b'{"bundleHash":', quote(a["bundleHash"]), b',"executionId":', quote(a["executionId"]),
        b',"execution_fingerprint":', quote(a["execution_fingerprint"]), b',"expiresAt":', quote(expires_at),
        b',"openedAt":', quote(opened_at), b',"override":', rule_jcs,
        b',"pendingAttestationHash":"', pending_hash(attestation_line).encode("ascii"),
        b'","policyId":', quote(a["policyId"]), b',"policyVersion":', quote(a["policyVersion"]),
        b',"requestedBy":', b"null" if requested_by is None else quote(requested_by),
        b',"ruleId":', quote(a["decision"]["ruleId"]), b',"signals":', signals_jcs, b"}",
    ))


def outcome_body(request: dict[str, Any], request_hash: str, outcome: str, resolution_hashes: Iterable[str],
                 issued_at: str) -> dict[str, Any]:
    return {
        "executionId": request["executionId"], "execution_fingerprint": request["execution_fingerprint"],
        "pendingAttestationHash": request["pendingAttestationHash"], "overrideRequestHash": request_hash,
        "outcome": outcome, "resolutionHashes": sorted(resolution_hashes), "issuedAt": issued_at,
    }


def record_of(envelope: dict[str, Any]) -> OverrideRecord:
    """Decode one stored or archived envelope (its kind from its payloadType); EnvelopeError if it is none of the three."""
    envelope, digest = read_envelope(envelope)
    kind = KINDS.get(envelope["payloadType"])
    if kind is None:
        raise EnvelopeError(f"payloadType {envelope['payloadType']!r} is not an override record")
    body, _ = open_envelope(envelope, envelope["payloadType"])
    fields = {"request": REQUEST_FIELDS, "resolution": RESOLUTION_FIELDS, "outcome": OUTCOME_FIELDS}[kind]
    if set(body) != set(fields) or not isinstance(body.get("executionId"), str):
        raise EnvelopeError(f"an {KINDS[envelope['payloadType']]} body is exactly {{{', '.join(fields)}}}")
    return OverrideRecord.model_construct(kind=kind, hash=digest, body=body, envelope=envelope)  # every field made here


def load_request(source: str | Path | bytes | dict[str, Any]) -> OverrideRecord:
    """An OverrideRequest envelope from a file, JSON text or a dict; OVR-001 if it is not one."""
    data: Any = source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise OverrideError("OVR-001", f"cannot read override request {source}: {exc.strerror}") from None
    try:
        record = record_of(data)
    except EnvelopeError as exc:
        raise OverrideError("OVR-001", f"not an override request envelope: {exc}") from None
    if record.kind != "request":
        raise OverrideError("OVR-001", f"this is an override {record.kind}, not a request")
    return record


def sign_resolution(request: str | Path | bytes | dict[str, Any] | OverrideRecord, key_path: str | Path, *, approver_id: str,
                    role: str, decision: Literal["approve", "reject"], reason: str,
                    clock: Clock = system_clock) -> dict[str, Any]:
    """An approver's OverrideResolution for a request, signed with their own key file (offline: no workspace).

    The envelope binds the vote to exactly this request (its hash) and the pending attestation it names.
    """
    record = request if isinstance(request, OverrideRecord) else load_request(request)
    if decision not in ("approve", "reject"):
        raise OverrideError("OVR-001", f"decision is 'approve' or 'reject', not {decision!r}")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise OverrideError("OVR-001", f"a reason is required: 1-{MAX_REASON} characters saying why")
    if not isinstance(approver_id, str) or not approver_id or not isinstance(role, str) or not role:
        raise OverrideError("OVR-001", "approver id and role are non-empty")
    body = record.body
    resolution = {
        "executionId": body["executionId"], "execution_fingerprint": body["execution_fingerprint"],
        "pendingAttestationHash": body["pendingAttestationHash"], "overrideRequestHash": record.hash,
        "decision": decision, "approverId": approver_id, "approverRole": role, "reason": reason,
        "issuedAt": format_ts(clock()),
    }
    return seal_envelope(RESOLUTION_TYPE, resolution, load_key_file(key_path))


def describe_request(record: OverrideRecord) -> str:
    """What an approver is asked to decide, in a few lines (shown before signing)."""
    b = record.body
    rule = b["override"] or {}
    signals = canonicalize(b["signals"]).decode("utf-8")
    return (f"execution {b['executionId']}  {b['policyId']} {b['policyVersion']}  rule {b['ruleId']}\n"
            f"signals {signals}\n"
            f"requested by {b['requestedBy'] or '(not named)'}; open {b['openedAt']} until {b['expiresAt']}\n"
            f"needs {rule.get('threshold', '?')} approver(s) with role {' or '.join(rule.get('roles', [])) or '(none authored)'}"
            f"; request {record.hash[:16]}…")


def record_line(record: OverrideRecord) -> str:
    """One line of a decision trail, for terminals (the CLI's `overrides trail`, the demo)."""
    b = record.body
    if record.kind == "request":
        return f"request   {b['openedAt']}  open until {b['expiresAt']}, requested by {b['requestedBy'] or '-'}"
    if record.kind == "resolution":
        return f"vote      {b['issuedAt']}  {b['decision']:<7} by {b['approverId']} as {b['approverRole']}: {b['reason']}"
    return f"outcome   {b['issuedAt']}  {b['outcome']} ({len(b['resolutionHashes'])} vote(s) counted)"


def _resolution_shape(body: dict[str, Any]) -> str | None:
    if set(body) != set(RESOLUTION_FIELDS):
        return f"a resolution body is exactly {{{', '.join(RESOLUTION_FIELDS)}}}"
    if body["decision"] not in ("approve", "reject"):
        return f"decision is 'approve' or 'reject', not {body['decision']!r}"
    reason = body["reason"]
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        return f"reason must be 1-{MAX_REASON} characters"
    if not all(isinstance(body[k], str) and body[k] for k in ("approverId", "approverRole")):
        return "approverId and approverRole are non-empty strings"
    if not isinstance(body["issuedAt"], str) or not TIMESTAMP.fullmatch(body["issuedAt"]):
        return "issuedAt is a UTC timestamp like 2026-01-31T12:00:00.000Z"
    return None


def check_resolution(request: OverrideRecord, resolution: OverrideRecord, authority: Authority | None, *,
                     voted: Iterable[str] = (), now: str | None = None, expired: bool = False) -> ApproverEntry:
    """Every rule a vote must meet, in the documented order (SYS-023, then OVR-001..006); returns the approver.

    ``voted``: approverIds already counted for this request; ``now``: the runtime's time (None offline, where only
    the window is checked); ``expired``: the request already has an expired outcome.
    """
    req, res = request.body, resolution.body
    for name, expected in (("executionId", req["executionId"]), ("execution_fingerprint", req["execution_fingerprint"]),
                           ("pendingAttestationHash", req["pendingAttestationHash"]), ("overrideRequestHash", request.hash)):
        if res.get(name) != expected:
            raise OverrideError("SYS-023", f"override lineage mismatch: the resolution's {name} is {res.get(name)!r}, the "
                                           f"stored request's is {expected!r}")
    if resolution.envelope["payloadType"] != RESOLUTION_TYPE:
        raise OverrideError("OVR-001", f"payloadType is {resolution.envelope['payloadType']!r}, not {RESOLUTION_TYPE}")
    shape = _resolution_shape(res)
    if shape is not None:
        raise OverrideError("OVR-001", f"not a valid OverrideResolution: {shape}")
    key_id = signer(resolution.envelope)
    entry = next((a for a in (authority.approvers if authority else []) if a.keyId == key_id), None)
    if entry is None:
        where = "the authority file" if authority is not None else "any authority file (none is configured)"
        raise OverrideError("OVR-002", f"signing key {key_id} is not an approver key in {where}")
    if not signature_valid(resolution.envelope, canonicalize(res), entry.raw_public_key):
        raise OverrideError("OVR-001", f"the signature by {key_id} does not verify: the resolution was altered or forged")
    if entry.approverId != res["approverId"]:
        raise OverrideError("OVR-002", f"key {key_id} belongs to approver {entry.approverId!r}, not {res['approverId']!r}")
    status = entry.status_at(res["issuedAt"])
    if status != "valid":
        when = {"revoked": f"revoked at {entry.revokedAt}", "not_yet_valid": f"not valid before {entry.notBefore}",
                "expired": f"valid only until {entry.notAfter}"}[status]
        raise OverrideError("OVR-002", f"approver key {key_id} of {entry.approverId!r} was {when}; the vote was cast at "
                                       f"{res['issuedAt']}")
    rule = req["override"]
    if rule is None:
        raise OverrideError("OVR-003", f"{req['policyId']} {req['policyVersion']} authors no override block: nobody may "
                                       "resolve its pending executions (publish a version with one)")
    role = res["approverRole"]
    if role not in rule["roles"]:
        raise OverrideError("OVR-003", f"role {role!r} may not resolve {req['policyId']} {req['policyVersion']} "
                                       f"(its override roles: {', '.join(rule['roles'])})")
    if role not in entry.roles:
        raise OverrideError("OVR-003", f"approver {entry.approverId!r} does not hold role {role!r} "
                                       f"(the authority file gives: {', '.join(entry.roles) or 'none'})")
    if req["requestedBy"] is not None and res["approverId"] == req["requestedBy"] and not rule["allowSelfApproval"]:
        raise OverrideError("OVR-004", f"{res['approverId']!r} requested this execution and may not resolve it (the policy "
                                       "does not allow self-approval)")
    if expired or (now is not None and now >= req["expiresAt"]):
        raise OverrideError("OVR-005", f"the request expired at {req['expiresAt']}; `overrides reopen "
                                       f"{req['executionId']}` issues a new one (fresh votes needed)")
    if not req["openedAt"] <= res["issuedAt"] < req["expiresAt"]:
        raise OverrideError("OVR-005", f"the vote was cast at {res['issuedAt']}, outside the request's window "
                                       f"[{req['openedAt']}, {req['expiresAt']})")
    if res["approverId"] in set(voted):
        raise OverrideError("OVR-006", f"{res['approverId']!r} already voted on this request (with any key, one vote "
                                       "per approver)")
    return entry


def tally(rule: dict[str, Any] | None, votes: Iterable[tuple[str, str]]) -> tuple[str | None, list[str], list[str]]:
    """(outcome or None, approvers, rejecters) of distinct approvers' votes under an override block."""
    approvals = sorted({a for a, d in votes if d == "approve"})
    rejections = sorted({a for a, d in votes if d == "reject"})
    if rule is not None and len(approvals) >= rule["threshold"]:
        return "approved", approvals, rejections
    if rule is not None and len(rejections) >= rule["rejectThreshold"]:
        return "rejected", approvals, rejections
    return None, approvals, rejections


def still_needed(rule: dict[str, Any] | None, approvals: list[str], rejections: list[str]) -> str:
    if rule is None:
        return "nobody may resolve it: the policy authors no override block"
    more = rule["threshold"] - len(approvals)
    against = rule["rejectThreshold"] - len(rejections)
    return (f"{more} more approval(s) from role {' or '.join(rule['roles'])}, or {against} more rejection(s)")

