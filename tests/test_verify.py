"""Every reason code, each produced by a real archive the test builds and then damages."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parmana_lab import KeyStoreError, Runtime, TrustStore, canonicalize
from parmana_lab.attestation import seal
from parmana_lab.imports import import_archive
from parmana_lab.verify import CHECKS, verify_archive, verify_attestation

from .conftest import claims_request, loan_request, sample_requests


def lines(path: Path) -> list[bytes]:
    return (path / "attestations.jsonl").read_bytes().splitlines()


def write_lines(path: Path, items: list[bytes]) -> None:
    (path / "attestations.jsonl").write_bytes(b"".join(x + b"\n" for x in items))


def copy(src: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def verify(path, store, **kw):
    return verify_archive(path, store, progress=False, **kw)


def row_codes(report) -> list[str]:
    return report.to_pandas()["code"].tolist()


def test_clean_archive_of_every_sample_policy_verifies(exported):
    path, store = exported
    report = verify(path, store)
    df = report.to_pandas()
    assert len(df) == len(sample_requests()) == 15
    assert set(df["policyId"]) == {"loan-approval", "claims-approval", "vendor-payment", "access-request"}
    assert report.status == "verified" and report.archive_checks == []
    assert set(df["code"]) == {"VERIFIED"}
    assert all((df[c] == "verified").all() for c in CHECKS if c not in ("authorship", "override"))
    assert (df["authorship"] == "not_checkable").all() and (df["override"] == "not_checkable").all() and report.summary.authorship == "authorship not checked"
    assert report.summary.verified == 15 and report.failures() == []


def test_every_result_explains_itself(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    att = json.loads(items[0])
    att["decision"]["action"] = "approve" if att["decision"]["action"] != "approve" else "reject"
    items[0] = canonicalize(att)
    write_lines(bad, items)
    report = verify(bad, store)
    (failure,) = report.failures()
    assert failure.code == "SIGNATURE_INVALID" and failure.line == 1
    assert failure.expected and failure.observed and failure.hint
    assert failure.checks["signature"] == "failed" and failure.checks["decision"] == "failed"
    assert [f.code for f in failure.findings] == ["SIGNATURE_INVALID", "DECISION_MISMATCH"]
    assert {c.code for c in report.archive_checks} == {"FILE_HASH_MISMATCH", "MERKLE_ROOT_MISMATCH"}


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda a: a.update(extra="x"), "unexpected member"),
        (lambda a: a.pop("signalsHash"), "missing member"),
        (lambda a: a.update(signature="not base64!"), "signature must be"),
        (lambda a: a.update(issuedAt="yesterday"), "issuedAt"),
        (lambda a: a["decision"].update(requires_override="no"), "requires_override"),
    ],
)
def test_malformed_lines(exported, tmp_path, edit, why):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    att = json.loads(items[2])
    edit(att)
    items[2] = canonicalize(att)
    write_lines(bad, items)
    (failure,) = verify(bad, store).failures()
    assert failure.code == "MALFORMED" and failure.line == 3 and why in failure.observed
    assert failure.checks["schema"] == "failed" and failure.checks["signature"] == "not_checkable"


def test_non_canonical_and_duplicate_key_lines_are_malformed(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    items[0] = items[0].replace(b'","', b'", "', 1)  # same content, re-spaced
    items[1] = items[1][:-1] + b',"policyId":"other"}'  # duplicate member: the signed bytes would be ambiguous
    items[2] = b"{not json"
    write_lines(bad, items)
    report = verify(bad, store)
    assert row_codes(report)[:3] == ["MALFORMED"] * 3
    assert "canonical" in report.failures()[0].observed


def test_unknown_key_and_unknown_manifest_key(exported, tmp_path):
    path, _ = exported
    with Runtime(tmp_path / "stranger") as other:
        strangers = other.trust_store()
    report = verify(path, strangers)
    assert set(row_codes(report)) == {"KEY_UNKNOWN"}
    assert [c.code for c in report.archive_checks] == ["MANIFEST_KEY_UNKNOWN"]
    assert report.failures()[0].checks["signature"] == "not_checkable"


def test_forged_signature_and_forged_manifest(exported, tmp_path):
    path, store = exported
    with Runtime(tmp_path / "forger") as forger:
        items = lines(path)
        att = json.loads(items[4])
        body = {k: v for k, v in att.items() if k != "signature"}
        att["signature"], _ = seal(body, forger._key)  # right keyId, wrong key
    bad = copy(path, tmp_path, "bad")
    items[4] = canonicalize(att)
    write_lines(bad, items)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["createdAt"] = "2030-01-01T00:00:00.000Z"
    (bad / "manifest.json").write_bytes(canonicalize(manifest))
    report = verify(bad, store)
    assert row_codes(report)[4] == "SIGNATURE_INVALID"
    assert {c.code for c in report.archive_checks} == {"MANIFEST_SIGNATURE_INVALID", "FILE_HASH_MISMATCH", "MERKLE_ROOT_MISMATCH"}


def test_key_rotation_keeps_old_attestations_verified_and_revocation_is_flagged(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        def run(score):
            clock.advance(60)
            return rt.execute(loan_request(score=score))

        old = [run(s) for s in (450, 600)]
        clock.advance(3600)
        rt.rotate_key()
        new = [run(s) for s in (720, 730)]
        path = Path(rt.export_archive(tmp_path / "archive").path)
        store = rt.trust_store()
    assert old[0].signerKeyId != new[0].signerKeyId
    assert store.get(old[0].signerKeyId).notAfter is not None
    report = verify(path, store)
    assert report.status == "verified" and set(row_codes(report)) == {"VERIFIED"}
    # the new key is found compromised from just before the last attestation
    revoked_store = TrustStore(keys=[
        k.model_copy(update={"revokedAt": new[1].issuedAt}) if k.keyId == new[1].signerKeyId else k for k in store.keys
    ])
    report = verify(path, revoked_store)
    assert row_codes(report) == ["VERIFIED", "VERIFIED", "VERIFIED", "KEY_REVOKED"]
    failure = report.failures()[0]
    assert failure.checks["key"] == "failed" and failure.checks["signature"] == "verified"
    # a key used outside its window: the verifier's record says the old key ended earlier
    narrowed = TrustStore(keys=[
        k.model_copy(update={"notAfter": old[1].issuedAt}) if k.keyId == old[0].signerKeyId else k for k in store.keys
    ])
    assert row_codes(verify(path, narrowed)) == ["VERIFIED", "KEY_NOT_VALID_AT_ISSUE", "VERIFIED", "VERIFIED"]


def test_edited_signals_give_fingerprint_and_signals_hash_mismatch(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    sig_lines = (bad / "signals.jsonl").read_bytes().splitlines()
    item = json.loads(sig_lines[0])
    first_key = sorted(item["signals"])[0]
    value = item["signals"][first_key]
    item["signals"][first_key] = (not value) if isinstance(value, bool) else (value + 1 if isinstance(value, int) else value + "x")
    sig_lines[0] = canonicalize(item)
    item = json.loads(sig_lines[1])
    item["signals"] = ["not", "an", "object"]
    sig_lines[1] = canonicalize(item)
    (bad / "signals.jsonl").write_bytes(b"".join(x + b"\n" for x in sig_lines))
    report = verify(bad, store)
    first, second = report.failures()[:2]
    assert first.code == "FINGERPRINT_MISMATCH"
    assert first.checks["signals_hash"] == "failed" and first.checks["signature"] == "verified"
    assert second.code == "SIGNALS_HASH_MISMATCH"
    assert [c.code for c in report.archive_checks] == ["FILE_HASH_MISMATCH"]


def test_missing_and_edited_policies(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    shutil.rmtree(bad / "policies" / "vendor-payment")
    policy_file = bad / "policies" / "loan-approval" / "1.0.0" / "policy.json"
    doc = json.loads(policy_file.read_text())
    doc["rules"][1]["condition"]["greater_than"] = 600  # a looser rule, same version
    policy_file.write_bytes(canonicalize(doc))
    df = verify(bad, store).to_pandas()
    assert set(df[df.policyId == "vendor-payment"]["code"]) == {"POLICY_MISSING"}
    loan = df[(df.policyId == "loan-approval") & (df.policyVersion == "1.0.0")]
    assert set(loan["code"]) == {"BUNDLE_HASH_MISMATCH"} and set(loan["action"]) == {"approve", "reject", "manual_review"}
    assert set(loan["decision"]) == {"not_checkable"}  # the attested policy is not in the archive
    assert set(df[df.policyId == "claims-approval"]["code"]) == {"VERIFIED"}


def test_decision_mismatch_from_a_signing_runtime_that_decided_wrongly(tmp_path, policy_dir, clock):
    from parmana_lab import audit

    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        good = rt.execute(loan_request(score=455))  # reject
        body = good.body()
        body["executionId"] = "crafted"
        body["decision"] = {**body["decision"], "action": "approve", "ruleId": "approve-high-credit", "reason": "Credit score above 700"}
        signature, canonical = seal(body, rt._key)
        # a buggy runtime records it honestly signed; the DB and the archive are consistent
        signals = rt.db.sql("SELECT signals FROM signals").iloc[0, 0]
        template = {k: body[k] for k in ("policyId", "policyVersion", "schemaVersion", "runtimeVersion", "runtimeHash",
                                         "evaluatorArtifactHash", "bundleHash", "decision", "execution_state", "signerKeyId")}
        row = (0, "crafted", body["execution_fingerprint"], body["signalsHash"], body["issuedAt"], signature, canonical.decode(), signals)
        audit.confirm(rt.db, [template], [row], now=clock())
        path = Path(rt.export_archive(tmp_path / "archive").path)
        store = rt.trust_store()
    report = verify(path, store)
    assert row_codes(report) == ["VERIFIED", "DECISION_MISMATCH"]
    failure = report.failures()[0]
    assert "approve" in failure.expected and "reject" in failure.observed
    assert failure.checks["signature"] == "verified" and report.archive_checks == []


def test_runtime_unknown_is_a_warning_not_a_failure(exported):
    path, store = exported
    report = verify(path, store, known_runtimes=["0" * 64])
    assert set(row_codes(report)) == {"RUNTIME_UNKNOWN"}
    assert report.status == "verified" and report.summary.warnings == 15 and report.failures() == []
    assert set(report.to_pandas()["status"]) == {"warning"}


def test_replayed_fingerprint_across_runtimes_is_a_duplicate(tmp_path, policy_dir, clock):
    paths = []
    for name in ("a", "b"):
        with Runtime(tmp_path / name, policies=policy_dir, clock=clock) as rt:
            rt.execute(claims_request())
            paths.append(rt.export_archive(tmp_path / f"{name}-archive").path)
            clock.advance(5)
    with Runtime(tmp_path / "merged", policies=policy_dir, clock=clock) as rt:
        producers = TrustStore()
        for name in ("a", "b"):
            producers = producers.merged(TrustStore.load(tmp_path / name / "keys" / "trust.json").keys)
        for p in paths:
            import_archive(p, rt.db, producers)
        merged = Path(rt.export_archive(tmp_path / "merged-archive").path)
        store = rt.trust_store().merged(producers.keys)
    report = verify(merged, store)
    assert row_codes(report) == ["VERIFIED", "DUPLICATE_FINGERPRINT"]
    assert "line 1" in report.failures()[0].expected


@pytest.mark.parametrize(
    ("damage", "codes"),
    [
        ("delete", {"COUNT_MISMATCH", "MERKLE_ROOT_MISMATCH", "FILE_HASH_MISMATCH"}),
        ("reorder", {"MERKLE_ROOT_MISMATCH", "FILE_HASH_MISMATCH"}),
        ("insert", {"COUNT_MISMATCH", "MERKLE_ROOT_MISMATCH", "FILE_HASH_MISMATCH"}),
        ("keys", {"FILE_HASH_MISMATCH"}),
        ("extra-file", {"FILE_HASH_MISMATCH"}),
        ("no-manifest", {"MANIFEST_MALFORMED"}),
    ],
)
def test_archive_level_damage(exported, tmp_path, damage, codes):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    if damage == "delete":
        write_lines(bad, items[:3] + items[4:])
    elif damage == "reorder":
        write_lines(bad, [items[1], items[0], *items[2:]])
    elif damage == "insert":
        write_lines(bad, [*items, items[0]])
    elif damage == "keys":
        (bad / "keys.json").write_text('{"keys": []}')
    elif damage == "extra-file":
        (bad / "notes.txt").write_text("hello")
    else:
        (bad / "manifest.json").unlink()
    report = verify(bad, store)
    assert {c.code for c in report.archive_checks} == codes
    assert report.status == "failed"
    if damage == "insert":
        assert row_codes(report)[-1] == "DUPLICATE_FINGERPRINT"
    if damage in ("delete", "reorder"):
        assert set(row_codes(report)) == {"VERIFIED"}  # each line is still authentic; only the set changed


def test_no_signals_export_reports_not_checkable(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute(loan_request())
        path = Path(rt.export_archive(tmp_path / "private", signals=False).path)
        store = rt.trust_store()
    assert not (path / "signals.jsonl").exists()
    report = verify(path, store)
    (result,) = report.results()
    assert result.code == "VERIFIED" and report.status == "verified"
    assert {result.checks[c] for c in ("fingerprint", "signals_hash", "decision")} == {"not_checkable"}


def test_trusting_the_archive_keys_must_be_explicit_and_is_reported(exported):
    path, _ = exported
    with pytest.raises(KeyStoreError) as info:  # no keys at all: nothing could be checked, so it is not a result
        verify(path, TrustStore())
    assert info.value.code == "KEY-004"
    report = verify(path, TrustStore(), trust_archive_keys=True)
    assert report.status == "verified" and "explicitly trusted" in report.summary.trust


def test_zip_tar_and_directory_give_identical_reports(exported, tmp_path):
    path, store = exported
    reports = {}
    ws = path.parent / "ws"
    with Runtime(ws, policies=None) as rt:
        for fmt in ("zip", "tar.gz"):
            reports[fmt] = verify(rt.export_archive(tmp_path / f"out.{fmt}", format=fmt).path, store)
    reports["dir"] = verify(path, store)
    frames = {k: r.to_pandas() for k, r in reports.items()}
    assert frames["zip"].equals(frames["dir"]) and frames["tar.gz"].equals(frames["dir"])
    summaries = {k: r.summary.model_dump(exclude={"source"}) for k, r in reports.items()}
    assert summaries["zip"] == summaries["tar.gz"] == summaries["dir"]


def test_verify_attestation_api(runtime):
    att = runtime.execute(claims_request())
    store = runtime.trust_store()
    policy = runtime.policies.get("claims-approval", "1.0.0")
    result = verify_attestation(att, store, signals=claims_request()["signals"], policy=policy)
    assert result.status == "verified" and set(result.checks.values()) == {"verified", "not_checkable"}
    assert [c for c, v in result.checks.items() if v != "verified"] == ["authorship", "override"]  # need an authority file
    bare = verify_attestation(att, store)
    assert bare.status == "verified" and bare.checks["decision"] == "not_checkable"
    tampered = att.model_dump()
    tampered["decision"]["reason"] = "because I said so"
    assert verify_attestation(tampered, store).code == "SIGNATURE_INVALID"
    assert verify_attestation(att, store, signals={**claims_request()["signals"], "risk_score": 43}).code == "FINGERPRINT_MISMATCH"
    assert "VerificationResult" in result._repr_html_()
    assert verify_attestation(None, store).code == "MALFORMED"  # any object at all: a verdict, never a TypeError


def test_workers_must_be_at_least_one(exported):
    path, store = exported
    with pytest.raises(ValueError, match="at least 1"):
        verify_archive(path, store, workers=0, progress=False)


def test_reports_render(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    write_lines(bad, items[1:])
    report = verify(bad, store)
    md, html = report.to_markdown(), report.to_html()
    assert "FAILED" in md and "COUNT_MISMATCH" in md and "| code | count |" in md
    assert "COUNT_MISMATCH" in html and "<table" in html
    assert "failed" in repr(report)


def test_workers_give_the_same_report_as_one_process(exported, tmp_path):
    path, store = exported
    bad = copy(path, tmp_path, "bad")
    items = lines(bad)
    att = json.loads(items[3])
    att["decision"]["reason"] = "edited"
    write_lines(bad, [items[1], items[0], canonicalize(att), *items[3:], items[5]])  # reorder, tamper, replay
    one = verify(bad, store, workers=1)
    two = verify(bad, store, workers=2, chunk_lines=4)  # several chunks in flight
    assert two.to_pandas().equals(one.to_pandas())
    assert [c.model_dump() for c in two.archive_checks] == [c.model_dump() for c in one.archive_checks]
    assert {"SIGNATURE_INVALID", "DUPLICATE_FINGERPRINT"} <= set(one.to_pandas()["code"])
    assert {c.code for c in one.archive_checks} >= {"MERKLE_ROOT_MISMATCH", "COUNT_MISMATCH"}
    seen: list[tuple[int, int | None]] = []
    clean_one = verify(path, store, workers=1)
    clean_two = verify_archive(path, store, workers=2, chunk_lines=3, progress=lambda done, total: seen.append((done, total)))
    assert clean_two.status == clean_one.status == "verified" and clean_two.archive_checks == []
    assert seen[0] == (0, 15) and seen[-1] == (15, 15) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_workers_from_a_plain_script_never_rerun_it(tmp_path, policy_dir):
    """Worker start-up must not re-execute an unguarded script (it would run its executions again in each worker)."""
    script = tmp_path / "audit_script.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from parmana_lab import Runtime, verify_archive
        tmp = Path({str(tmp_path)!r})
        with open(tmp / "runs.log", "a") as log:
            log.write("ran\\n")
        rt = Runtime(tmp / "ws", policies={str(policy_dir)!r})  # DuckDB's threads: workers come from a fork server
        rt.execute_many([{{"policyId": "claims-approval", "policyVersion": "1.0.0", "signals": {{"insurance_active": True,
                           "risk_score": r, "vip_customer": False, "claim_amount": 100}}}} for r in range(40)])
        archive = rt.export_archive(tmp / "archive").path
        print(verify_archive(archive, rt.trust_store(), workers=2, chunk_lines=8, progress=False).status)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "verified", out.stderr[-2000:]
    assert (tmp_path / "runs.log").read_text() == "ran\n"


def test_duplicates_are_found_the_same_by_the_dict_and_by_sorting(exported, tmp_path, monkeypatch):
    """Small archives find duplicates with a dict, large ones by sorting fingerprints: the same findings either way."""
    import parmana_lab.verify as verify_module

    path, store = exported
    bad = copy(path, tmp_path, "dups")
    items = lines(bad)
    write_lines(bad, [*items, items[3], b"not json", items[0], items[3]])
    small = verify(bad, store)
    monkeypatch.setattr(verify_module, "_HASHED_DUPLICATES", 0)
    large = verify(bad, store)
    assert [(r.line, r.code, r.expected, r.observed) for r in small.failures()] == \
           [(r.line, r.code, r.expected, r.observed) for r in large.failures()]
    assert row_codes(small).count("DUPLICATE_FINGERPRINT") == 3
