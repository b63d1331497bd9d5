"""The verifier's override check: each pending_override attestation's decision trail, offline.

Runs after the per-line pass (like authorship), on ``overrides.jsonl``: requests
and outcomes must be signed by a trusted runtime key and bound to the attestation;
every vote must pass the same rules the runtime applied (overrides.check_resolution,
with the verifier's authority file); an outcome must count enough valid, distinct
votes; and nothing may contradict (two outcomes, a vote after one, records for a
completed execution). The result per pending line: approved, rejected, expired or pending.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from .archive import ATTESTATIONS, OVERRIDES, iter_line_blocks
from .attestation import parse_attestation_line
from .authority import Authority
from .canonical import canonicalize, sha256_hex
from .checks import CHECK_INDEX, CHECKS, FAILED, VERIFIED, load_archive_policies
from .dsse import EnvelopeError, signature_valid, signer
from .errors import OverrideError
from .keys import TrustStore
from .overrides import OverrideRecord, check_resolution, pending_hash, record_of

VOTE_CODES = {"SYS-023": "OVERRIDE_LINEAGE_MISMATCH", "OVR-001": "OVERRIDE_SIGNATURE_INVALID", "OVR-002": "OVERRIDE_UNAUTHORIZED",
              "OVR-003": "OVERRIDE_UNAUTHORIZED", "OVR-004": "OVERRIDE_SELF_APPROVED", "OVR-005": "OVERRIDE_UNAUTHORIZED",
              "OVR-006": "OVERRIDE_CONFLICT"}
_BOUND = ("execution_fingerprint", "pendingAttestationHash", "overrideRequestHash")


def read_records(root: Path) -> tuple[dict[str, list[OverrideRecord]], list[int]]:
    """overrides.jsonl grouped by executionId (file order kept), and the numbers of lines that are no record."""
    by_id: dict[str, list[OverrideRecord]] = defaultdict(list)
    bad: list[int] = []
    for number, line in enumerate(chain.from_iterable(iter_line_blocks(root / OVERRIDES)), start=1):
        try:
            record = record_of(line)
        except EnvelopeError:
            bad.append(number)
            continue
        by_id[record.body["executionId"]].append(record)
    return by_id, bad


def check_overrides(root: Path, table, authority: Authority, store: TrustStore) -> tuple[list[int], bool]:
    """Set each line's override check and state (table.override_states); returns (unreadable overrides.jsonl lines,
    whether the archive has the file at all: without it pending lines stay not_checkable)."""
    present = (root / OVERRIDES).is_file()
    by_id, bad = read_records(root) if present else ({}, [])
    policies = load_archive_policies(root)
    width, at = len(CHECKS), CHECK_INDEX["override"]
    for row, line in enumerate(chain.from_iterable(iter_line_blocks(root / ATTESTATIONS))):
        obj, _ = parse_attestation_line(line)
        if obj is None:
            continue
        records = by_id.get(obj["executionId"], [])
        if obj["execution_state"] == "completed":
            problems = [("OVERRIDE_CONFLICT", f"{len(records)} override record(s) for a completed execution")] if records else []
            state = None
        elif not present:
            continue  # an archive from before overrides: nothing to check against
        else:
            entry = policies.get((obj["policyId"], obj["policyVersion"]))
            rule = entry.policy.override.to_wire() if entry and entry.policy and entry.policy.override else None
            state, problems = _trail(obj, line, records, rule, authority, store)
        table._statuses[row * width + at] = FAILED if problems else VERIFIED
        if state is not None:
            table.override_states[row] = state
        for code, observed in problems[:1] + [p for p in problems[1:] if p[0] != problems[0][0]][:3]:
            finding = (code, "override", "a decision trail signed by trusted runtime keys and authorized approvers", observed)
            table.findings[row] = (*table.findings.get(row, ()), finding)
    return bad, present


def _runtime_signed(record: OverrideRecord, store: TrustStore, at: str) -> str | None:
    key = store.get(signer(record.envelope))
    if key is None:
        return f"the {record.kind} is signed by {signer(record.envelope)}, not a key in your trust store"
    if key.status_at(at) != "valid":
        return f"the {record.kind}'s key {key.keyId} was {key.status_at(at)} at {at}"
    if not signature_valid(record.envelope, canonicalize(record.body), key.raw_public_key):
        return f"the {record.kind}'s signature by {key.keyId} does not verify"
    return None


def _trail(obj: dict, line: bytes, records: list[OverrideRecord], rule: dict | None, authority: Authority,
           store: TrustStore) -> tuple[str, list[tuple[str, str]]]:
    """(state, problems) of one pending attestation's records."""
    problems: list[tuple[str, str]] = []
    requests = [r for r in records if r.kind == "request"]
    if not requests:
        return "pending", [("OVERRIDE_LINEAGE_MISMATCH", "no OverrideRequest for this pending execution")]
    hashes = {r.hash for r in requests}
    expected = {"execution_fingerprint": obj["execution_fingerprint"], "pendingAttestationHash": pending_hash(line),
                "policyId": obj["policyId"], "policyVersion": obj["policyVersion"], "bundleHash": obj["bundleHash"],
                "ruleId": obj["decision"]["ruleId"], "override": rule}
    for request in requests:
        why = _runtime_signed(request, store, request.body["openedAt"])
        if why:
            problems.append(("OVERRIDE_SIGNATURE_INVALID", why))
        wrong = [k for k, v in expected.items() if request.body.get(k) != v]
        if sha256_hex(canonicalize(request.body["signals"])) != obj["signalsHash"]:
            wrong.append("signals")
        if wrong:
            problems.append(("OVERRIDE_LINEAGE_MISMATCH", f"the request's {', '.join(wrong)} differ from the attestation's "
                                                          "(or its archived policy's override block)"))
    strays = [r for r in records if r.kind != "request" and r.body["overrideRequestHash"] not in hashes]
    if strays:
        problems.append(("OVERRIDE_LINEAGE_MISMATCH", f"{len(strays)} {strays[0].kind}(s) name a request this execution "
                                                      "does not have (another execution's, pasted in?)"))
    decisive = 0
    state = "pending"
    for n, request in enumerate(requests):
        votes = [r for r in records if r.kind == "resolution" and r.body["overrideRequestHash"] == request.hash]
        outcomes = [r for r in records if r.kind == "outcome" and r.body["overrideRequestHash"] == request.hash]
        valid = dict(_valid_votes(request, votes, authority, problems))
        if len(outcomes) > 1:
            problems.append(("OVERRIDE_CONFLICT", f"{len(outcomes)} outcomes for one request"))
        for outcome in outcomes:
            _check_outcome(outcome, request, valid, store, problems)
            decisive += outcome.body["outcome"] != "expired"
            first = records.index(outcome)
            if any(records.index(v) > first for v in votes):
                problems.append(("OVERRIDE_CONFLICT", "a vote was recorded after the outcome"))
        if n < len(requests) - 1 and not any(o.body["outcome"] == "expired" for o in outcomes):
            problems.append(("OVERRIDE_CONFLICT", "a new request was opened while the previous one had not expired"))
        state = outcomes[0].body["outcome"] if outcomes else "pending"
    if decisive > 1:
        problems.append(("OVERRIDE_CONFLICT", f"{decisive} approved/rejected outcomes for one execution_fingerprint"))
    return state, problems


def _valid_votes(request: OverrideRecord, votes: list[OverrideRecord], authority: Authority,
                 problems: list[tuple[str, str]]) -> Iterator[tuple[str, OverrideRecord]]:
    """The votes that pass every rule, by hash (the same rules as the runtime's, without its clock)."""
    voted: list[str] = []
    for vote in votes:
        try:
            check_resolution(request, vote, authority, voted=voted)
        except OverrideError as exc:
            problems.append((VOTE_CODES[exc.code], f"vote {vote.hash[:16]}…: {exc.reason}"))
            continue
        voted.append(vote.body["approverId"])
        yield vote.hash, vote


def _check_outcome(outcome: OverrideRecord, request: OverrideRecord, valid: dict[str, OverrideRecord], store: TrustStore,
                   problems: list[tuple[str, str]]) -> None:
    b, rule = outcome.body, request.body["override"]
    why = _runtime_signed(outcome, store, b["issuedAt"])
    if why:
        problems.append(("OVERRIDE_SIGNATURE_INVALID", why))
    if any(b[k] != (request.hash if k == "overrideRequestHash" else request.body[k]) for k in _BOUND):
        problems.append(("OVERRIDE_LINEAGE_MISMATCH", "the outcome is not bound to its request's execution"))
    counted = b["resolutionHashes"]
    if b["outcome"] == "expired":
        if counted or b["issuedAt"] < request.body["expiresAt"]:
            problems.append(("OVERRIDE_CONFLICT", f"an expired outcome issued at {b['issuedAt']}, before the request's "
                                                  f"expiresAt {request.body['expiresAt']}, or counting votes"))
        return
    if b["outcome"] not in ("approved", "rejected") or counted != sorted(set(counted)):
        problems.append(("OVERRIDE_CONFLICT", "the outcome is not approved/rejected/expired with sorted, distinct vote hashes"))
        return
    want, need = ("approve", "threshold") if b["outcome"] == "approved" else ("reject", "rejectThreshold")
    people = {valid[h].body["approverId"] for h in counted if h in valid and valid[h].body["decision"] == want}
    required = rule[need] if rule else None
    if required is None or len(people) < required:
        missing = sum(h not in valid for h in counted)
        problems.append(("OVERRIDE_THRESHOLD_NOT_MET", f"{b['outcome']} with {len(people)} valid distinct {want} vote(s), "
                                                       f"{required if required is not None else 'no override block'} "
                                                       f"required ({missing} counted vote(s) absent or invalid)"))
