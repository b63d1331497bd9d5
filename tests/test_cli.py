import json
import subprocess
import sys
from pathlib import Path

from parmana_lab import ExecutionAttestation, TrustStore, canonicalize, runtime_info, verify_signature

from .conftest import SAMPLE_REQUESTS, claims_request

REPO = Path(__file__).resolve().parent.parent


def cli(*args, cwd=REPO, check_code=None):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert "Traceback" not in out.stderr, out.stderr
    if check_code is not None:
        assert out.returncode == check_code, (out.stdout, out.stderr)
    return out


def test_run_json_lines_in_order_with_refusals(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    files = [SAMPLE_REQUESTS / "loan-approval.json", SAMPLE_REQUESTS / "invalid.json", SAMPLE_REQUESTS / "replayed.json"]
    single = tmp_path / "single.json"
    single.write_text(json.dumps(claims_request(risk_score=1)))
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    out = cli("--workspace", ws, "run", *files, single, broken, "--policies", policy_dir, "--json", check_code=1)
    *lines, summary = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5 + 4 + 1 + 1 + 1
    assert summary == {"summary": {"requests": 12, "executed": 7, "refused": 5, "exit": 1,
                                   "states": {"completed": 6, "pending_override": 1},
                                   "codes": {"POL-001": 1, "VAL-001": 1, "VAL-007": 2, "VAL-011": 1}}}
    atts = [ExecutionAttestation.model_validate(x) for x in lines[:5]]
    assert [a.decision.action for a in atts] == ["approve", "reject", "manual_review", "approve", "reject"]
    assert [x["error"]["code"] for x in lines[5:9]] == ["VAL-007", "VAL-007", "VAL-011", "POL-001"]
    assert set(lines[5]["error"]) == {"code", "stage", "reason"}
    assert "signature" in lines[9]  # the claims request in replayed.json runs once here
    assert lines[10]["decision"]["ruleId"] == "approve-active-low-risk"
    assert lines[11]["error"]["code"] == "VAL-001"
    for line in out.stdout.splitlines()[:5]:
        assert canonicalize(json.loads(line)).decode() == line  # printed canonically
    again = cli("--workspace", ws, "run", SAMPLE_REQUESTS / "replayed.json", "--policies", policy_dir, "--json", check_code=1)
    assert json.loads(again.stdout.splitlines()[0])["error"]["code"] == "INV-013"


def test_run_exit_zero_when_all_execute(tmp_path, policy_dir):
    out = cli("--workspace", tmp_path / "ws", "run", SAMPLE_REQUESTS / "vendor-payment.json", "--policies", policy_dir, check_code=0)
    assert out.stdout.count("vendor-payment 1.0.0") == 4


def test_keys_json_is_a_trust_store_that_verifies_run_output(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    out = cli("--workspace", ws, "run", SAMPLE_REQUESTS / "claims-approval.json", "--policies", policy_dir, "--json", check_code=0)
    atts = [ExecutionAttestation.model_validate_json(x) for x in out.stdout.splitlines()[:-1]]
    store = TrustStore.from_json(cli("--workspace", ws, "keys", "--json", check_code=0).stdout)
    assert all(verify_signature(a, store.get(a.signerKeyId).publicKey) for a in atts)
    assert set(store.keys[0].model_dump()) == {"keyId", "publicKey", "notBefore", "notAfter", "revokedAt"}
    rotated = cli("--workspace", ws, "keys", "rotate", check_code=0)
    assert "new signing key" in rotated.stdout
    listing = cli("--workspace", ws, "keys", check_code=0).stdout
    assert "retired" in listing and "active" in listing
    store2 = TrustStore.from_json(cli("--workspace", ws, "keys", "--json", check_code=0).stdout)
    assert len(store2.keys) == 2 and store2.keys[0].notAfter is not None


def test_runtime_json_matches_the_api():
    out = cli("runtime", "--json", check_code=0)
    data = json.loads(out.stdout)
    assert data == runtime_info().model_dump(mode="json")
    assert set(data) == {"manifest", "runtimeHash", "evaluatorArtifactHash"}
    assert set(data["manifest"]) == {"capabilities", "runtimeVersion", "supportedSchemaVersions"}


def test_policies_lists_hashes_and_errors(tmp_path, policy_dir):
    out = cli("policies", "--policies", policy_dir, "--json", check_code=0)
    *rows, summary = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 9 and all(len(r["bundleHash"]) == 64 for r in rows)
    assert summary == {"summary": {"loaded": 9, "failed": 0, "exit": 0}}
    bad = policy_dir / "broken" / "1.0.0" / "policy.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"policyId": "broken"}')
    out = cli("policies", "--policies", policy_dir, check_code=1)
    assert "[POL-003@policy]" in out.stdout


def test_demo_runs_on_a_fresh_workspace_and_summarises(tmp_path):
    out = cli("--workspace", tmp_path / "ws", "demo", check_code=0)
    assert "INV-013" in out.stdout and "VAL-007" in out.stdout
    assert "Summary" in out.stdout and "executed 15, refused 5" in out.stdout
    again = cli("--workspace", tmp_path / "ws", "demo", check_code=0)  # fresh each time
    assert "executed 15, refused 5" in again.stdout


def test_demo_works_outside_the_repo(tmp_path):
    out = cli("--workspace", tmp_path / "ws", "demo", cwd=tmp_path, check_code=0)
    assert "executed 15" in out.stdout


def test_usage_mistakes_are_coded_refusals_without_traceback(tmp_path):
    ws = ["--workspace", str(tmp_path / "ws")]
    cli(*ws, "keys", "rotate", check_code=0)
    key_id = json.loads(cli(*ws, "keys", "--json", check_code=0).stdout)["keys"][0]["keyId"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-keys.json").write_text("{}")
    for args, code in (
        (("keys", "revoke"), "KEY-005"),
        (("keys", "revoke", key_id, "--at", "tomorrow"), "KEY-007"),
        (("audit", "reproduce", str(tmp_path / "ws" / "audit.duckdb"), "--policy-version", "loan-approval"), "POL-007"),
        (("export", "--out", str(tmp_path / "out"), "--policy", "@"), "POL-007"),
        (("export", "--out", str(tmp_path / "out"), "--since", "last week"), "ARC-008"),
        (("policies", "--policies", str(tmp_path / "missing")), "POL-001"),
        (("run", "--policies", str(tmp_path / "missing"), str(SAMPLE_REQUESTS / "claims-approval.json")), "POL-001"),
        (("demo", "--requests", str(tmp_path / "empty")), "VAL-001"),
        (("verify", str(tmp_path / "empty"), "--trust", str(tmp_path / "no-keys.json")), "KEY-004"),
    ):
        out = cli(*ws, *args, check_code=2)
        assert out.stderr.startswith(f"parmana-lab: [{code}@") and "Traceback" not in out.stderr, out.stderr
    assert json.loads(cli(*ws, "keys", "--json", check_code=0).stdout)["keys"][0]["revokedAt"] is None
    assert not (tmp_path / "out").exists()
    assert "needs at least 1, not 0" in cli(*ws, "verify", str(tmp_path / "empty"), "--workers", "0", check_code=2).stderr
    nothing = cli(*ws, "export", "--out", str(tmp_path / "none"), "--policy", "no-such-policy@9.9.9", check_code=0)
    assert "exported 0 attestations" in nothing.stdout and "no attestation in the audit DB matches --policy" in nothing.stderr
