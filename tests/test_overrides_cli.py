"""The override workflow from the command line: add an approver, hand out a request, sign offline, submit, exit codes."""

import json
import shutil
import subprocess
import sys

from parmana_lab import Runtime

from .override_setup import REPO, make_desk, payment
from .test_cli_imports import PRIVATE_KEYS, loaded


def cli(*args, code=None):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    if code is not None:
        assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    return out


def jsonl(out):
    return [json.loads(x) for x in out.stdout.splitlines()]


def test_the_workflow_end_to_end(tmp_path):
    desk = make_desk(tmp_path)
    ws = tmp_path / "ws"
    (ws / "keys").mkdir(parents=True)
    shutil.copy(desk.authority_path, ws / "keys" / "authority.json")  # the workspace's authority file is the default
    dora = tmp_path / "people" / "dora.pem"
    cli("keys", "new", "--out", dora, code=0)
    out = cli("--workspace", ws, "authority", "add-approver", "dora", "--roles", "finance", "--key", dora, code=0)
    assert "approver dora" in out.stdout and "PRIVATE" not in out.stdout
    assert "approver dora" in cli("--workspace", ws, "authority", code=0).stdout
    assert cli("--workspace", ws, "authority", "add-approver", "dora2", "--key", dora, code=2).returncode == 2  # no --roles
    (tmp_path / "req.json").write_text(json.dumps(payment(requested_by="carol")))
    (att,) = [x for x in jsonl(cli("--workspace", ws, "run", tmp_path / "req.json", "--policies", desk.policies, "--json",
                                   code=0)) if "executionId" in x]
    eid = att["executionId"]
    (listed, summary) = jsonl(cli("--workspace", ws, "overrides", "--json", code=0))
    assert (listed["executionId"], listed["state"], listed["requestedBy"]) == (eid, "pending", "carol")
    assert summary == {"summary": {"pending": 1, "approved": 0, "rejected": 0, "expired": 0, "exit": 0}}
    cli("--workspace", ws, "overrides", "request", eid, "--out", tmp_path / "request.json", code=0)
    votes = {}
    for who in ("alice", "carol", "dora"):
        votes[who] = tmp_path / f"{who}.vote"
        signed = cli("overrides", "sign", tmp_path / "request.json", "--key", tmp_path / "people" / f"{who}.pem",
                     "--approver-id", who, "--role", "finance", "--approve", "--reason", "invoice matched",
                     "--out", votes[who], code=0)  # offline: no --workspace, no runtime
        assert "You are signing: APPROVE" in signed.stderr and "second-approver" in signed.stderr
    assert loaded("overrides", "sign", tmp_path / "request.json", "--key", tmp_path / "people" / "alice.pem",
                  "--approver-id", "alice", "--role", "finance", "--reject", "--reason", "x", "--out", tmp_path / "x") <= PRIVATE_KEYS
    out = cli("--workspace", ws, "overrides", "submit", votes["alice"], votes["carol"], "--json", code=1)
    first, self_vote, summary = jsonl(out)
    assert (first["accepted"], first["state"], first["votes"]) == (True, "pending", {"approve": 1, "reject": 0})
    assert (self_vote["accepted"], self_vote["code"], self_vote["state"]) == (False, "OVR-004", "pending")
    assert summary["summary"] == {"files": 2, "accepted": 1, "refused": 1, "unusable": 0, "exit": 1}
    out = cli("--workspace", ws, "overrides", "submit", votes["dora"], "--json", code=0)
    assert jsonl(out)[0]["state"] == "approved"
    (tmp_path / "junk.json").write_text("{not json")
    out = cli("--workspace", ws, "overrides", "submit", tmp_path / "junk.json", "--json", code=2)
    assert jsonl(out)[0]["code"] == "OVR-001" and jsonl(out)[-1]["summary"]["unusable"] == 1
    *records, summary = jsonl(cli("--workspace", ws, "overrides", "trail", eid, "--json", code=0))
    assert [r["kind"] for r in records] == ["request", "resolution", "resolution", "outcome"]
    assert summary == {"summary": {"executionId": eid, "state": "approved", "records": 4, "exit": 0}}
    trail = cli("--workspace", ws, "overrides", "trail", eid, code=0).stdout
    assert trail.count("\nvote ") == 2 and "state: approved" in trail
    assert cli("--workspace", ws, "overrides", code=0).stdout.startswith("no pending override")
    assert jsonl(cli("--workspace", ws, "overrides", "--all", "--json", code=0))[0]["state"] == "approved"
    assert "SYS-025" in cli("--workspace", ws, "overrides", "reopen", eid, code=1).stderr
    assert "SYS-021" in cli("--workspace", ws, "overrides", "request", "no-such-id", code=2).stderr
    export = tmp_path / "archive"
    cli("--workspace", ws, "export", "--out", export, code=0)
    with Runtime(ws) as rt:
        (tmp_path / "trust.json").write_text(rt.trust_store().to_json())
    out = cli("--workspace", ws, "verify", export, "--trust", tmp_path / "trust.json", "--json", code=0)
    assert [x["override"] for x in jsonl(out) if "line" in x] == ["approved"]  # the workspace's authority file by default
