"""Overrides: pending_override executions resolved by approvers' own signatures (real keys, real envelopes, real DB)."""

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from parmana_lab import ReplayError, Runtime
from parmana_lab.canonical import canonicalize, parse_json
from parmana_lab.dsse import envelope_hash, seal_envelope
from parmana_lab.errors import OverrideError, PolicyError
from parmana_lab.keys import new_key_file
from parmana_lab.overrides import OUTCOME_TYPE, REQUEST_TYPE, RESOLUTION_TYPE, sign_resolution
from parmana_lab.policy import parse_policy
from parmana_lab.timestamps import system_clock

from .conftest import FakeClock
from .override_setup import loan, make_desk, payment


@pytest.fixture
def desk(tmp_path):
    return make_desk(tmp_path)


@pytest.fixture
def rt(desk, clock):
    with Runtime(desk.root / "ws", policies=desk.policies, authority=desk.authority_path, clock=clock) as runtime:
        yield runtime


def vote(desk, request, who, decision="approve", role="finance", reason="checked the invoice", clock=None, key=None):
    """An approver's vote, signed (by default) a minute after the tests' runtimes start."""
    when = clock or (lambda: FakeClock()() + timedelta(minutes=1))
    return sign_resolution(request, key or desk.key_file(who), approver_id=who, role=role, decision=decision, reason=reason,
                           clock=when)


def refused(rt, envelope) -> OverrideError:
    with pytest.raises(OverrideError) as info:
        rt.submit_resolution(envelope)
    assert info.value.stage == "override"
    return info.value


def body(envelope):
    return parse_json(base64.b64decode(envelope["payload"]))


def stock_verify(envelope, key):
    """A stock DSSE library (securesystemslib) verifies the envelope with the signer's public key."""
    public = SSlibKey.from_crypto(load_pem_public_key(key.public_key_pem().encode()), keyid=key.key_id)
    accepted = Envelope.from_dict(envelope).verify([public], 1)
    return list(accepted) == [key.key_id]


# -- the policy block -----------------------------------------------------------------------------------------------


def test_the_override_block_is_part_of_the_signed_document_and_strictly_checked():
    base = {"policyId": "p", "policyVersion": "1.0.0", "schemaVersion": "1.1.0", "signalsSchema": {"x": {"type": "boolean"}},
            "rules": [{"id": "r", "condition": {"all": []}, "outcome": {"action": "hold", "requires_override": True,
                                                                          "reason": "r"}}]}
    plain = parse_policy(base)
    assert plain.override is None and [w.code for w in plain.warnings] == ["POL-025"]  # pending, but nobody may resolve
    ruled = parse_policy({**base, "override": {"roles": ["finance"]}})
    assert ruled.override.to_wire() == {"allowSelfApproval": False, "pendingTtlSeconds": 604800, "rejectThreshold": 1,
                                        "roles": ["finance"], "threshold": 1}
    assert ruled.bundleHash != plain.bundleHash  # the bar is covered by the hash the author signs
    for bad in ({"roles": []}, {"roles": ["a", "a"]}, {"roles": ["a"], "threshold": 0}, {"roles": ["a"], "threshold": True},
                {"roles": ["a"], "pendingTtlSeconds": 90 * 86400 + 1}, {"roles": ["a"], "quorum": 2},
                {"roles": ["a"], "allowSelfApproval": "yes"}, ["finance"]):
        with pytest.raises(PolicyError) as info:
            parse_policy({**base, "override": bad})
        assert info.value.code == "POL-024", bad
    with pytest.raises(PolicyError) as info:
        parse_policy({**base, "schemaVersion": "1.0.0", "override": {"roles": ["a"]}})
    assert info.value.code == "POL-008" and "1.1.0" in info.value.reason


# -- the request ------------------------------------------------------------------------------------------------------


def test_a_pending_execution_comes_with_its_signed_request(desk, rt, clock):
    att = rt.execute(payment())
    assert att.execution_state == "pending_override"
    rows = rt.db.sql("SELECT kind, executionId FROM override_records")
    assert rows.to_dict("records") == [{"kind": "request", "executionId": att.executionId}]  # written with it
    assert rt.db.sql("SELECT state FROM replay")["state"].tolist() == ["PENDING_OVERRIDE"]
    request = rt.override_request(att.executionId)
    b = body(request)
    assert request["payloadType"] == REQUEST_TYPE and stock_verify(request, rt._key)
    assert b["pendingAttestationHash"] == __import__("hashlib").sha256(att.canonical()).hexdigest()
    assert (b["ruleId"], b["requestedBy"], b["openedAt"]) == ("second-approver", "carol", att.issuedAt)
    assert b["override"]["threshold"] == 2 and b["expiresAt"] == "2026-01-18T09:30:00.000Z"  # three days
    assert b["signals"] == payment()["signals"]
    completed = rt.execute(payment(amount=500))  # paid at once: no request
    assert completed.execution_state == "completed" and rt.db.count("override_records") == 1


def test_two_distinct_finance_approvals_release_a_payment(desk, rt):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    first = vote(desk, request, "alice")
    status = rt.submit_resolution(first)
    assert (status.state, status.approvals, status.needed.split(" ")[0]) == ("pending", ["alice"], "1")
    second = vote(desk, request, "bob")
    status = rt.submit_resolution(second)
    assert status.state == "approved" and status.approvals == ["alice", "bob"]
    trail = rt.override_trail(att.executionId)
    assert [r.kind for r in trail.records] == ["request", "resolution", "resolution", "outcome"]
    outcome = trail.records[-1]
    assert outcome.envelope["payloadType"] == OUTCOME_TYPE and outcome.body["outcome"] == "approved"
    assert outcome.body["resolutionHashes"] == sorted([envelope_hash(first), envelope_hash(second)])
    assert stock_verify(first, desk.keys["alice"]) and stock_verify(outcome.envelope, rt._key)
    assert rt.db.sql("SELECT state FROM replay")["state"].tolist() == ["OVERRIDDEN"]
    assert refused(rt, vote(desk, request, "carol")).code == "SYS-025"  # already resolved
    with pytest.raises(ReplayError) as info:
        rt.execute(payment())  # the overridden fingerprint stays consumed
    assert info.value.code == "INV-013"
    assert rt.db.sql("SELECT execution_state FROM attestations")["execution_state"].tolist() == ["pending_override"]  # never rewritten


def test_one_rejection_ends_it(desk, rt):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    assert rt.submit_resolution(vote(desk, request, "alice")).state == "pending"
    status = rt.submit_resolution(vote(desk, request, "bob", decision="reject", reason="duplicate invoice"))
    assert status.state == "rejected" and status.rejections == ["bob"]
    outcome = rt.override_trail(att.executionId).records[-1].body
    assert outcome["outcome"] == "rejected" and len(outcome["resolutionHashes"]) == 1  # only the rejection is counted
    assert rt.db.sql("SELECT state FROM replay")["state"].tolist() == ["REJECTED"]


def test_expiry_on_the_next_touch_and_reopen_with_fresh_votes(desk, rt, clock):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    early = vote(desk, request, "alice", clock=clock)
    rt.submit_resolution(early)
    clock.advance(3 * 86400)
    late = vote(desk, request, "bob", clock=clock)
    assert refused(rt, late).code == "OVR-005"
    assert rt.db.sql("SELECT state FROM replay")["state"].tolist() == ["EXPIRED"]
    listed = rt.pending_overrides(include_resolved=True)
    assert [(s.state, s.needed.startswith("reopen")) for s in listed] == [("expired", True)]
    assert rt.pending_overrides() == []
    fresh = rt.reopen_override(att.executionId)
    assert body(fresh)["openedAt"] == "2026-01-18T09:30:00.000Z" and envelope_hash(fresh) != envelope_hash(request)
    assert rt.db.sql("SELECT state FROM replay")["state"].tolist() == ["PENDING_OVERRIDE"]
    old = refused(rt, vote(desk, request, "bob", clock=clock))
    assert old.code == "SYS-023" and "reopened" in old.reason  # a vote on the expired request does not count
    assert rt.submit_resolution(vote(desk, fresh, "bob", clock=clock)).approvals == ["bob"]  # alice's early vote is not carried
    with pytest.raises(OverrideError) as info:
        rt.reopen_override(att.executionId)
    assert info.value.code == "SYS-026"
    assert rt.submit_resolution(vote(desk, fresh, "alice", clock=clock)).state == "approved"
    kinds = [(r.kind, r.body.get("outcome")) for r in rt.override_trail(att.executionId).records]
    assert kinds == [("request", None), ("resolution", None), ("outcome", "expired"), ("request", None), ("resolution", None),
                     ("resolution", None), ("outcome", "approved")]


# -- every refusal, in order ----------------------------------------------------------------------------------------


def test_sys_codes(desk, rt, clock):
    done = rt.execute(payment(amount=700))
    other = rt.execute(payment(amount=6_000_000))
    request = rt.override_request(other.executionId)
    ghost = seal_envelope(RESOLUTION_TYPE, {**body(vote(desk, request, "alice")), "executionId": "nope"}, desk.keys["alice"])
    assert refused(rt, ghost).code == "SYS-021"
    paid = seal_envelope(RESOLUTION_TYPE, {**body(vote(desk, request, "alice")), "executionId": done.executionId},
                         desk.keys["alice"])
    assert refused(rt, paid).code == "SYS-021"  # completed: nothing to resolve
    for field, value in (("execution_fingerprint", "0" * 64), ("pendingAttestationHash", "1" * 64),
                         ("overrideRequestHash", "2" * 64)):
        forged = seal_envelope(RESOLUTION_TYPE, {**body(vote(desk, request, "alice")), field: value}, desk.keys["alice"])
        assert refused(rt, forged).code == "SYS-023"
    # a damaged store: the stored request lost its fingerprint
    b = {**body(request), "execution_fingerprint": None}
    damaged = canonicalize(seal_envelope(REQUEST_TYPE, b, rt._key)).decode()
    rt.db.connection.execute("UPDATE override_records SET envelope = ? WHERE hash = ?", [damaged, envelope_hash(request)])
    assert refused(rt, vote(desk, request, "alice")).code == "SYS-022"


def test_an_approval_is_re_evaluated_under_the_pinned_policy(desk, rt):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    rt.submit_resolution(vote(desk, request, "alice"))
    doc = json.loads(rt.db.sql("SELECT document FROM policies")["document"][0])
    doc["rules"][-1]["outcome"]["reason"] = "edited in the audit DB"
    rt.db.connection.execute("UPDATE policies SET document = ?", [canonicalize(doc).decode()])
    error = refused(rt, vote(desk, request, "bob"))
    assert error.code == "SYS-023" and "re-evaluating" in error.reason
    assert rt.override_status(att.executionId).approvals == ["alice"]  # nothing of the refused vote was kept


def test_ovr_codes(desk, rt, clock, tmp_path):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    good = vote(desk, request, "alice")
    wrong_type = {**good, "payloadType": "application/vnd.in-toto+json"}
    assert refused(rt, wrong_type).code == "OVR-001"
    tampered = {**good, "payload": base64.b64encode(canonicalize({**body(good), "reason": "other"})).decode()}
    assert refused(rt, tampered).code == "OVR-001"
    assert refused(rt, seal_envelope(RESOLUTION_TYPE, {**body(good), "reason": ""}, desk.keys["alice"])).code == "OVR-001"
    stranger = new_key_file(tmp_path / "stranger.pem")
    assert refused(rt, vote(desk, request, "alice", key=tmp_path / "stranger.pem")).code == "OVR-002"
    assert stranger.key_id not in {a.keyId for a in desk.authority.approvers}
    assert refused(rt, vote(desk, request, "alice", key=desk.key_file("bob"))).code == "OVR-002"  # bob's key, alice's name
    assert refused(rt, vote(desk, request, "alice", role="underwriter")).code == "OVR-003"  # not a role of this policy
    assert refused(rt, vote(desk, request, "uma", role="finance")).code == "OVR-003"  # uma does not hold finance
    assert refused(rt, vote(desk, request, "carol")).code == "OVR-004"  # carol asked for the payment
    before = FakeClock(clock().replace(day=14))  # the key is valid then, the request not yet open
    assert refused(rt, vote(desk, request, "alice", clock=before)).code == "OVR-005"  # cast before the request opened
    rt.submit_resolution(good)
    assert refused(rt, vote(desk, request, "alice")).code == "OVR-006"
    assert rt.override_status(att.executionId).approvals == ["alice"]


def test_revoked_and_not_yet_valid_approver_keys(desk, clock, tmp_path):
    revoked, _ = desk.authority.revoked(desk.keys["alice"].key_id, "2026-01-10T00:00:00.000Z")
    revoked.save(tmp_path / "revoked.json")
    with Runtime(desk.root / "ws2", policies=desk.policies, authority=tmp_path / "revoked.json", clock=clock) as rt:
        request = rt.override_request(rt.execute(payment()).executionId)
        error = refused(rt, vote(desk, request, "alice"))
        assert error.code == "OVR-002" and "revoked" in error.reason


def test_a_policy_without_an_override_block_cannot_be_resolved(desk, clock):
    with Runtime(desk.root / "old", policies=desk.policies, authority=desk.authority_path, clock=clock) as rt:
        pending = rt.execute(loan(version="1.0.0"))
        error = refused(rt, vote(desk, rt.override_request(pending.executionId), "uma", role="underwriter"))
        assert error.code == "OVR-003" and "no override block" in error.reason
    with Runtime(desk.root / "new", policies=desk.policies, authority=desk.authority_path, clock=clock) as rt:
        pending = rt.execute(loan())
        status = rt.submit_resolution(vote(desk, rt.override_request(pending.executionId), "uma", role="underwriter"))
        assert status.state == "approved"  # 1.2.0 authors one underwriter


def test_a_policy_may_allow_self_approval(tmp_path, clock):
    import shutil

    from .override_setup import REPO

    shutil.copytree(REPO / "sample_policies", tmp_path / "policies")
    folder = tmp_path / "policies" / "vendor-payment" / "1.2.0"
    folder.mkdir()
    doc = json.loads((tmp_path / "policies" / "vendor-payment" / "1.1.0" / "policy.json").read_text())
    doc["policyVersion"], doc["override"] = "1.2.0", {**doc["override"], "threshold": 1, "allowSelfApproval": True}
    (folder / "policy.json").write_text(json.dumps(doc))
    desk = make_desk(tmp_path)
    with Runtime(tmp_path / "ws", policies=desk.policies, authority=desk.authority_path, clock=clock) as rt:
        att = rt.execute({**payment(), "policyVersion": "1.2.0"})
        assert rt.submit_resolution(vote(desk, rt.override_request(att.executionId), "carol")).state == "approved"


def test_two_processes_with_the_deciding_votes_give_one_outcome(desk, clock, tmp_path):
    import subprocess
    import sys

    with Runtime(desk.root / "ws", policies=desk.policies, authority=desk.authority_path) as rt:
        att = rt.execute(payment(requested_by="sam"))
        request = rt.override_request(att.executionId)
        rt.submit_resolution(vote(desk, request, "alice", clock=system_clock))
    files = []
    for who in ("bob", "carol"):
        path = tmp_path / f"{who}.json"
        path.write_bytes(canonicalize(vote(desk, request, who, clock=system_clock)))
        files.append(path)
    procs = [subprocess.Popen([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(desk.root / "ws"), "--wait", "60",
                               "overrides", "submit", str(f), "--json", "--authority", str(desk.authority_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
    lines = [json.loads(p.communicate(timeout=120)[0].splitlines()[0]) for p in procs]
    assert sorted((line["accepted"], line["code"], line["state"]) for line in lines) == [
        (False, "SYS-025", "approved"), (True, None, "approved")]
    with Runtime(desk.root / "ws", policies=desk.policies, authority=desk.authority_path) as rt:
        kinds = rt.db.sql("SELECT kind, count(*) AS n FROM override_records GROUP BY kind ORDER BY kind")
        assert kinds.to_dict("records") == [{"kind": "outcome", "n": 1}, {"kind": "request", "n": 1},
                                            {"kind": "resolution", "n": 2}]


def test_the_override_panel_shows_the_request_signs_with_a_key_file_and_submits(desk, rt, clock):
    from parmana_lab.widgets import OverridePanel

    att = rt.execute(payment())
    panel = OverridePanel(rt)
    assert panel.queue.value == att.executionId and "second-approver" in panel.request.value
    assert panel.role.options == ("finance",) and "request" in panel.trail.value
    panel.approver_id.value = "carol"
    panel.key_file.value = str(desk.key_file("carol"))
    panel.reason.value = "mine"
    panel.submit()
    assert panel.error is not None and panel.error.code == "OVR-004"  # a refusal is shown, not raised
    for who in ("alice", "bob"):
        panel.approver_id.value, panel.key_file.value, panel.reason.value = who, str(desk.key_file(who)), "invoice matched"
        panel.submit()
        assert panel.error is None
    assert panel.last.state == "approved" and panel.queue.options == ()  # the queue holds pending ones only
    panel.show_all.value = True
    assert panel.queue.value == att.executionId and "approved" in panel.trail.value
    assert "PRIVATE" not in panel.request.value + panel.trail.value + repr(panel)


def test_a_damaged_override_store_is_sys_024_not_a_traceback(desk, rt):
    att = rt.execute(payment())
    request = rt.override_request(att.executionId)
    rt.db.connection.execute("UPDATE override_records SET envelope = '{\"garbled\": true}'")
    assert refused(rt, vote(desk, request, "alice")).code == "SYS-024"
    with pytest.raises(OverrideError) as info:
        rt.pending_overrides()
    assert info.value.code == "SYS-024"


def test_the_runtime_s_request_bytes_are_the_canonical_form_of_the_documented_body(desk, rt):
    """The hot path assembles the request from canonical parts; it must equal JCS of the body SPEC §18 lists."""
    from parmana_lab.dsse import seal_payload
    from parmana_lab.overrides import request_body, request_payload

    att = rt.execute({**payment(requested_by="Zoë \u00e9 \"q\" \\ \U0001f600"), "executionId": "id-\u00fc\U0001f600"})
    stored = rt.override_request(att.executionId)
    line = att.canonical()
    rule = rt.policies.get("vendor-payment", "1.1.0").override
    b = body(stored)
    documented = request_body(att.to_dict(), line, payment()["signals"], b["requestedBy"], rule, b["openedAt"], b["expiresAt"])
    assert canonicalize(documented) == base64.b64decode(stored["payload"])
    fast = request_payload(att.to_dict(), line, canonicalize(payment()["signals"]), b["requestedBy"],
                           canonicalize(rule.to_wire()), b["openedAt"], b["expiresAt"])
    assert fast == canonicalize(documented)
    assert seal_payload(REQUEST_TYPE, fast, rt._key) == canonicalize(seal_envelope(REQUEST_TYPE, documented, rt._key))
    assert b["requestedBy"].startswith("Zoë") and stock_verify(stored, rt._key)
