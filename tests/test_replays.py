"""Replay detection over real archives and audit DBs built by the tests.

A replay is one fingerprint consumed by two or more distinct executionIds; the
same record seen in several places is a copy, never a replay.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb
import pytest

from parmana_lab import ArchiveError, AuditStoreError, Runtime, TrustStore, canonicalize
from parmana_lab.imports import import_archive
from parmana_lab.replays import find_replays

from .conftest import REPO, claims_request, loan_request


def _runtime_archive(tmp_path, name, policy_dir, clock, requests, fmt="dir"):
    with Runtime(tmp_path / name, policies=policy_dir, clock=clock) as rt:
        atts = [rt.execute(r) for r in requests]
        out = tmp_path / (f"{name}-archive" + ("" if fmt == "dir" else f".{fmt}"))
        path = Path(rt.export_archive(out, format=fmt).path)
    clock.advance(60)
    return path, atts


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "audit", "replays", *map(str, args)],
                         capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_same_fingerprint_in_two_archives_from_different_runtime_keys(tmp_path, policy_dir, clock):
    a, (att_a, _) = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request(), loan_request()])
    b, (att_b,) = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()], fmt="zip")
    with find_replays([a, b]) as report:
        s = report.summary
        assert (s.records, s.executions, s.copies, s.replayed_fingerprints, s.extra_uses, s.reused_execution_ids) == \
            (3, 3, 0, 1, 1, 0)
        (finding,) = report.findings()
        assert finding["execution_fingerprint"] == att_a.execution_fingerprint == att_b.execution_fingerprint
        executions = finding["executions"]
        assert [(e["source"], e["line"]) for e in executions] == [(str(a), 1), (str(b), 1)]  # the path as given, and the line
        assert [e["executionId"] for e in executions] == [att_a.executionId, att_b.executionId]
        assert {e["signerKeyId"] for e in executions} == {att_a.signerKeyId, att_b.signerKeyId}
        assert att_a.signerKeyId != att_b.signerKeyId
        assert set(executions[0]) == {"executionId", "source", "line", "issuedAt", "signerKeyId", "runtimeHash", "decision",
                                      "also_in"}
        assert executions[0]["decision"] == "approve" and executions[0]["also_in"] == []
        # the same view answers the user's own questions
        per_source = report.sql("SELECT source, count(*) AS n FROM records GROUP BY ALL ORDER BY ALL")
        assert per_source.to_dict("records") == [{"source": str(a), "n": 2}, {"source": str(b), "n": 1}]
        assert report.relation.count("*").fetchall()[0][0] == 3


def test_copies_of_one_export_are_not_replays(tmp_path, policy_dir, clock):
    """An archive twice, an archive with the DB it came from, a folder with its zip: one execution each, no replay."""
    with Runtime(tmp_path / "a", policies=policy_dir, clock=clock) as rt:
        rt.execute_many([claims_request(), loan_request(), loan_request(score=600)])
        folder = Path(rt.export_archive(tmp_path / "a-folder").path)
        packed = Path(rt.export_archive(tmp_path / "a.zip", format="zip").path)
        with find_replays([packed, rt.db]) as report:  # the open DB of this process, read through its own connection
            assert report.summary.sources == [str(packed), str(rt.db.path)] and report.summary.copies == 3
        with find_replays([packed, rt.db.path]) as report:  # its path, while this process holds it
            assert report.summary.copies == 3 and not report.found
        db_file = rt.db.path
    for sources in ([packed, packed], [packed, db_file], [folder, packed], [folder, packed, db_file]):
        with find_replays(sources) as report:
            s = report.summary
            assert (s.records, s.executions, s.copies) == (3 * len(sources), 3, 3 * (len(sources) - 1))
            assert (s.replayed_fingerprints, s.reused_execution_ids, report.found) == (0, 0, False)
            assert report.sql("SELECT count(*) AS n FROM replays").iloc[0, 0] == 0
            assert report.sql("SELECT count(*) AS n FROM executions").iloc[0, 0] == 3
        out = run_cli(*sources, "--json")
        assert out.returncode == 0, out.stdout
        summary = json.loads(out.stdout.splitlines()[-1])["summary"]
        assert summary["exit"] == 0 and summary["copies"] == 3 * (len(sources) - 1) and summary["replayed_fingerprints"] == 0


def test_a_replay_is_found_across_copies_and_runtimes(tmp_path, policy_dir, clock):
    a, (att_a,) = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(p for p in a.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(a).as_posix())
    b, (att_b,) = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()], fmt="tar.gz")
    with find_replays([a, zipped, b]) as report:
        (finding,) = report.findings()
        first, second = finding["executions"]
        assert (first["executionId"], first["source"], first["also_in"]) == (att_a.executionId, str(a), [f"{zipped}:1"])
        assert (second["executionId"], second["source"]) == (att_b.executionId, str(b))
        assert report.summary.copies == 1 and report.summary.extra_uses == 1
        sql = report.sql("SELECT execution_fingerprint, executions, records FROM replays")
        assert sql.to_dict("records") == [{"execution_fingerprint": att_a.execution_fingerprint, "executions": 2, "records": 3}]
    out = run_cli(a, zipped, b, "--json")
    assert out.returncode == 1
    *findings, summary = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(findings) == 1 and set(findings[0]) == {"execution_fingerprint", "executions"}
    assert summary["summary"]["exit"] == 1 and summary["summary"]["replayed_fingerprints"] == 1
    text = run_cli(a, zipped, b)
    assert text.returncode == 1 and f"also in {zipped}:1" in text.stdout


def test_replay_inside_one_archive_and_in_an_audit_db(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    b, _ = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request(), loan_request(score=600)])
    trust = TrustStore.load(tmp_path / "a" / "keys" / "trust.json").merged(TrustStore.load(tmp_path / "b" / "keys" / "trust.json").keys)
    with Runtime(tmp_path / "merged", policies=policy_dir, clock=clock) as rt:
        import_archive(a, rt.db, trust)
        import_archive(b, rt.db, trust)
        merged = Path(rt.export_archive(tmp_path / "merged-archive").path)
    db_file = tmp_path / "merged" / "audit.duckdb"
    with find_replays([merged]) as report:
        assert report.summary.replayed_fingerprints == 1 and report.summary.records == 3
        assert len(report.to_pandas()) == 2
    with find_replays([db_file, a]) as report:  # an audit DB file and an archive: a's record is in both, a copy
        s = report.summary
        assert s.sources == [str(db_file), str(a)] and s.records == 4 and s.copies == 1 and s.extra_uses == 1
        (finding,) = report.findings()
        assert [e["also_in"] for e in finding["executions"]] == [[f"{a}:1"], []]
        assert "| execution_fingerprint |" in report.to_markdown() and "<table" in report.to_html()


def test_clean_sources_have_no_findings(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request(), loan_request()])
    with find_replays([a]) as report:
        assert report.findings() == [] and report.summary.extra_uses == 0 and len(report.reused_ids) == 0
    with find_replays(str(a)) as one, find_replays(a) as also:  # one source as such, not as its characters
        assert one.summary.records == also.summary.records == 2 and one.summary.sources == [str(a)]


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
        # one executionId: not a replay (a fingerprint under two executions), but a finding of its own
        assert report.summary.replayed_fingerprints == 0 and report.summary.copies == 0 and report.found
    out = run_cli(a, edited, "--json")
    assert out.returncode == 1
    first = json.loads(out.stdout.splitlines()[0])
    assert first == {"executionId": att.executionId, "reused_with_different_content": 2, "sources": sorted([str(a), str(edited)])}


def test_unreadable_records_are_named_not_skipped(tmp_path, policy_dir, clock):
    a, atts = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request(), loan_request(), loan_request(score=600)])
    damaged = tmp_path / "damaged"
    shutil.copytree(a, damaged)
    lines = (damaged / "attestations.jsonl").read_bytes().splitlines()
    lines[1] = b"{not json"
    lines.append(b'{"executionId": "x"}')
    (damaged / "attestations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with find_replays([damaged]) as report:
        assert [(u["source"], u["line"]) for u in report.unreadable] == [(str(damaged), 2), (str(damaged), 4)]
        assert report.summary.records == 2 and report.summary.unreadable_records == 2 and report.found
        lines_seen = report.sql("SELECT line FROM records ORDER BY line")["line"].tolist()
        assert lines_seen == [1, 3]  # line numbers stay those of the file
    out = run_cli(damaged, "--json")
    assert out.returncode == 1
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert rows[0] == {"source": str(damaged), "line": 2, "unreadable": rows[0]["unreadable"]}
    assert rows[-1]["summary"]["unreadable_records"] == 2


def test_unusable_sources_are_coded_refusals(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    huge = tmp_path / "huge"
    shutil.copytree(a, huge)
    with open(huge / "attestations.jsonl", "ab") as fh:
        fh.write(b'{"executionId": "' + b"x" * (2 * 1024 * 1024) + b'"}\n')
    with pytest.raises(ArchiveError) as info:
        find_replays([a, huge])
    assert info.value.code == "ARC-006"
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(AuditStoreError) as info:
        find_replays([foreign])
    assert info.value.code == "AUD-002" and "not a parmana audit database" in info.value.reason
    deep = tmp_path / "deep.zip"
    with zipfile.ZipFile(deep, "w") as zf:
        for f in sorted(p for p in a.rglob("*") if p.is_file()):
            zf.write(f, "export/" + f.relative_to(a).as_posix())
    empty = tmp_path / "empty"
    empty.mkdir()
    for source, code, words in ((huge, "ARC-006", "1 MiB"), (foreign, "AUD-002", "not a parmana audit"),
                                (deep, "ARC-005", "one level too deep"), (empty, "ARC-005", "is empty"),
                                (tmp_path / "nowhere", "ARC-001", "no archive")):
        out = run_cli(a, source)
        assert out.returncode == 2 and code in out.stderr and words in out.stderr, out.stderr


def test_html_report_carries_a_chart(tmp_path, policy_dir, clock):
    a, _ = _runtime_archive(tmp_path, "a", policy_dir, clock, [claims_request()])
    b, _ = _runtime_archive(tmp_path, "b", policy_dir, clock, [claims_request()])
    with find_replays([a, b]) as report:
        html = report.to_html()
        assert "data:image/png;base64," in html and "replays by source" in html
        assert report.by_source().to_dict()["executions of replayed fingerprints"] == {str(a): 1, str(b): 1}
