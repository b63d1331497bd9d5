"""Signed policy bundles under an authority file: real keys, real folders, the runtime refusing at load."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parmana_lab import PolicyError, Runtime, canonicalize
from parmana_lab.authority import AuthorEntry, Authority
from parmana_lab.bundles import sign_bundle, verify_bundle
from parmana_lab.keys import key_id_for, load_key_file, new_key_file

from .conftest import REPO, claims_request, loan_request


def entry(author_id, key, patterns, **window):
    return AuthorEntry(authorId=author_id, keyId=key.key_id, publicKey=key.public_key_pem(), policyIds=patterns,
                       notBefore=window.pop("notBefore", "2026-01-01T00:00:00.000Z"), **window)


@pytest.fixture
def signed(tmp_path, policy_dir, clock):
    """Every sample policy signed by alice (loan-*, claims-*), with bob (vendor-payment) and mallory (not in the file)."""
    alice = new_key_file(tmp_path / "alice.pem")
    bob = new_key_file(tmp_path / "bob.pem")
    mallory = new_key_file(tmp_path / "mallory.pem")
    authority = Authority(authors=[entry("alice", alice, ["loan-*", "claims-approval"]), entry("bob", bob, ["vendor-payment"])])
    authority.save(tmp_path / "authority.json")
    for folder in sorted(policy_dir.glob("*/*")):
        if folder.parent.name in ("loan-approval", "claims-approval"):
            sign_bundle(folder, alice, "alice", clock=clock)
    return tmp_path / "authority.json", authority, {"alice": alice, "bob": bob, "mallory": mallory}


def refused(tmp_path, policy_dir, clock, authority, request, name="ws"):
    with Runtime(tmp_path / name, policies=policy_dir, clock=clock, authority=authority) as rt:
        with pytest.raises(PolicyError) as info:
            rt.execute(request)
        assert info.value.stage == "policy"
        assert rt.db.count("replay") == 0 and rt.db.count() == 0  # nothing reserved, nothing signed
        assert rt.db.sql("SELECT code FROM refusals")["code"].tolist() == [info.value.code]  # the refusal is recorded
    return info.value


def test_a_signed_bundle_loads_and_executes_and_sequences_default(signed, tmp_path, policy_dir, clock):
    path, authority, keys = signed
    manifests = {f.name: json.loads((f / "bundle.manifest.json").read_text())["sequence"]
                 for f in sorted((policy_dir / "loan-approval").iterdir())}
    assert manifests == {"1.0.0": 1, "1.1.0": 2, "1.2.0": 3}  # one more than the signed versions beside it
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock, authority=path) as rt:
        att = rt.execute(claims_request())
        assert att.decision.action == "approve" and "authorship checked" in rt.authorship
        rows = rt.db.sql("SELECT policyId, policyVersion, sequence, signer_key_ids FROM bundles")
        assert rows.to_dict("records") == [{"policyId": "claims-approval", "policyVersion": "1.0.0", "sequence": 1,
                                            "signer_key_ids": [keys["alice"].key_id]}]
        assert verify_bundle(policy_dir / "claims-approval" / "1.0.0", authority).status == "verified"
        archive = Path(rt.export_archive(tmp_path / "archive").path)
        trust = rt.trust_store()
    # the archive carries the bundle as the runtime verified it, and the exporter's authority file (information only)
    folder = archive / "policies" / "claims-approval" / "1.0.0"
    source = policy_dir / "claims-approval" / "1.0.0"
    for name in ("bundle.manifest.json", "bundle.sig"):
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    assert Authority.load(archive / "authority.json") == authority
    assert verify_bundle(folder, authority).status == "verified"  # the archived copy verifies on its own
    from parmana_lab.verify import verify_archive

    assert verify_archive(archive, trust, progress=False).status == "verified"


def test_each_way_of_breaking_a_bundle_is_refused_at_load_with_its_code(signed, tmp_path, policy_dir, clock):
    path, authority, keys = signed
    claims = policy_dir / "claims-approval" / "1.0.0"
    cases = {}

    def variant(name, change):
        folder = tmp_path / "variants" / name / "claims-approval" / "1.0.0"
        shutil.copytree(claims, folder)
        change(folder)
        cases[name] = folder

    def edit_policy(folder):
        doc = json.loads((folder / "policy.json").read_text())
        doc["rules"][0]["outcome"]["reason"] = "edited after signing"
        (folder / "policy.json").write_bytes(canonicalize(doc))

    variant("unsigned", lambda f: ((f / "bundle.manifest.json").unlink(), (f / "bundle.sig").unlink()))
    variant("edited", edit_policy)
    variant("file-added", lambda f: (f / "notes.txt").write_text("later"))
    variant("unknown-key", lambda f: sign_bundle(f, keys["mallory"], "alice", clock=clock))
    variant("wrong-scope", lambda f: sign_bundle(f, keys["bob"], "bob", clock=clock))
    variant("expired", lambda f: sign_bundle(f, keys["alice"], "alice", expires="2026-01-15T09:00:00Z", clock=clock))
    expected = {"unsigned": "POL-030", "edited": "POL-032", "file-added": "POL-032", "unknown-key": "POL-031",
                "wrong-scope": "POL-033", "expired": "POL-036"}
    for name, folder in cases.items():
        code = refused(tmp_path, folder.parent.parent, clock, path, claims_request(), name=f"ws-{name}").code
        assert code == expected[name], (name, code)
        assert verify_bundle(folder, authority, now="2026-01-15T09:30:00.000Z").code == expected[name]  # policies verify agrees
    # a revoked key, and the runtime's own key
    revoked = Authority(authors=[entry("alice", keys["alice"], ["claims-approval"], revokedAt="2026-01-10T00:00:00.000Z")])
    assert refused(tmp_path, policy_dir, clock, revoked, claims_request(), name="ws-revoked").code == "POL-033"
    with Runtime(tmp_path / "ws-own", policies=policy_dir, clock=clock):
        own = next(load_key_file(p) for p in (tmp_path / "ws-own" / "keys").glob("*.pem"))
    sneaky = Authority(authors=[entry("runtime", own, ["claims-approval"])])
    shutil.copytree(claims, tmp_path / "own" / "claims-approval" / "1.0.0")
    sign_bundle(tmp_path / "own" / "claims-approval" / "1.0.0", own, "runtime", clock=clock)
    error = refused(tmp_path, tmp_path / "own", clock, sneaky, claims_request(), name="ws-own")
    assert error.code == "POL-031" and "runtime's own signing key" in error.reason


def test_rollback_and_a_reused_sequence_are_refused(signed, tmp_path, policy_dir, clock):
    path, _, keys = signed
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock, authority=path) as rt:
        rt.execute(loan_request(version="1.1.0"))  # sequence 2 used
        with pytest.raises(PolicyError) as info:
            rt.execute(loan_request(score=610))  # 1.0.0 is sequence 1: a rollback
        assert info.value.code == "POL-034" and rt.db.count() == 1
        folder = policy_dir / "loan-approval" / "1.1.0"
        doc = json.loads((folder / "policy.json").read_text())
        doc["rules"][0]["outcome"]["reason"] = "same sequence, other content"
        shutil.rmtree(policy_dir / "loan-approval" / "1.0.0")
        new = policy_dir / "loan-approval" / "1.9.0"
        shutil.copytree(folder, new)
        doc["policyVersion"] = "1.9.0"
        (new / "policy.json").write_bytes(canonicalize(doc))
        sign_bundle(new, keys["alice"], "alice", sequence=2, clock=clock)
        with pytest.raises(PolicyError) as info:
            rt.execute(loan_request(version="1.9.0"))
        assert info.value.code == "POL-035"


def test_cli_author_workflow(tmp_path, policy_dir):
    ws = tmp_path / "ws"

    def run(*args, code=0):
        out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(ws), *map(str, args)],
                             capture_output=True, text=True, cwd=REPO)
        assert "Traceback" not in out.stderr and out.returncode == code, (out.stdout, out.stderr)
        return out

    made = json.loads(run("keys", "new", "--out", tmp_path / "alice.pem", "--json").stdout)
    assert "PRIVATE" not in json.dumps(made) and (tmp_path / "alice.pem").stat().st_mode & 0o777 == 0o600
    run("authority", "add-author", "alice", "--key", tmp_path / "alice.pem", "--policies", "claims-*")
    shown = json.loads(run("authority", "--json").stdout)
    assert shown["authors"][0]["keyId"] == made["keyId"] == key_id_for(load_key_file(tmp_path / "alice.pem").public_key)
    assert "PRIVATE" not in (ws / "keys" / "authority.json").read_text()
    claims = policy_dir / "claims-approval" / "1.0.0"
    run("policies", "sign", claims, "--key", tmp_path / "alice.pem", "--author", "alice")
    ok = run("policies", "verify", claims, policy_dir / "loan-approval" / "1.0.0", "--json", code=1)
    first, second, summary = (json.loads(x) for x in ok.stdout.splitlines())
    assert first["status"] == "verified" and second["code"] == "POL-030" and summary["summary"]["exit"] == 1
    assert run("run", REPO / "sample_requests" / "claims-approval.json", "--policies", policy_dir).returncode == 0
    refusal = run("run", REPO / "sample_requests" / "vendor-payment.json", "--policies", policy_dir, "--json", code=1)
    assert json.loads(refusal.stdout.splitlines()[0])["error"]["code"] == "POL-030"
    run("authority", "revoke", made["keyId"], "--at", "2026-01-01")
    assert run("policies", "verify", claims, code=1).stdout.count("POL-033") == 1
    assert run("authority", "add-author", "x", "--key", Path(tmp_path / "nope.pem"), "--policies", "a", code=2)


def _resign_manifest(archive: Path, key) -> None:
    """What an exporter holding the runtime key can do after editing files: list their new hashes and re-sign."""
    import base64
    import hashlib

    from parmana_lab.archive import manifest_message

    manifest = json.loads((archive / "manifest.json").read_bytes())
    for name in list(manifest["files"]):
        manifest["files"][name] = hashlib.sha256((archive / name).read_bytes()).hexdigest()
    manifest["signature"] = base64.b64encode(key.sign(manifest_message(manifest))).decode()
    (archive / "manifest.json").write_bytes(canonicalize(manifest))


def test_verify_checks_authorship_as_of_each_decision(signed, tmp_path, policy_dir, clock):
    from parmana_lab.verify import verify_archive

    path, authority, keys = signed
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock, authority=path) as rt:
        early = rt.execute(claims_request())
        clock.advance(86_400)
        late = rt.execute(claims_request(risk_score=7))
        archive = Path(rt.export_archive(tmp_path / "archive").path)
        trust, runtime_key = rt.trust_store(), rt._key
    assert verify_archive(archive, trust, progress=False).summary.authorship == "authorship not checked"
    report = verify_archive(archive, trust, progress=False, authority=path)
    assert report.status == "verified" and set(report.to_pandas()["authorship"]) == {"verified"}
    assert "authorship checked" in report.summary.authorship
    # alice's key revoked between the two decisions: the earlier one still stands, the later one does not
    cut = Authority(authors=[a.model_copy(update={"revokedAt": late.issuedAt}) if a.authorId == "alice" else a
                             for a in authority.authors])
    rows = verify_archive(archive, trust, progress=False, authority=cut).to_pandas().set_index("executionId")
    assert rows.loc[early.executionId, "authorship"] == "verified"
    assert rows.loc[late.executionId, "code"] == "POLICY_AUTHOR_UNAUTHORIZED"
    # the archived bundle re-signed by a key the authority file does not hold
    forged = tmp_path / "forged"
    shutil.copytree(archive, forged)
    sign_bundle(forged / "policies" / "claims-approval" / "1.0.0", keys["mallory"], "alice", clock=clock)
    _resign_manifest(forged, runtime_key)
    report = verify_archive(forged, trust, progress=False, authority=path)
    assert report.archive_checks == [] and set(report.to_pandas()["code"]) == {"POLICY_AUTHOR_UNAUTHORIZED"}
    # no bundle at all in the archive
    bare = tmp_path / "bare"
    shutil.copytree(archive, bare)
    for name in ("bundle.manifest.json", "bundle.sig"):
        (bare / "policies" / "claims-approval" / "1.0.0" / name).unlink()
    manifest = json.loads((bare / "manifest.json").read_bytes())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if "bundle." not in k}
    (bare / "manifest.json").write_bytes(canonicalize(manifest))
    _resign_manifest(bare, runtime_key)
    assert set(verify_archive(bare, trust, progress=False, authority=path).to_pandas()["code"]) == {"POLICY_UNSIGNED"}
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "verify", forged, "--trust",
                          tmp_path / "ws" / "keys" / "trust.json", "--authority", path, "--json"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and json.loads(out.stdout.splitlines()[0])["code"] == "POLICY_AUTHOR_UNAUTHORIZED"
