"""The runtime's side of overrides: list pending executions, accept signed votes, sign outcomes.

Each submission is one audit-DB transaction: the vote, and the outcome when it is
the deciding one, commit together or not at all; the store's once_key refuses a
second vote by one approver or a second outcome, so two processes racing with
deciding votes get one outcome. Expiry happens on the next touch: any call here
first signs ``expired`` outcomes for requests past their expiresAt.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import audit
from .canonical import canonicalize, parse_json
from .dsse import EnvelopeError, envelope_hash, open_envelope, read_envelope, seal_envelope
from .errors import OverrideError, ParmanaError
from .evaluate import decide
from .overrides import (
    OUTCOME_STATE,
    OUTCOME_TYPE,
    REQUEST_TYPE,
    OverrideRecord,
    OverrideStatus,
    OverrideTrail,
    check_resolution,
    outcome_body,
    record_of,
    request_body,
    still_needed,
    tally,
)
from .policy import DEFAULT_PENDING_TTL, parse_policy
from .timestamps import format_ts

if TYPE_CHECKING:
    from .runtime import Runtime

_OWN_PENDING = "a.execution_state = 'pending_override' AND a.import_status IS NULL"


def _records(con, execution_ids: list[str] | None = None) -> dict[str, list[OverrideRecord]]:
    """Stored override records per executionId, in the order recorded."""
    where, params = ("", []) if execution_ids is None else ("WHERE executionId IN (SELECT unnest(?))", [execution_ids])
    out: dict[str, list[OverrideRecord]] = defaultdict(list)
    for eid, seq, envelope in con.execute(f"SELECT executionId, seq, envelope FROM override_records {where} ORDER BY seq",
                                          params).fetchall():
        out[eid].append(_stored(envelope, f"override record {seq} of {eid}"))
    return out


def _stored(envelope: str, what: str = "an override request") -> OverrideRecord:
    """A record as the audit DB holds it; SYS-024 when it cannot be read (the store cannot do transitions then)."""
    try:
        return record_of(envelope)
    except EnvelopeError as exc:
        raise OverrideError("SYS-024", f"{what} in the audit DB cannot be read ({exc}): the store cannot do override "
                                       "transitions until it is repaired") from None


def _current(records: list[OverrideRecord]) -> tuple[OverrideRecord | None, list[OverrideRecord], OverrideRecord | None]:
    """(latest request, its votes, its outcome) of one execution's records."""
    requests = [r for r in records if r.kind == "request"]
    if not requests:
        return None, [], None
    current = requests[-1]
    votes = [r for r in records if r.kind == "resolution" and r.body["overrideRequestHash"] == current.hash]
    outcome = next((r for r in records if r.kind == "outcome" and r.body["overrideRequestHash"] == current.hash), None)
    return current, votes, outcome


def _state(outcome: OverrideRecord | None) -> str:
    return outcome.body["outcome"] if outcome is not None else "pending"


def _status(execution_id: str, records: list[OverrideRecord]) -> OverrideStatus:
    request, votes, outcome = _current(records)
    b = request.body
    _, approvals, rejections = tally(b["override"], [(v.body["approverId"], v.body["decision"]) for v in votes])
    state = _state(outcome)
    needed = still_needed(b["override"], approvals, rejections) if state == "pending" else "nothing: resolved"
    if state == "expired":
        needed = f"reopen it (`overrides reopen {execution_id}`): the request expired at {b['expiresAt']}"
    return OverrideStatus(executionId=execution_id, state=state, policyId=b["policyId"], policyVersion=b["policyVersion"],
                          ruleId=b["ruleId"], requestedBy=b["requestedBy"], openedAt=b["openedAt"], expiresAt=b["expiresAt"],
                          approvals=approvals, rejections=rejections, needed=needed, requestHash=request.hash)


def _new_request(rt: Runtime, canonical: str, signals: str, document: str, requested_by: str | None) -> tuple:
    """An OverrideRequest opened now for a pending attestation (one that has none yet, or is reopened)."""
    attestation = parse_json(canonical)
    rule = parse_policy(parse_json(document)).override
    opened = rt._clock()
    ttl = rule.pendingTtlSeconds if rule is not None else DEFAULT_PENDING_TTL
    body = request_body(attestation, canonical.encode("utf-8"), parse_json(signals), requested_by, rule, format_ts(opened),
                        format_ts(opened + timedelta(seconds=ttl)))
    envelope = seal_envelope(REQUEST_TYPE, body, rt._key)
    h = envelope_hash(envelope)
    return ("request", h, attestation["executionId"], h, None, None, h, canonicalize(envelope).decode("utf-8"))


def open_missing(rt: Runtime) -> int:
    """Requests for this runtime's pending executions recorded before overrides existed (an older audit DB)."""
    with rt.db._lock:
        rows = rt.db.connection.execute(
            "SELECT a.canonical, s.signals, p.document FROM attestations a JOIN policies p USING (policyId, policyVersion) "
            f"JOIN signals s USING (executionId) WHERE {_OWN_PENDING} "
            "AND NOT EXISTS (SELECT 1 FROM override_records o WHERE o.executionId = a.executionId) ORDER BY a.seq").fetchall()
    if rows:
        records = [_new_request(rt, *row, None) for row in rows]
        with rt.db.transaction() as con:
            audit.insert_override_records(con, records, rt._clock())
    return len(rows)


def expire_due(rt: Runtime) -> int:
    """Sign an ``expired`` outcome for every open request past its expiresAt."""
    now = format_ts(rt._clock())
    with rt.db._lock:
        rows = rt.db.connection.execute(
            "SELECT envelope FROM override_records r WHERE kind = 'request' AND NOT EXISTS "
            "(SELECT 1 FROM override_records o WHERE o.request_hash = r.hash AND o.kind = 'outcome')").fetchall()
    due = [r for r in (_stored(e) for (e,) in rows) if r.body["expiresAt"] <= now]
    if not due:
        return 0
    with rt.db.transaction() as con:
        for request in due:
            _sign_outcome(rt, con, request, "expired", [])
    return len(due)


def _sign_outcome(rt: Runtime, con, request: OverrideRecord, outcome: str, counted: list[OverrideRecord]) -> OverrideRecord:
    body = outcome_body(request.body, request.hash, outcome, [v.hash for v in counted], format_ts(rt._clock()))
    envelope = seal_envelope(OUTCOME_TYPE, body, rt._key)
    h = envelope_hash(envelope)
    audit.insert_override_records(con, [("outcome", h, body["executionId"], request.hash, None, outcome,
                                         f"{request.hash}/outcome", canonicalize(envelope).decode("utf-8"))], rt._clock())
    audit.set_replay_state(con, body["executionId"], OUTCOME_STATE[outcome], rt._clock())
    return OverrideRecord(kind="outcome", hash=h, body=body, envelope=envelope)


def _touch(rt: Runtime) -> None:
    open_missing(rt)
    expire_due(rt)


def pending(rt: Runtime, *, include_resolved: bool = False) -> list[OverrideStatus]:
    _touch(rt)
    with rt.db._lock:
        by_id = _records(rt.db.connection)
        order = [eid for (eid,) in rt.db.connection.execute(
            f"SELECT executionId FROM attestations a WHERE {_OWN_PENDING} ORDER BY seq").fetchall()]
    statuses = [_status(eid, by_id[eid]) for eid in order if by_id.get(eid)]
    return statuses if include_resolved else [s for s in statuses if s.state == "pending"]


def _own_pending(con, execution_id: Any) -> tuple:
    row = con.execute("SELECT a.execution_state, a.import_status, a.canonical, s.signals, p.document FROM attestations a "
                      "LEFT JOIN signals s USING (executionId) LEFT JOIN policies p USING (policyId, policyVersion) "
                      "WHERE a.executionId = ?", [execution_id]).fetchall() if isinstance(execution_id, str) else []
    if not row:
        raise OverrideError("SYS-021", f"no execution {execution_id!r} in this audit DB: no pending override to resolve")
    state, imported, *rest = row[0]
    if state != "pending_override":
        raise OverrideError("SYS-021", f"execution {execution_id} is {state}, not pending_override: there is nothing to resolve")
    if imported is not None:
        raise OverrideError("SYS-021", f"execution {execution_id} was imported from another runtime's archive: only the "
                                       "runtime that recorded it can resolve it")
    return tuple(rest)


def status_of(rt: Runtime, execution_id: Any) -> OverrideStatus | None:
    """Where one execution stands, or None when it is no pending execution of this runtime."""
    with rt.db._lock:
        try:
            _own_pending(rt.db.connection, execution_id)
        except OverrideError:
            return None
        records = _records(rt.db.connection, [execution_id])[execution_id]
    return _status(execution_id, records) if records else None


def request_for(rt: Runtime, execution_id: str) -> dict[str, Any]:
    """The current OverrideRequest envelope of a pending execution (what approvers sign against)."""
    _touch(rt)
    with rt.db._lock:
        _own_pending(rt.db.connection, execution_id)
        request, _, _ = _current(_records(rt.db.connection, [execution_id])[execution_id])
    return request.envelope


def trail(rt: Runtime, execution_id: str) -> OverrideTrail:
    _touch(rt)
    with rt.db._lock:
        _own_pending(rt.db.connection, execution_id)
        records = _records(rt.db.connection, [execution_id])[execution_id]
    return OverrideTrail(executionId=execution_id, state=_state(_current(records)[2]), records=records)


def reopen(rt: Runtime, execution_id: str) -> dict[str, Any]:
    """A new request for an expired one (the history stays; earlier votes do not count for it)."""
    _touch(rt)
    with rt.db.transaction() as con:
        canonical, signals, document = _own_pending(con, execution_id)
        request, _, outcome = _current(_records(con, [execution_id])[execution_id])
        if outcome is None:
            raise OverrideError("SYS-026", f"execution {execution_id}'s request is still open until {request.body['expiresAt']}: "
                                           "there is nothing to reopen")
        if outcome.body["outcome"] != "expired":
            raise OverrideError("SYS-025", f"execution {execution_id} was already {outcome.body['outcome']}; only an expired "
                                           "request can be reopened")
        record = _new_request(rt, canonical, signals, document, request.body["requestedBy"])
        audit.insert_override_records(con, [record], rt._clock())
        audit.set_replay_state(con, execution_id, "PENDING_OVERRIDE", rt._clock())
    return parse_json(record[-1])


def submit(rt: Runtime, envelope: Any) -> OverrideStatus:
    """Check one OverrideResolution in the documented order and record it; sign the outcome when it decides."""
    try:
        envelope, digest = read_envelope(envelope)
        body, _ = open_envelope(envelope, envelope["payloadType"])
    except EnvelopeError as exc:
        raise OverrideError("OVR-001", f"not a usable override resolution envelope: {exc}") from None
    resolution = OverrideRecord(kind="resolution", hash=digest, body=body, envelope=envelope)
    execution_id = body.get("executionId")
    _touch(rt)
    with rt.db.transaction() as con:
        canonical, signals, document = _own_pending(con, execution_id)
        records = _records(con, [execution_id])[execution_id]
        request, votes, outcome = _current(records)
        if outcome is not None and outcome.body["outcome"] != "expired":
            raise OverrideError("SYS-025", f"execution {execution_id} was already {outcome.body['outcome']} "
                                           f"({outcome.body['issuedAt']}): override already resolved")
        if request is None or not isinstance(request.body.get("execution_fingerprint"), str):
            raise OverrideError("SYS-022", f"the stored override request of {execution_id} has no execution_fingerprint")
        try:
            check_resolution(request, resolution, rt.authority, voted=[v.body["approverId"] for v in votes],
                             now=format_ts(rt._clock()), expired=outcome is not None)
        except OverrideError as exc:
            older = [r for r in records if r.kind == "request" and r.hash == body.get("overrideRequestHash")]
            if exc.code == "SYS-023" and older:
                raise OverrideError("SYS-023", f"this vote is for an earlier request of {execution_id} (opened "
                                               f"{older[0].body['openedAt']}), since reopened: sign the current request "
                                               f"({request.hash[:16]}…)") from None
            raise
        at = rt._clock()
        audit.insert_override_records(con, [("resolution", resolution.hash, execution_id, request.hash, body["approverId"],
                                             body["decision"], f"{request.hash}/{body['approverId']}",
                                             canonicalize(envelope).decode("utf-8"))], at)
        votes = [*votes, resolution]
        decided, _, _ = tally(request.body["override"], [(v.body["approverId"], v.body["decision"]) for v in votes])
        if decided is not None:
            if decided == "approved":
                _same_decision(canonical, signals, document)
            want = "approve" if decided == "approved" else "reject"
            counted = [v for v in votes if v.body["decision"] == want]
            records += [resolution, _sign_outcome(rt, con, request, decided, counted)]
        else:
            records.append(resolution)
    return _status(execution_id, records)


def _same_decision(canonical: str, signals: str, document: str) -> None:
    """Before an approval is signed, the pinned policy must still give the attested decision on the stored signals."""
    attestation = parse_json(canonical)
    try:
        decision = decide(parse_policy(parse_json(document)), parse_json(signals))
    except ParmanaError as exc:
        raise OverrideError("SYS-023", f"re-evaluating the pinned policy failed ({exc.code}: {exc.reason})") from None
    attested = attestation["decision"]
    now = {"action": decision.action, "requires_override": decision.requires_override, "reason": decision.reason,
           "ruleId": decision.ruleId}
    if now != attested:
        raise OverrideError("SYS-023", f"re-evaluating {attestation['policyId']} {attestation['policyVersion']} on the stored "
                                       f"signals gives {now}, not the attested {attested}: nothing was approved")

