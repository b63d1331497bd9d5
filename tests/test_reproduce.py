"""Reproducibility audits over real archives and audit DB files."""

import json
import shutil
from pathlib import Path

from parmana_lab import Runtime, canonicalize
from parmana_lab.evaluate import Decision
from parmana_lab.evaluate import evaluate as kit_evaluate
from parmana_lab.reproducibility import reproduce

from .conftest import SAMPLE_POLICIES, loan_request, sample_requests


def _archive(tmp_path, policy_dir, clock, requests):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        for r in requests:
            rt.execute(r)
            clock.advance(1)
        return Path(rt.export_archive(tmp_path / "archive").path), tmp_path / "ws" / "audit.duckdb"


def test_everything_reproduces_from_archive_and_from_audit_db(tmp_path, policy_dir, clock):
    archive, db = _archive(tmp_path, policy_dir, clock, sample_requests())
    for source in (archive, db):
        seen: list[tuple[int, int | None]] = []
        report = reproduce(source, progress=lambda done, total, log=seen: log.append((done, total)))
        assert seen[0] == (0, 15) and seen[-1] == (15, 15)  # the total is known up front, for archives and DBs
        s = report.summary
        assert s.total == 15 and s.statuses == {"MATCH": 15, "DIVERGED": 0, "NOT_REPLAYABLE": 0, "INPUT_MISMATCH": 0}
        assert s.other_runtime == 0 and s.other_evaluator == 0
        assert report.changes().empty


def test_edited_policy_is_not_replayable_and_edited_signals_are_input_mismatch(tmp_path, policy_dir, clock):
    archive, _ = _archive(tmp_path, policy_dir, clock, [loan_request(score=s) for s in (450, 650, 750)])
    bad = tmp_path / "bad"
    shutil.copytree(archive, bad)
    policy = bad / "policies" / "loan-approval" / "1.0.0" / "policy.json"
    doc = json.loads(policy.read_text())
    doc["rules"][1]["condition"]["greater_than"] = 600
    policy.write_bytes(canonicalize(doc))
    report = reproduce(bad)
    assert set(report.to_pandas()["status"]) == {"NOT_REPLAYABLE"}
    assert "not the one applied" in report.rows[0]["why"]
    shutil.rmtree(bad)
    shutil.copytree(archive, bad)
    lines = (bad / "signals.jsonl").read_bytes().splitlines()
    item = json.loads(lines[1])
    item["signals"]["credit_score"] = 900
    lines[1] = canonicalize(item)
    (bad / "signals.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert reproduce(bad).to_pandas()["status"].tolist() == ["MATCH", "INPUT_MISMATCH", "MATCH"]


def test_signals_lines_are_read_as_a_strict_reader_reads_them(tmp_path, policy_dir, clock):
    """Duplicate keys: ambiguous. An integer beyond 64 bits (which orjson alone would read as a float): no JSON number
    the kit accepts, so the record cannot be re-run, rather than be decided on a float."""
    archive, _ = _archive(tmp_path, policy_dir, clock, [loan_request(score=s) for s in (450, 650, 750)])
    lines = (archive / "signals.jsonl").read_bytes().splitlines()
    lines[1] = lines[1][:-1] + b',"signals":{}}'
    lines[2] = lines[2].replace(b'"credit_score":750', b'"credit_score":80000000000000000000')
    (archive / "signals.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows = reproduce(archive).rows
    assert rows[0]["status"] == "MATCH"
    assert rows[1]["status"] == "NOT_REPLAYABLE" and "duplicate object key 'signals'" in rows[1]["why"]
    assert rows[2]["status"] == "NOT_REPLAYABLE" and rows[2]["why"].startswith("unusable signals line")


def test_a_changed_evaluator_diverges_with_the_field_level_difference(tmp_path, policy_dir, clock):
    archive, _ = _archive(tmp_path, policy_dir, clock, [loan_request(score=s) for s in (450, 650, 750)])

    def stricter(policy, signals):
        """An evaluator build that refuses to auto-approve anything (a deliberate behaviour change)."""
        decision = kit_evaluate(policy, signals)
        if decision.action != "approve":
            return decision
        return Decision(action="manual_review", requires_override=True, reason="Needs an underwriter", ruleId="manual-review")

    report = reproduce(archive, evaluator=stricter)
    df = report.to_pandas()
    assert df["status"].tolist() == ["MATCH", "MATCH", "DIVERGED"]
    diff = df["diff"][2]
    assert diff["action"] == ["approve", "manual_review"] and diff["execution_state"] == ["completed", "pending_override"]
    assert "DIVERGED" in report.to_markdown() and "<table" in report.to_html()


def test_what_would_another_version_decide(tmp_path, policy_dir, clock):
    requests = [loan_request(score=690, amount=3_000_000), loan_request(score=720, amount=7_500_000, employed=False),
                loan_request(score=455)]
    archive, _ = _archive(tmp_path, policy_dir, clock, requests)
    report = reproduce(archive, policy_versions={"loan-approval": "1.1.0"}, policies=SAMPLE_POLICIES)
    changes = report.changes()
    assert report.summary.what_if == {"loan-approval": "1.1.0"}
    assert changes["line"].tolist() == [1, 2]  # 1.1.0 approves the first at 690 and rejects the unemployed large loan
    assert changes["now"].tolist()[0].startswith("approve") and changes["now"].tolist()[1].startswith("reject")
    assert set(report.to_pandas()["replayedWith"]) == {"loan-approval 1.1.0"}


def test_reproduce_never_writes(tmp_path, policy_dir, clock):
    archive, db = _archive(tmp_path, policy_dir, clock, [loan_request()])
    before = db.read_bytes()
    reproduce(db)
    reproduce(archive)
    assert db.read_bytes() == before


def test_cli_audit_reproduce(tmp_path, policy_dir, clock):
    import subprocess
    import sys

    from .conftest import REPO

    archive, db = _archive(tmp_path, policy_dir, clock, [loan_request(score=690, amount=3_000_000), loan_request(score=455)])

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "audit", "reproduce", *map(str, args)],
                             capture_output=True, text=True, cwd=REPO)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    same = run(archive, "--json")
    assert same.returncode == 0
    *rows, summary = [json.loads(x) for x in same.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["MATCH", "MATCH"] and [r["line"] for r in rows] == [1, 2]
    assert {r["source"] for r in rows} == {str(archive)}
    assert summary["summary"]["exit"] == 0 and summary["summary"]["statuses"]["MATCH"] == 2
    what_if = run(db, "--json", "--policy-version", "loan-approval=1.1.0", "--policies", policy_dir)
    assert what_if.returncode == 1
    first = json.loads(what_if.stdout.splitlines()[0])
    assert set(first) == {"source", "line", "executionId", "status", "changed", "diff", "why", "unverified", "attested",
                          "override"}  # a pending_override execution: its override state, with the decision that required it
    assert first["override"] == "pending" and first["attested"].startswith("manual_review")
    assert first["status"] == "DIVERGED" and first["diff"]["action"] == ["manual_review", "approve"]
    assert set(first["changed"]) == set(first["diff"]) and "action" in first["changed"]
    assert run(archive, "--policy-version", "nonsense").returncode == 2


def test_html_report_carries_a_chart(tmp_path, policy_dir, clock):
    archive, _ = _archive(tmp_path, policy_dir, clock, [loan_request(score=s) for s in (450, 750)])
    report = reproduce(archive)
    assert "data:image/png;base64," in report.to_html()
    assert report.by_policy().to_dict() == {"MATCH": {"loan-approval 1.0.0": 2}}
