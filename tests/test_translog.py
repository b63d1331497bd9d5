"""The runtime's transparency log on a real audit DB: checkpoints, proofs, tampering, the witness, archives."""

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from parmana_lab import Runtime, canonicalize
from parmana_lab.archive import manifest_message
from parmana_lab.keys import SigningKey, load_key_file, new_key_file
from parmana_lab.logverify import verify_checkpoint, verify_consistency, verify_inclusion, verify_log_file
from parmana_lab.merkle import MerkleBuilder
from parmana_lab.notes import checkpoint_text, parse_checkpoint, sign_note
from parmana_lab.translog import LogError
from parmana_lab.verify import verify_archive
from parmana_lab.witness import WitnessError, cosign, witness_vkey

from .conftest import REPO, claims_request, loan_request


def requests(n, offset=0):
    return [loan_request(score=300 + (i + offset) % 500, amount=1_000 + i + offset) for i in range(n)]


def cli(*args):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_every_proof_of_a_real_log_up_to_70_verifies_offline(tmp_path, policy_dir, clock):
    checkpoints, ids = [], []
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        for request in requests(70):
            ids.append(rt.execute(request).executionId)
            checkpoints.append(rt.log.checkpoint())
            clock.advance(1)
        trust = rt.trust_store()
        assert rt.log.info().size == 70 and checkpoints[-1].size == 70
        for size, cp in enumerate(checkpoints, start=1):
            assert verify_checkpoint(cp.render(), trust).valid
            for index in range(size):
                verdict = verify_inclusion(rt.log.prove(ids[index], cp).render(), trust)
                assert verdict.valid and (verdict.index, verdict.size, verdict.executionId) == (index, size, ids[index]), verdict
            for old in checkpoints[:size]:
                body = rt.log.prove_consistency(old, cp).render()
                assert verify_consistency(body, old.render(), trust).valid


def test_full_export_root_is_the_log_root_and_carries_its_checkpoint(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(37))
        result = rt.export_archive(tmp_path / "a.zip", format="zip")
        info, trust = rt.log.info(), rt.trust_store()
        filtered = rt.export_archive(tmp_path / "filtered", policy_id="loan-approval", since="2026-01-01")
    assert result.merkleRoot == info.root and result.count == info.size == 37
    report = verify_archive(tmp_path / "a.zip", trust, progress=False)
    assert report.status == "verified" and report.archive_checks == []
    # a filter that selects the whole log exports the log itself: its checkpoint, no per-line proofs needed
    part = Path(filtered.path)
    assert parse_checkpoint((part / "checkpoint").read_bytes()).size == 37 and filtered.count == 37
    assert not (part / "log-proofs.jsonl").exists()
    assert verify_archive(part, trust, progress=False).status == "verified"


def test_a_filtered_export_proves_each_line_is_in_the_log(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(6))
        clock.advance(3600)
        rt.execute_many([claims_request(), claims_request(risk_score=5)])
        clock.advance(3600)
        rt.execute_many(requests(5, offset=6))
        part = Path(rt.export_archive(tmp_path / "claims", policy_id="claims-approval").path)
        trust = rt.trust_store()
        key = rt._key
    proofs = [json.loads(x) for x in (part / "log-proofs.jsonl").read_text().splitlines()]
    assert [p["index"] for p in proofs] == [6, 7]
    assert verify_archive(part, trust, progress=False).status == "verified"
    # a record that was never logged, signed with the runtime's key, with the manifest re-signed: the proof catches it
    forged = tmp_path / "forged"
    shutil.copytree(part, forged)
    lines = (forged / "attestations.jsonl").read_bytes().splitlines()
    att = json.loads(lines[1])
    att["executionId"] = "00000000-0000-4000-8000-000000000000"
    from parmana_lab.attestation import seal

    _, lines[1] = seal({k: v for k, v in att.items() if k != "signature"}, key)
    signals = (forged / "signals.jsonl").read_bytes().splitlines()
    sig = json.loads(signals[1])
    sig["executionId"] = att["executionId"]
    signals[1] = canonicalize(sig)
    for name, rows in (("attestations.jsonl", lines), ("signals.jsonl", signals)):
        (forged / name).write_bytes(b"\n".join(rows) + b"\n")
    manifest = json.loads((forged / "manifest.json").read_bytes())
    for name in ("attestations.jsonl", "signals.jsonl"):
        manifest["files"][name] = hashlib.sha256((forged / name).read_bytes()).hexdigest()
    merkle = MerkleBuilder()
    merkle.add_many(lines)
    manifest["merkleRoot"] = merkle.root()
    manifest["signature"] = base64.b64encode(key.sign(manifest_message(manifest))).decode()
    (forged / "manifest.json").write_bytes(canonicalize(manifest))
    report = verify_archive(forged, trust, progress=False)
    assert report.summary.archive_codes == ["INCLUSION_PROOF_INVALID"] and report.summary.failed == 0
    assert report.archive_checks[0].lines == "2"


def _rewrite_archive(archive: Path, key: SigningKey, line_index: int) -> None:
    """What an operator holding the runtime key could do: drop an inconvenient record and re-sign the manifest."""
    def drop(name: str) -> bytes:
        lines = (archive / name).read_bytes().splitlines()
        del lines[line_index]
        data = b"\n".join(lines) + b"\n"
        (archive / name).write_bytes(data)
        return data

    data, signals = drop("attestations.jsonl"), drop("signals.jsonl")
    (archive / "checkpoint").unlink()
    manifest = json.loads((archive / "manifest.json").read_bytes())
    manifest["files"].pop("checkpoint")
    manifest["files"]["attestations.jsonl"] = hashlib.sha256(data).hexdigest()
    manifest["files"]["signals.jsonl"] = hashlib.sha256(signals).hexdigest()
    merkle = MerkleBuilder()
    merkle.add_many(data.splitlines())
    manifest["merkleRoot"], manifest["count"] = merkle.root(), merkle.count
    manifest["signature"] = base64.b64encode(key.sign(manifest_message(manifest))).decode()
    (archive / "manifest.json").write_bytes(canonicalize(manifest))


def test_rewritten_history_is_refused_by_the_runtime_and_caught_by_an_old_checkpoint(tmp_path, policy_dir, clock):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(10))
        old = rt.log.checkpoint()
        rt.execute_many(requests(5, offset=10))
        archive = Path(rt.export_archive(tmp_path / "archive").path)
        trust = rt.trust_store()
    (tmp_path / "old.checkpoint").write_text(old.render())
    key = next(load_key_file(p) for p in (ws / "keys").glob("*.pem"))
    # an archive with a record removed, re-signed throughout: it verifies, but not against the older checkpoint
    forged = tmp_path / "forged"
    shutil.copytree(archive, forged)
    _rewrite_archive(forged, key, 3)
    assert verify_archive(forged, trust, progress=False).status == "verified"
    report = verify_archive(forged, trust, progress=False, checkpoint=old.render())
    assert report.summary.archive_codes == ["HISTORY_INCONSISTENT"]
    assert verify_archive(archive, trust, progress=False, checkpoint=old.render()).status == "verified"
    out = cli("verify", forged, "--trust", ws / "keys" / "trust.json", "--checkpoint", tmp_path / "old.checkpoint")
    assert out.returncode == 1 and "HISTORY_INCONSISTENT" in out.stdout
    # records edited in the audit DB behind the runtime's back: after the latest checkpoint, and before it
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(3, offset=15))  # leaves 15-17, after the export's checkpoint of 15
        early = rt.db.sql("SELECT executionId FROM attestations WHERE log_index = 2").iloc[0, 0]
    for index in (16, 2):
        with duckdb.connect(str(ws / "audit.duckdb")) as con:
            line = con.execute("SELECT canonical FROM attestations WHERE log_index = ?", [index]).fetchall()[0][0]
            con.execute("UPDATE attestations SET canonical = ? WHERE log_index = ?",
                        [line.replace('"reason":"', '"reason":"x', 1), index])
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        with pytest.raises(LogError) as info:
            rt.log.checkpoint()  # the records since the last checkpoint are rehashed before signing
        assert info.value.code == "LOG-002" and "record 16" in info.value.reason
        with pytest.raises(LogError) as info:
            rt.log.prove(early, old)  # an older record: caught where it is used
        assert info.value.code == "LOG-002" and "edited" in info.value.reason
        with pytest.raises(LogError) as info:
            rt.export_archive(tmp_path / "after-edit")
        assert info.value.code == "LOG-002" and not (tmp_path / "after-edit").exists()  # nothing written
    out = cli("--workspace", ws, "log", "checkpoint")
    assert out.returncode == 2 and "[LOG-002@log]" in out.stderr and out.stdout == ""


def test_deleted_rows_and_rewritten_subtrees_are_refused(tmp_path, policy_dir, clock):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(8))
        rt.log.checkpoint()
    deleted = tmp_path / "deleted"
    shutil.copytree(ws, deleted)
    with duckdb.connect(str(deleted / "audit.duckdb")) as con:
        con.execute("DELETE FROM attestations WHERE log_index = 2")
    with Runtime(deleted, policies=policy_dir, clock=clock) as rt, pytest.raises(LogError) as info:
        rt.log.checkpoint()
    assert info.value.code == "LOG-002" and "deleted" in info.value.reason
    with duckdb.connect(str(ws / "audit.duckdb")) as con:  # a whole consistent rewrite of the subtree hashes
        con.execute("UPDATE log_nodes SET hash = sha256('forged')::BLOB WHERE level = 3")
    with Runtime(ws, policies=policy_dir, clock=clock) as rt, pytest.raises(LogError) as info:
        rt.log.checkpoint()
    assert info.value.code == "LOG-003"


def test_single_byte_changes_to_a_checkpoint_and_a_proof_are_refused(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        atts = rt.execute_many(requests(13))
        cp = rt.log.checkpoint().render().encode()
        proof = rt.log.prove(atts[6].executionId).render().encode()
        trust = rt.trust_store()
    assert verify_checkpoint(cp, trust).valid and verify_inclusion(proof, trust).valid
    for data, check in ((cp, lambda d: verify_checkpoint(d, trust)), (proof, lambda d: verify_inclusion(d, trust))):
        for i in range(len(data)):
            for change in (0x01, 0x20):
                bad = data[:i] + bytes([data[i] ^ change]) + data[i + 1:]
                assert not check(bad).valid, (i, bad[max(0, i - 10):i + 10])
    other = atts[7].canonical()
    verdict = verify_inclusion(proof, trust, attestation=other)
    assert not verdict.valid and verdict.code == "LEAF_MISMATCH"


def test_log_verify_cli_exit_codes(tmp_path, policy_dir, clock):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        att = rt.execute(claims_request())
        rt.execute(loan_request())
    trust = ws / "keys" / "trust.json"
    assert cli("--workspace", ws, "log", "prove", att.executionId, "--out", tmp_path / "p").returncode == 2  # no checkpoint yet
    assert cli("--workspace", ws, "log", "checkpoint", "--out", tmp_path / "cp").returncode == 0
    assert cli("--workspace", ws, "log", "prove", att.executionId, "--out", tmp_path / "p").returncode == 0
    ok = cli("log", "verify", tmp_path / "p", "--trust", trust, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[0])["executionId"] == att.executionId
    text = (tmp_path / "p").read_text().replace("index 0", "index 1")
    (tmp_path / "bad").write_text(text)
    bad = cli("log", "verify", tmp_path / "bad", "--trust", trust)
    assert bad.returncode == 1 and "INCLUSION_PROOF_INVALID" in bad.stdout
    other = tmp_path / "other.json"
    with Runtime(tmp_path / "other", policies=policy_dir) as rt2:
        other.write_text(rt2.trust_store().to_json())
    wrong = cli("log", "verify", tmp_path / "cp", "--trust", other)
    assert wrong.returncode == 1 and "ORIGIN_MISMATCH" in wrong.stdout
    assert cli("log", "verify", tmp_path / "nowhere", "--trust", trust).returncode == 2
    assert cli("--workspace", ws, "log", "prove", "no-such-id", "--out", tmp_path / "x").returncode == 2


def test_the_witness_cosigns_a_growing_log_and_refuses_forks(tmp_path, policy_dir, clock):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        rt.execute_many(requests(5))
        cp5 = rt.log.checkpoint()
        rt.execute_many(requests(4, offset=5))
        cp9 = rt.log.checkpoint()
        proof = rt.log.prove_consistency(cp5).render()
        trust = rt.trust_store()
    wkey = new_key_file(tmp_path / "witness.pem")
    assert (tmp_path / "witness.pem").stat().st_mode & 0o777 == 0o600
    name, state = "example.org/witness", tmp_path / "state"
    vkey = witness_vkey(wkey, name)
    first = cosign(cp5.render(), wkey, name, state, trust, clock=clock)
    assert verify_checkpoint(first.render(), trust, witnesses=[vkey], min_witnesses=1).valid
    with pytest.raises(WitnessError) as info:
        cosign(cp9.render(), wkey, name, state, trust, clock=clock)  # grew, no proof
    assert info.value.code == "WITNESS_INCONSISTENT"
    second = cosign(cp9.render(), wkey, name, state, trust, proof=proof, clock=clock)
    assert verify_checkpoint(second.render(), trust, witnesses=[vkey], min_witnesses=1).witnesses == 1
    with pytest.raises(WitnessError) as info:
        cosign(cp5.render(), wkey, name, state, trust, clock=clock)
    assert info.value.code == "WITNESS_STALE"
    # a fork: the log's own key signs another root at the same size
    key = next(load_key_file(p) for p in (ws / "keys").glob("*.pem"))
    fork = sign_note(checkpoint_text(cp9.origin, 9, hashlib.sha256(b"fork").digest()), cp9.origin, key).render()
    assert verify_checkpoint(fork, trust).valid  # signed by the log: only the witness's memory catches it
    with pytest.raises(WitnessError) as info:
        cosign(fork, wkey, name, state, trust, clock=clock)
    assert info.value.code == "WITNESS_INCONSISTENT" and "forked" in info.value.reason
    assert parse_checkpoint((next(state.iterdir())).read_bytes()).root == cp9.root  # state unchanged by refusals
    assert not verify_checkpoint(cp9.render(), trust, witnesses=[vkey], min_witnesses=1).valid  # not cosigned: K unmet
    # on the command line a refusal to cosign is a finding (exit 1), an unusable checkpoint is input that cannot be used (2)
    (tmp_path / "cp5").write_text(cp5.render())
    (tmp_path / "bad").write_text("not a checkpoint\n")
    trust_file = ws / "keys" / "trust.json"
    base = ("log", "cosign", "--key", tmp_path / "witness.pem", "--name", name, "--state", state, "--trust", trust_file)
    stale = cli(*base[:2], tmp_path / "cp5", *base[2:])
    assert stale.returncode == 1 and "[WITNESS_STALE@witness]" in stale.stderr
    assert cli(*base[:2], tmp_path / "bad", *base[2:]).returncode == 2
    assert verify_log_file(second.render().encode(), trust).valid


def test_imported_records_are_not_leaves_and_a_v2_db_gets_its_log(tmp_path, policy_dir, clock):
    from parmana_lab.imports import import_archive

    with Runtime(tmp_path / "a", policies=policy_dir, clock=clock) as a:
        a.execute_many(requests(3))
        archive = a.export_archive(tmp_path / "a-archive").path
        trust_a = a.trust_store()
    with Runtime(tmp_path / "b", policies=policy_dir, clock=clock) as b:
        b.execute_many(requests(2, offset=3))
        import_archive(archive, b.db, trust_a)
        imported = b.db.sql("SELECT executionId FROM attestations WHERE import_status IS NOT NULL").iloc[0, 0]
        b.execute(claims_request())
        assert b.log.info().size == 3  # its own two and one more; the three imported are a's log
        b.log.checkpoint()
        with pytest.raises(LogError) as info:
            b.log.prove(imported)
        assert info.value.code == "LOG-001" and "imported" in info.value.reason
        assert b.export_archive(tmp_path / "b-archive").count == 6  # with imports: not the log, so no checkpoint
    assert not (tmp_path / "b-archive" / "checkpoint").exists()


def test_single_executions_keep_the_log_whole_around_imports_and_your_own_sql(tmp_path, policy_dir, clock):
    """One execution at a time reads nothing of the log (the audit DB keeps where it ends); an import, or SQL of your
    own through the connection, makes the next one read it again. Every record, root and proof stays exact."""
    from parmana_lab.imports import import_archive

    with Runtime(tmp_path / "other", policies=policy_dir, clock=clock) as other:
        other.execute_many(requests(4, offset=100))
        archive = other.export_archive(tmp_path / "other.zip", format="zip").path
        foreign = other.trust_store()
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        mine = [rt.execute(r) for r in requests(5)]
        import_archive(archive, rt.db, foreign)  # four more rows (not leaves of this log), between two executions
        mine += [rt.execute(r) for r in requests(3, offset=5)]
        rt.db.connection.execute("CREATE TABLE notes AS SELECT 1 AS x")  # your own SQL
        mine += [rt.execute(r) for r in requests(2, offset=8)]
        seqs = rt.db.sql("SELECT seq, log_index, executionId FROM attestations ORDER BY seq")
        checkpoint = rt.log.checkpoint()
        trust = rt.trust_store()
        proofs = [rt.log.prove(a.executionId, checkpoint).render() for a in mine]
    assert list(seqs["seq"]) == list(range(1, 15))  # no seq reused or skipped across the import
    assert sorted(seqs["log_index"].dropna().astype(int)) == list(range(10))
    expected = MerkleBuilder()
    for a in mine:
        expected.add(a.canonical())
    assert checkpoint.size == 10 and checkpoint.root.hex() == expected.root()
    assert all(verify_inclusion(p, trust).valid for p in proofs)
