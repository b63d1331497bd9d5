"""Decision trails in exported archives, checked offline; each forgery an insider could make fails with its code.

The forger holds the runtime's key (so the manifest is re-signed and archive-level checks pass) but no approver's:
what stands between them and a forged approval is the approvers' signatures and the policy's authored rules.
"""

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from parmana_lab import Runtime, reproduce, verify_archive
from parmana_lab.archive import manifest_message
from parmana_lab.canonical import canonicalize, parse_json
from parmana_lab.dsse import envelope_hash, seal_envelope
from parmana_lab.keys import new_key_file
from parmana_lab.overrides import OUTCOME_TYPE, RESOLUTION_TYPE, sign_resolution

from .conftest import FakeClock
from .override_setup import REPO, make_desk, payment

ACCESS = {"policyId": "access-request", "policyVersion": "1.1.0",
          "signals": {"role": "engineer", "mfa_enabled": True, "resource_sensitivity": "restricted", "hours_requested": 2}}


class Later:
    """A clock a fixed time after another: approvers sign a little after the runtime asked."""

    def __init__(self, clock, minutes=1):
        self.clock, self.minutes = clock, minutes

    def __call__(self):
        return self.clock() + timedelta(minutes=self.minutes)


@pytest.fixture(scope="module")
def trails(tmp_path_factory):
    root = tmp_path_factory.mktemp("trails")
    desk = make_desk(root)
    clock = FakeClock()
    later = Later(clock)
    ids = {}

    def vote(request, who, decision="approve"):
        return sign_resolution(request, desk.key_file(who), approver_id=who, role="security" if who == "sam" else "finance",
                               decision=decision, reason=f"{who} decided", clock=later)

    with Runtime(root / "ws", policies=desk.policies, authority=desk.authority_path, clock=clock) as rt:
        ids["expired"] = rt.execute(ACCESS).executionId
        for name, amount in (("approved", 5_000_000), ("rejected", 6_000_000), ("pending", 7_000_000)):
            ids[name] = rt.execute(payment(amount=amount)).executionId
        ids["completed"] = rt.execute(payment(amount=900)).executionId
        a, r, p = (rt.override_request(ids[k]) for k in ("approved", "rejected", "pending"))
        rt.submit_resolution(vote(a, "alice"))
        rt.submit_resolution(vote(a, "bob"))
        rt.submit_resolution(vote(r, "bob", "reject"))
        rt.submit_resolution(vote(p, "alice"))
        clock.advance(9 * 3600)  # the access request (8 hours) expires; the payments (3 days) stay open
        assert [s.state for s in rt.pending_overrides()] == ["pending"]
        archive = Path(rt.export_archive(root / "archive").path)
        store = rt.trust_store()
        key = rt._key
        lines = {k: rt.override_trail(v).records for k, v in ids.items() if k != "completed"}
    return desk, archive, store, key, ids, lines


def reseal(folder, key):
    manifest = json.loads((folder / "manifest.json").read_bytes())
    manifest["files"]["overrides.jsonl"] = hashlib.sha256((folder / "overrides.jsonl").read_bytes()).hexdigest()
    manifest["signature"] = base64.b64encode(key.sign(manifest_message(manifest))).decode()
    (folder / "manifest.json").write_bytes(canonicalize(manifest))


def forged(trails, tmp_path, edit):
    """A copy of the archive with overrides.jsonl edited by ``edit(list of envelopes)`` and the manifest re-signed."""
    desk, archive, store, key, ids, _ = trails
    copy = tmp_path / "forged"
    shutil.copytree(archive, copy)
    envelopes = [parse_json(line) for line in (copy / "overrides.jsonl").read_bytes().splitlines()]
    envelopes = edit(envelopes)
    (copy / "overrides.jsonl").write_bytes(b"".join(canonicalize(e) + b"\n" for e in envelopes))
    reseal(copy, key)
    report = verify_archive(copy, store, progress=False, authority=desk.authority_path)
    assert report.summary.archive_codes == []  # the insider's archive is whole: only the trails can give it away
    return {r.executionId: r for r in report.results()}


def body(envelope):
    return parse_json(base64.b64decode(envelope["payload"]))


def is_vote(envelope, execution_id, who=None):
    b = body(envelope)
    return envelope["payloadType"] == RESOLUTION_TYPE and b["executionId"] == execution_id and who in (None, b["approverId"])


def test_an_archive_with_decision_trails_verifies_and_reports_each_resolution(trails):
    desk, archive, store, _, ids, _ = trails
    report = verify_archive(archive, store, progress=False, authority=desk.authority_path)
    assert report.status == "verified", report.failures()
    assert report.summary.overrides == {"approved": 1, "expired": 1, "pending": 1, "rejected": 1}
    states = {r.executionId: r.override for r in report.results()}
    assert states == {ids["approved"]: "approved", ids["rejected"]: "rejected", ids["pending"]: "pending",
                      ids["expired"]: "expired", ids["completed"]: None}
    assert set(report.to_pandas()["override_state"].dropna()) == {"approved", "rejected", "pending", "expired"}
    without = verify_archive(archive, store, progress=False)  # no authority file: approvers cannot be checked
    assert {r.checks["override"] for r in without.results()} == {"not_checkable"} and without.summary.overrides == {}


def test_the_cli_json_carries_each_resolution(trails):
    desk, archive, store, _, ids, _ = trails
    trust = archive.parent / "trust.json"
    trust.write_text(store.to_json())
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "verify", str(archive), "--trust", str(trust), "--authority",
                          str(desk.authority_path), "--json"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    by_id = {x["executionId"]: x.get("override") for x in lines if "line" in x}
    assert by_id[ids["approved"]] == "approved" and by_id[ids["completed"]] is None
    assert lines[-2]["archive"]["overrides"] == {"approved": 1, "expired": 1, "pending": 1, "rejected": 1}


def test_a_counted_vote_removed(trails, tmp_path):
    _, _, _, _, ids, _ = trails
    results = forged(trails, tmp_path, lambda es: [e for e in es if not is_vote(e, ids["approved"], "bob")])
    assert results[ids["approved"]].code == "OVERRIDE_THRESHOLD_NOT_MET"
    assert results[ids["rejected"]].code == "VERIFIED"


def test_a_vote_re_signed_by_a_key_not_in_the_authority_file(trails, tmp_path):
    _, _, _, _, ids, _ = trails
    stranger = new_key_file(tmp_path / "stranger.pem")
    results = forged(trails, tmp_path, lambda es: [seal_envelope(RESOLUTION_TYPE, body(e), stranger)
                                                   if is_vote(e, ids["approved"], "alice") else e for e in es])
    assert results[ids["approved"]].code == "OVERRIDE_UNAUTHORIZED"


def test_a_vote_by_the_requester(trails, tmp_path):
    desk, _, _, _, ids, lines = trails
    request = lines["pending"][0].envelope
    own = sign_resolution(request, desk.key_file("carol"), approver_id="carol", role="finance", decision="approve",
                          reason="my own payment", clock=Later(FakeClock(), 2))
    results = forged(trails, tmp_path, lambda es: [*es, own])
    assert results[ids["pending"]].code == "OVERRIDE_SELF_APPROVED"


def test_an_outcome_added_for_a_completed_execution(trails, tmp_path):
    _, _, _, key, ids, lines = trails
    fake = {**lines["approved"][-1].body, "executionId": ids["completed"]}
    results = forged(trails, tmp_path, lambda es: [*es, seal_envelope(OUTCOME_TYPE, fake, key)])
    assert results[ids["completed"]].code == "OVERRIDE_CONFLICT"


def test_a_second_outcome_for_one_fingerprint(trails, tmp_path):
    _, _, _, key, ids, lines = trails
    votes = [r for r in lines["approved"] if r.kind == "resolution"]
    second = {**lines["approved"][-1].body, "outcome": "rejected", "resolutionHashes": []}
    results = forged(trails, tmp_path, lambda es: [*es, seal_envelope(OUTCOME_TYPE, second, key)])
    assert results[ids["approved"]].code == "OVERRIDE_CONFLICT" and len(votes) == 2


def test_a_vote_for_another_execution_pasted_in(trails, tmp_path):
    desk, _, _, _, ids, lines = trails
    other = next(r for r in lines["rejected"] if r.kind == "resolution")
    pasted = seal_envelope(RESOLUTION_TYPE, {**other.body, "executionId": ids["pending"], "decision": "approve"},
                           desk.keys["bob"])  # bob's own key: a valid approver, voting on the wrong thing
    results = forged(trails, tmp_path, lambda es: [*es, pasted])
    assert results[ids["pending"]].code == "OVERRIDE_LINEAGE_MISMATCH"


def test_an_outcome_with_a_broken_signature_and_an_unreadable_line(trails, tmp_path):
    desk, archive, store, key, ids, lines = trails
    target = envelope_hash(lines["approved"][-1].envelope)

    def flip(es):
        out = []
        for e in es:
            if envelope_hash(e) == target:
                sig = base64.b64decode(e["signatures"][0]["sig"])
                e = {**e, "signatures": [{"keyid": e["signatures"][0]["keyid"],
                                          "sig": base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()}]}
            out.append(e)
        return out

    results = forged(trails, tmp_path, flip)
    assert results[ids["approved"]].code == "OVERRIDE_SIGNATURE_INVALID"
    copy = tmp_path / "garbled"
    shutil.copytree(archive, copy)
    with open(copy / "overrides.jsonl", "ab") as fh:
        fh.write(b"not an envelope\n")
    reseal(copy, key)
    report = verify_archive(copy, store, progress=False, authority=desk.authority_path)
    assert report.summary.archive_codes == ["OVERRIDES_MALFORMED"] and report.status == "failed"


def test_reproduce_reports_overrides_with_the_decision_that_required_them(trails):
    _, archive, _, _, ids, _ = trails
    report = reproduce(archive)
    df = report.to_pandas().set_index("executionId")
    assert df.loc[ids["approved"], "override"] == "approved" and pd.isna(df.loc[ids["completed"], "override"])
    assert df.loc[ids["approved"], "attested"] == "hold by second-approver (pending_override)"
    assert report.summary.overrides == {"approved": 1, "expired": 1, "pending": 1, "rejected": 1}
    assert report.summary.all_match
    with_db = reproduce(archive.parent / "ws" / "audit.duckdb").summary.overrides
    assert with_db == report.summary.overrides


def test_reproduce_reads_the_same_resolutions_the_verifier_checked(trails):
    desk, archive, store, _, _, _ = trails
    states = {r.executionId: r.override for r in verify_archive(archive, store, progress=False, authority=desk.authority_path).results()}
    assert {row["executionId"]: row["override"] for row in reproduce(archive).rows} == states
