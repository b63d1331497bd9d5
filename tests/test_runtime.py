import json
import os
import subprocess
import sys

import duckdb
import pytest

from parmana_lab import (
    AuditStoreError,
    ExecutionAttestation,
    ParmanaError,
    PolicyError,
    ReplayError,
    RequestError,
    Runtime,
    canonical_hash,
    canonicalize,
    verify_signature,
)

from .conftest import claims_request, loan_request, write_policy


def test_execute_returns_a_committed_signed_attestation(runtime):
    att = runtime.execute(claims_request())
    assert att.decision.action == "approve" and att.execution_state == "completed"
    signals = claims_request()["signals"]
    assert att.execution_fingerprint == canonical_hash(
        {"policyId": "claims-approval", "policyVersion": "1.0.0", "signals": signals}
    )
    assert att.signalsHash == canonical_hash(signals)
    assert att.bundleHash == runtime.policies.get("claims-approval", "1.0.0").bundleHash
    assert att.runtimeHash == runtime.runtime_hash and att.evaluatorArtifactHash == runtime.evaluator_artifact_hash
    assert att.issuedAt == "2026-01-15T09:30:00.000Z"
    row = runtime.db.sql("SELECT * FROM attestations WHERE executionId = ?", [att.executionId]).iloc[0]
    assert row["canonical"] == att.canonical().decode()
    assert row["decision_action"] == "approve" and row["execution_fingerprint"] == att.execution_fingerprint
    stored = runtime.db.sql("SELECT signals FROM signals WHERE executionId = ?", [att.executionId]).iloc[0, 0]
    assert json.loads(stored) == signals
    state = runtime.db.sql("SELECT state FROM replay WHERE execution_fingerprint = ?", [att.execution_fingerprint])
    assert list(state["state"]) == ["CONFIRMED"]
    assert verify_signature(att, runtime.trust_store().get(att.signerKeyId).publicKey)


def test_pending_override_state(runtime):
    att = runtime.execute(loan_request(score=600))
    assert att.execution_state == "pending_override" and att.decision.requires_override


def test_replay_is_refused_even_after_reopening(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        first = rt.execute(claims_request())
        with pytest.raises(ReplayError) as info:
            rt.execute({**claims_request(), "executionId": "another-id"})
    assert str(info.value) == (
        f"[INV-013@replay] Replay detected: execution_fingerprint {first.execution_fingerprint} has already been consumed"
    )
    clock.advance(10 * 86400)
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        with pytest.raises(ReplayError) as info:
            rt.execute(claims_request())
        assert info.value.code == "INV-013"
        assert rt.db.count("attestations") == 1
        refusals = rt.db.refusals()
    assert list(refusals["code"]) == ["INV-013", "INV-013"]
    assert set(refusals["input_hash"]) == {first.execution_fingerprint}


def test_same_request_same_decision_and_fingerprint_on_every_run(tmp_path, policy_dir, clock):
    seen = set()
    for n in range(3):
        with Runtime(tmp_path / f"ws{n}", policies=policy_dir, clock=clock) as rt:
            att = rt.execute(loan_request(score=655))
            seen.add((att.execution_fingerprint, att.signalsHash, att.bundleHash, att.decision.model_dump_json()))
    assert len(seen) == 1


def test_a_live_reservation_blocks_and_an_expired_one_can_be_retried(runtime, clock):
    from parmana_lab import audit

    fp = canonical_hash({"policyId": "claims-approval", "policyVersion": "1.0.0", "signals": claims_request()["signals"]})
    # a crashed process left this reservation behind
    audit.reserve(runtime.db, [(fp, "crashed-run", ("claims-approval", "1.0.0"))], {}, [], now=clock(), ttl=300)
    clock.advance(299)
    with pytest.raises(ReplayError) as info:
        runtime.execute(claims_request())
    assert info.value.code == "INV-014" and "in progress" in info.value.reason
    clock.advance(2)
    att = runtime.execute(claims_request())
    assert att.execution_fingerprint == fp


def test_failure_after_reservation_marks_failed_and_is_retryable(runtime, clock):
    runtime.execute(claims_request(risk_score=10))
    # break only the second transaction: the signals table disappears after reservation
    runtime.db.connection.execute("ALTER TABLE signals RENAME TO signals_gone")
    with pytest.raises(AuditStoreError) as info:
        runtime.execute({**claims_request(), "executionId": "fresh-id"})
    assert info.value.code == "AUD-006" and "nothing was returned" in info.value.reason
    runtime.db.connection.execute("ALTER TABLE signals_gone RENAME TO signals")
    fp = canonical_hash({"policyId": "claims-approval", "policyVersion": "1.0.0", "signals": claims_request()["signals"]})
    assert runtime.db.sql("SELECT state FROM replay WHERE execution_fingerprint = ?", [fp]).iloc[0, 0] == "FAILED"
    assert runtime.db.sql("SELECT count(*) FROM attestations WHERE executionId = 'fresh-id'").iloc[0, 0] == 0
    with pytest.raises(ReplayError, match="INV-014"):
        runtime.execute(claims_request())
    clock.advance(31)
    assert runtime.execute(claims_request()).execution_fingerprint == fp


def test_execution_id_is_unique(runtime):
    runtime.execute({**claims_request(), "executionId": "exec-1"})
    with pytest.raises(ReplayError) as info:
        runtime.execute({**loan_request(), "executionId": "exec-1"})
    assert info.value.code == "INV-015"


def test_no_replay_store_refuses_to_execute(runtime):
    runtime.db.close()
    with pytest.raises(ReplayError) as info:
        runtime.execute(claims_request())
    assert info.value.code == "INV-REPLAY-001" and "execution refused" in info.value.reason


def test_damaged_replay_store_refuses_to_execute(runtime):
    runtime.db.connection.execute("DROP TABLE replay")
    with pytest.raises(ReplayError) as info:
        runtime.execute(claims_request())
    assert info.value.code == "INV-REPLAY-001"


def test_no_rule_matched_is_refused_and_recorded(runtime, policy_dir):
    doc = json.loads((policy_dir / "loan-approval" / "1.0.0" / "policy.json").read_text())
    doc["policyVersion"] = "3.0.0"
    doc["rules"] = doc["rules"][:2]
    write_policy(policy_dir, doc)
    with pytest.raises(ParmanaError) as info:
        runtime.execute(loan_request(score=600, version="3.0.0"))
    assert info.value.code == "SYS-006" and info.value.stage == "execute"
    assert list(runtime.db.refusals()["code"]) == ["SYS-006"]
    assert runtime.db.count("replay") == 0  # nothing reserved for a refusal


def test_a_policy_edited_under_the_same_version_is_refused(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute(loan_request())
    path = policy_dir / "loan-approval" / "1.0.0" / "policy.json"
    doc = json.loads(path.read_text())
    doc["rules"][1]["condition"]["greater_than"] = 600
    path.write_text(json.dumps(doc))
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        with pytest.raises(PolicyError) as info:
            rt.execute(loan_request(score=650))
        assert info.value.code == "POL-022" and "new version" in info.value.reason
        assert rt.db.count("attestations") == 1


def test_at_most_two_transactions_per_execution(runtime):
    before = runtime.db.transactions
    runtime.execute(claims_request())
    assert runtime.db.transactions - before == 2
    before = runtime.db.transactions
    with pytest.raises(ReplayError):
        runtime.execute(claims_request())
    assert runtime.db.transactions - before == 1
    before = runtime.db.transactions
    with pytest.raises(ParmanaError):
        runtime.execute({"policyId": "nope"})
    assert runtime.db.transactions - before == 1


def test_execute_many_keeps_order_and_batches_transactions(runtime):
    requests = [loan_request(score=s) for s in range(300, 900)]
    requests.insert(5, {"policyId": "loan-approval"})  # invalid
    requests.insert(10, loan_request(score=300))  # duplicate of the first
    before = runtime.db.transactions
    results = runtime.execute_many(requests)
    assert runtime.db.transactions - before == 2
    assert len(results) == len(requests)
    assert isinstance(results[5], ParmanaError) and results[5].code == "VAL-002"
    assert isinstance(results[10], ReplayError) and results[10].code == "INV-013"
    atts = [r for r in results if isinstance(r, ExecutionAttestation)]
    assert len(atts) == 600
    assert [a.decision.action for a in atts[:3]] == ["reject"] * 3
    stored = runtime.db.sql("SELECT executionId FROM attestations ORDER BY seq")["executionId"].tolist()
    assert stored == [a.executionId for a in atts]
    assert runtime.db.count("refusals") == 2


def test_execute_many_chunks_commit_separately(runtime):
    results = list(runtime.iter_execute([loan_request(score=s) for s in range(400, 450)], chunk_size=20))
    assert len(results) == 50 and runtime.db.count() == 50


def test_execute_many_refuses_one_request_given_as_the_list(runtime):
    for wrong in (loan_request(), None, b"{}"):
        with pytest.raises(RequestError) as info:
            runtime.execute_many(wrong)
        assert info.value.code == "VAL-001" and "use execute" in info.value.reason
    assert runtime.db.count() == 0 and runtime.db.count("refusals") == 0


def test_request_given_as_json_text(runtime):
    att = runtime.execute(json.dumps(claims_request(risk_score=5)))
    assert att.decision.action == "approve"
    with pytest.raises(ParmanaError) as info:
        runtime.execute(b'{"policyId": 1e400}')
    assert info.value.code in ("VAL-001", "VAL-002")


def test_audit_db_is_real_duckdb_queryable_from_outside(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute_many([loan_request(score=s) for s in (450, 600, 750)])
    con = duckdb.connect(str(tmp_path / "ws" / "audit.duckdb"), read_only=True)
    rows = con.execute("SELECT decision_action, count(*) FROM attestations GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("approve", 1), ("manual_review", 1), ("reject", 1)]
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchall() == [(5,)]
    for (text,) in con.execute("SELECT canonical FROM attestations").fetchall():
        att = ExecutionAttestation.model_validate_json(text)
        assert canonicalize(att.model_dump()).decode() == text
    con.close()


def test_second_process_gets_a_clear_in_use_error(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock):
        out = subprocess.run(
            [sys.executable, "-m", "parmana_lab.cli", "--workspace", str(tmp_path / "ws"), "run", "--policies", str(policy_dir),
             os.devnull],
            capture_output=True, text=True,
        )
    assert out.returncode == 2
    assert "[AUD-001@audit]" in out.stderr and "in use by another process" in out.stderr
    assert "Traceback" not in out.stderr


def test_not_a_database_file(tmp_path, policy_dir):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "audit.duckdb").write_text("this is not a database")
    with pytest.raises(AuditStoreError) as info:
        Runtime(tmp_path / "ws", policies=policy_dir)
    assert info.value.code in ("AUD-002", "AUD-004")
