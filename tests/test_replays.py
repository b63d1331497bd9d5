"""Replay detection over real archives and audit DBs built by the tests."""

import json
import shutil
from pathlib import Path

from parmana_lab import Runtime, canonicalize
from parmana_lab.archive import import_archive
from parmana_lab.replays import find_replays

from .conftest import claims_request, loan_request


def _runtime_archive(tmp_path, name, policy_dir, clock, requests, fmt="dir"):
    with Runtime(tmp_path / name, policies=policy_dir, clock=clock) as rt:
        atts = [rt.execute(r) for r in requests]
        out = tmp_path / (f"{name}-archive" + ("" if fmt == "dir" else f".{fmt}"))
        path = Path(rt.export_archive(out, format=fmt).path)
    clock.advance(60)
    return path, atts


def test_same_fingerprint_in_two_archives_from_different_runtime_keys(tmp_path, policy_dir, clock):
    a, (att_a, _) = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request(), loan_request()])
    b, (att_b,) = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()], fmt="zip")
    with find_replays([a, b]) as report:
        s = report.summary
        assert (s.records, s.replayed_fingerprints, s.extra_uses, s.reused_execution_ids) == (3, 1, 1, 0)
        (finding,) = report.findings()
        assert finding["execution_fingerprint"] == att_a.execution_fingerprint == att_b.execution_fingerprint
        occ = finding["occurrences"]
        assert [o["source"] for o in occ] == ["a-archive", "b-archive.zip"]
        assert {o["signerKeyId"] for o in occ} == {att_a.signerKeyId, att_b.signerKeyId} and att_a.signerKeyId != att_b.signerKeyId
        assert set(occ[0]) == {"source", "executionId", "issuedAt", "signerKeyId", "runtimeHash", "decision"}
        assert occ[0]["decision"] == "approve"
        # the same view answers the user's own questions
        per_source = report.sql("SELECT source, count(*) AS n FROM records GROUP BY ALL ORDER BY ALL")
        assert per_source.to_dict("records") == [{"source": "a-archive", "n": 2}, {"source": "b-archive.zip", "n": 1}]
        assert report.relation.count("*").fetchall()[0][0] == 3


def test_replay_inside_one_archive_and_in_an_audit_db(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    b, _ = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request(), loan_request(score=600)])
    with Runtime(tmp_path / "merged", policies=policy_dir, clock=clock) as rt:
        import_archive(a, rt.db)
        import_archive(b, rt.db)
        merged = Path(rt.export_archive(tmp_path / "merged-archive").path)
    db_file = tmp_path / "merged" / "audit.duckdb"
    with find_replays([merged]) as report:
        assert report.summary.replayed_fingerprints == 1 and report.summary.records == 3
        assert len(report.to_pandas()) == 2
    with find_replays([db_file, a]) as report:  # an audit DB file and an archive together
        s = report.summary
        assert s.sources == ["audit.duckdb", "a-archive"] and s.records == 4 and s.extra_uses == 2
        assert "| execution_fingerprint |" in report.to_markdown() and "<table" in report.to_html()


def test_clean_sources_have_no_findings(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request(), loan_request()])
    with find_replays([a]) as report:
        assert report.findings() == [] and report.summary.extra_uses == 0 and len(report.reused_ids) == 0
    with find_replays(str(a)) as one, find_replays(a) as also:  # one source as such, not as its characters
        assert one.summary.records == also.summary.records == 2 and one.summary.sources == [a.name]


def test_execution_id_reused_with_different_content(tmp_path, policy_dir, clock):
    a, (att,) = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    edited = tmp_path / "edited"
    shutil.copytree(a, edited)
    line = json.loads((edited / "attestations.jsonl").read_text())
    line["decision"]["reason"] = "someone else's story"
    (edited / "attestations.jsonl").write_bytes(canonicalize(line) + b"\n")
    with find_replays([a, edited]) as report:
        reuse = report.reused_ids
        assert reuse["executionId"].tolist() == [att.executionId] and reuse["versions"].tolist() == [2]
        assert report.summary.replayed_fingerprints == 1  # same fingerprint too: both views are reported


def test_cli_audit_replays(tmp_path, policy_dir, clock):
    import subprocess
    import sys

    from .conftest import REPO

    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    b, _ = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()], fmt="tar.gz")
    c, _ = _runtime_archive(tmp_path, "c", policy_dir, clock, [loan_request()])

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "audit", "replays", *map(str, args)],
                             capture_output=True, text=True, cwd=REPO)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    found = run(a, b, "--json")
    assert found.returncode == 1
    (line,) = [json.loads(x) for x in found.stdout.splitlines()]
    assert set(line) == {"execution_fingerprint", "occurrences"} and len(line["occurrences"]) == 2
    assert run(a, c).returncode == 0
    missing = run(tmp_path / "nowhere")
    assert missing.returncode == 2 and "ARC-001" in missing.stderr


def test_html_report_carries_a_chart(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    b, _ = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()])
    with find_replays([a, b]) as report:
        html = report.to_html()
        assert "data:image/png;base64," in html and "replays by source" in html
        assert report.by_source().to_dict()["occurrences of replayed fingerprints"] == {"a-archive": 1, "b-archive": 1}
