import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from parmana_lab import Runtime, canonicalize
from parmana_lab.archive import ArchiveError, iter_lines, open_archive
from parmana_lab.imports import ImportRefused, import_archive

from .conftest import REPO, claims_request, loan_request


def cli(*args):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_archive_layout_and_manifest(exported):
    path, store = exported
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert names[:6] == ["attestations.jsonl", "checkpoint", "keys.json", "manifest.json", "overrides.jsonl",
                         "policies/access-request/1.0.0/policy.json"]
    assert "signals.jsonl" in names
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest) == {"format", "formatVersion", "createdAt", "runtime", "runtimeHash", "count", "files", "merkleRoot",
                             "signerKeyId", "signature"}
    assert manifest["count"] == 15 and set(manifest["files"]) == set(names) - {"manifest.json"}
    assert "PRIVATE" not in "".join((path / n).read_text() for n in names)


def test_export_refuses_to_overwrite_and_filters(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute(loan_request(score=450))
        clock.advance(3600)
        rt.execute(claims_request())
        later = rt.export_archive(tmp_path / "later", since="2026-01-15T10:00:00.000Z")
        loans = rt.export_archive(tmp_path / "loans", policy_id="loan-approval")
        with pytest.raises(ArchiveError) as info:
            rt.export_archive(tmp_path / "loans")
    assert info.value.code == "ARC-007"
    assert later.count == 1 and later.policies == ["claims-approval@1.0.0"]
    assert loans.count == 1 and loans.policies == ["loan-approval@1.0.0"]
    assert sorted(p.name for p in (tmp_path / "loans" / "policies").iterdir()) == ["loan-approval"]


def test_export_time_filters_are_times_not_text(tmp_path, policy_dir, clock):
    """Issued 09:30:00.000Z and 10:30:00.000Z: filters written another way must select by time."""
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute(loan_request(score=450))
        clock.advance(3600)
        rt.execute(claims_request())
        bounds = [("since", "2026-01-15T10:30:00Z"), ("since", "2026-01-15T11:30:00+01:00"), ("until", "2026-01-16"),
                  ("until", "2026-01-15T10:30:00.000Z"), ("since", "2026-01-15")]
        counts = [rt.export_archive(tmp_path / f"out{i}", **{k: v}).count for i, (k, v) in enumerate(bounds)]
        assert counts == [1, 1, 2, 1, 2]
        for bad in ({"since": "yesterday"}, {"until": "2026-01-15T10:00:00"}, {"since": "2026-02-30"}):
            with pytest.raises(ArchiveError) as info:
                rt.export_archive(tmp_path / "refused", **bad)
            assert info.value.code == "ARC-008" and repr(next(iter(bad.values()))) in info.value.reason
            assert not (tmp_path / "refused").exists()


def _zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, data)
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("name", "code"),
    [("../evil.txt", "ARC-002"), ("/etc/evil.txt", "ARC-002"), ("a/../../evil.txt", "ARC-002"), ("C:/evil.txt", "ARC-002")],
)
def test_zip_paths_outside_the_target_are_refused(tmp_path, name, code):
    bad = _zip_with(tmp_path / "bad.zip", name)
    with pytest.raises(ArchiveError) as info, open_archive(bad):
        pass
    assert info.value.code == code and name in info.value.reason
    assert not (tmp_path / "evil.txt").exists()


def test_links_and_special_files_are_refused(tmp_path):
    with pytest.raises(ArchiveError) as info, open_archive(_zip_with(tmp_path / "l.zip", "link", b"/etc/passwd", symlink=True)):
        pass
    assert info.value.code == "ARC-003"
    link = tarfile.TarInfo("attestations.jsonl")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ArchiveError) as info, open_archive(_tar_with(tmp_path / "l.tar.gz", link)):
        pass
    assert info.value.code == "ARC-003"
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(ArchiveError) as info, open_archive(_tar_with(tmp_path / "f.tar.gz", fifo)):
        pass
    assert info.value.code == "ARC-003"
    up = tarfile.TarInfo("../up.txt")
    up.size = 1
    with pytest.raises(ArchiveError) as info, open_archive(_tar_with(tmp_path / "u.tar.gz", up, b"x")):
        pass
    assert info.value.code == "ARC-002"


def test_decompression_bombs_and_absurd_sizes_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("attestations.jsonl", b"\0" * (50 * 1024 * 1024))
    with pytest.raises(ArchiveError) as info, open_archive(bomb):
        pass
    assert info.value.code == "ARC-004" and "bomb" in info.value.reason
    zeros = tarfile.TarInfo("attestations.jsonl")
    zeros.size = 20 * 1024 * 1024
    with pytest.raises(ArchiveError) as info, open_archive(_tar_with(tmp_path / "bomb.tar.gz", zeros, b"\0" * zeros.size)):
        pass
    assert info.value.code == "ARC-004" and "bomb" in info.value.reason
    noise = tarfile.TarInfo("attestations.jsonl")
    noise.size = 2 * 1024 * 1024
    big = _tar_with(tmp_path / "big.tar.gz", noise, os.urandom(noise.size))
    with pytest.raises(ArchiveError) as info, open_archive(big, max_bytes=1024 * 1024):
        pass
    assert info.value.code == "ARC-004" and "limit" in info.value.reason
    liar = tarfile.TarInfo("attestations.jsonl")
    liar.size = 10**12  # a header that lies about a member nothing follows
    (tmp_path / "liar.tar").write_bytes(liar.tobuf())
    with pytest.raises(ArchiveError) as info, open_archive(tmp_path / "liar.tar"):
        pass
    assert info.value.code in ("ARC-001", "ARC-004")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_text("plain text")
    with pytest.raises(ArchiveError) as info, open_archive(tmp_path / "x.zip"):
        pass
    assert info.value.code == "ARC-001"
    with pytest.raises(ArchiveError) as info, open_archive(tmp_path / "missing"):
        pass
    assert info.value.code == "ARC-001"


def test_oversized_lines_are_refused_without_reading_them_whole(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"short\n" + b"x" * 5000 + b"\nlast")
    with pytest.raises(ArchiveError) as info:
        list(iter_lines(tmp_path / "a.jsonl", max_line=1000))
    assert info.value.code == "ARC-006" and "line 2" in info.value.reason
    (tmp_path / "b.jsonl").write_bytes(b"y" * 3000)  # no newline at all: never held whole beyond a block
    with pytest.raises(ArchiveError):
        list(iter_lines(tmp_path / "b.jsonl", max_line=1000))
    (tmp_path / "c.jsonl").write_bytes(b"a\nb\n")
    assert list(iter_lines(tmp_path / "c.jsonl")) == [b"a", b"b"]


def test_import_is_idempotent_and_reports_conflicts(exported, tmp_path, policy_dir):
    path, store = exported
    with Runtime(tmp_path / "auditor", policies=policy_dir) as rt:
        first = import_archive(path, rt.db, store)
        again = import_archive(path, rt.db, store)
        assert (first.inserted, first.already_present, first.conflicts) == (15, 0, [])
        assert (again.inserted, again.already_present, again.conflicts) == (0, 15, [])
        assert rt.db.count() == 15 and rt.db.count("signals") == 15 and first.policies_added == 5
        # a different record under an existing executionId is reported, never written
        bad = tmp_path / "conflicting"
        shutil.copytree(path, bad)
        lines = (bad / "attestations.jsonl").read_bytes().splitlines()
        att = json.loads(lines[0])
        att["decision"]["reason"] = "rewritten history"
        lines[0] = canonicalize(att)
        (bad / "attestations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        before = rt.db.sql("SELECT canonical FROM attestations WHERE executionId = ?", [att["executionId"]]).iloc[0, 0]
        with pytest.raises(ImportRefused) as info:  # it does not verify: refused whole, before anything is written
            import_archive(bad, rt.db, store)
        assert info.value.code == "ARC-009" and "SIGNATURE_INVALID" in info.value.reason
        result = import_archive(bad, rt.db, unverified=True)  # the user insists: still never overwritten
        assert result.inserted == 0 and result.already_present == 14 and result.status == "unverified"
        assert result.conflicts == [{"executionId": att["executionId"], "line": 1, "with": "the record already in the audit DB",
                                     "archive_side": "unverified", "db_side": "imported after verification"}]
        after = rt.db.sql("SELECT canonical FROM attestations WHERE executionId = ?", [att["executionId"]]).iloc[0, 0]
        assert after == before


def test_cli_export_verify_import_round_trip(tmp_path):
    ws = tmp_path / "ws"
    assert cli("--workspace", ws, "run", REPO / "sample_requests" / "claims-approval.json").returncode == 0
    assert cli("--workspace", ws, "export", "--out", tmp_path / "a.zip").returncode == 0
    assert cli("--workspace", ws, "export", "--out", tmp_path / "a.tar.gz", "--no-signals").returncode == 0
    trust = tmp_path / "trust.json"
    trust.write_text(cli("--workspace", ws, "keys", "--json").stdout)
    out = cli("verify", tmp_path / "a.zip", tmp_path / "a.tar.gz", "--json", "--trust", trust)
    assert out.returncode == 0, out.stdout
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 3 + 1 + 3 + 1 + 1
    assert set(rows[0]) == {"source", "executionId", "line", "status", "code", "checks", "hint"}
    assert rows[0]["source"] == str(tmp_path / "a.zip") and [r["line"] for r in rows[:3]] == [1, 2, 3]
    assert rows[3]["archive"]["status"] == "verified" and rows[3]["archive"]["codes"] == []
    assert {k: rows[3]["archive"][k] for k in ("total", "verified", "warnings", "failed")} == \
        {"total": 3, "verified": 3, "warnings": 0, "failed": 0}
    assert rows[4]["checks"]["fingerprint"] == "not_checkable" and rows[4]["code"] == "VERIFIED"
    assert rows[-1]["summary"] == {"archives": 2, "verified": 2, "failed": 0, "unusable": 0, "exit": 0, "codes": {"VERIFIED": 6},
                                   "attestations": {"total": 6, "verified": 6, "warnings": 0, "failed": 0}}
    text = cli("--workspace", ws, "verify", tmp_path / "a.zip").stdout  # default trust: the workspace's
    assert "VERIFIED" in text and "3 attestations: 3 verified" in text
    no_trust = cli("--workspace", tmp_path / "auditor", "import", tmp_path / "a.zip", "--json")
    assert no_trust.returncode == 2 and "KEY-004" in no_trust.stderr  # nothing to verify it with: nothing imported
    imported = cli("--workspace", tmp_path / "auditor", "import", tmp_path / "a.zip", "--trust", trust, "--json")
    first, summary = (json.loads(x) for x in imported.stdout.splitlines())
    assert imported.returncode == 0 and first["inserted"] == 3 and first["status"] == "verified"
    assert summary["summary"]["exit"] == 0 and summary["summary"]["imported"] == 1


def test_cli_verify_exit_codes(exported, tmp_path):
    path, store = exported
    trust = tmp_path / "trust.json"
    trust.write_text(store.to_json())
    lines = (path / "attestations.jsonl").read_bytes().splitlines()
    (path / "attestations.jsonl").write_bytes(b"\n".join(lines[1:]) + b"\n")
    failed = cli("verify", path, "--json", "--trust", trust)
    assert failed.returncode == 1
    last = json.loads(failed.stdout.splitlines()[-2])["archive"]
    assert last["status"] == "failed" and {"COUNT_MISMATCH", "MERKLE_ROOT_MISMATCH"} <= set(last["codes"])
    assert (last["total"], last["verified"], last["failed"]) == (14, 14, 0)  # only the archive-level checks failed
    text = cli("verify", path, "--trust", trust).stdout
    assert "FAILED  14 attestations: 14 verified, 0 warnings, 0 failed; archive checks failed: COUNT_MISMATCH" in text
    unusable = cli("verify", tmp_path / "nowhere.zip", "--trust", trust)
    assert unusable.returncode == 2 and "[ARC-001@archive]" in unusable.stderr
    no_trust = cli("--workspace", tmp_path / "empty", "verify", path)
    assert no_trust.returncode == 2 and "--trust" in no_trust.stderr


def test_import_streams_in_chunks_with_the_same_outcome(exported, tmp_path, policy_dir):
    """Repeated and conflicting lines inside the archive, a malformed line and chunk boundaries in between."""
    path, _ = exported
    odd = tmp_path / "odd"
    shutil.copytree(path, odd)
    lines = (odd / "attestations.jsonl").read_bytes().splitlines()
    edited = json.loads(lines[2])
    edited["decision"]["reason"] = "someone else's story"
    lines = [*lines, lines[0], canonicalize(edited), b"not json"]  # lines 16 (repeat), 17 (conflict), 18 (malformed)
    (odd / "attestations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    results, contents = [], []
    for n, chunk in enumerate((1, 2, 7, 20_000)):
        with Runtime(tmp_path / f"auditor{n}", policies=policy_dir) as rt:
            results.append(import_archive(odd, rt.db, unverified=True, chunk_lines=chunk).model_dump(exclude={"archive"}))
            contents.append((rt.db.sql("SELECT seq, executionId, canonical FROM attestations ORDER BY seq").values.tolist(),
                             rt.db.sql("SELECT * FROM signals ORDER BY executionId").values.tolist()))
    assert all(r == results[0] for r in results) and all(c == contents[0] for c in contents)
    result = results[0]
    assert result["inserted"] == 15 and result["already_present"] == 0 and len(contents[0][1]) == 15
    assert result["conflicts"] == [{"executionId": edited["executionId"], "line": 17, "with": "an earlier line of the archive"}]
    assert [m["line"] for m in result["malformed"]] == [18]
    assert [row[0] for row in contents[0][0]] == list(range(1, 16))  # audit order kept, no gaps
