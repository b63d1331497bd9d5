"""Faults around the runtime: a second process, a full disk, a read-only workspace, a deleted key.

Each must end in a structured refusal (code, stage, reason), never a
traceback, and leave the audit DB whole: every attestation handed back is in
it, nothing is half-written, and what was refused can be retried.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parmana_lab import AuditDB, AuditStoreError, Keyring, Runtime, verify_attestation
from parmana_lab.imports import import_archive

from .conftest import FakeClock, claims_request
from .crash_child import request_for

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


def write_requests(path: Path, requests: list[dict]) -> Path:
    path.write_text(json.dumps(requests))
    return path


def assert_consistent(ws: Path, handed_back: list[str]) -> int:
    """The DB opens; every attestation handed back is in it and verifies; replay store, attestations and signals agree."""
    with AuditDB(ws / "audit.duckdb") as db:
        rows = db.sql("SELECT executionId, execution_fingerprint, canonical FROM attestations")
        recorded = set(rows["canonical"])
        assert [line for line in handed_back if line not in recorded] == []
        assert rows["execution_fingerprint"].is_unique
        confirmed = db.sql("SELECT execution_fingerprint FROM replay WHERE state IN ('CONFIRMED', 'PENDING_OVERRIDE')")
        assert set(confirmed["execution_fingerprint"]) == set(rows["execution_fingerprint"])
        assert db.count("signals") == len(rows)
    store = Keyring(ws / "keys").trust_store()
    assert all(verify_attestation(line, store).code == "VERIFIED" for line in handed_back)
    return len(rows)


# -- a second process ------------------------------------------------------------------------


@pytest.fixture
def holder(tmp_path, policy_dir):
    """A process holding the workspace's runtime open, as a notebook kernel does."""
    procs = []

    def start(ws: Path, seconds: float) -> subprocess.Popen:
        code = ("import sys, time\nfrom parmana_lab import Runtime\n"
                "rt = Runtime(sys.argv[1], policies=sys.argv[2])\nprint('ready', flush=True)\ntime.sleep(float(sys.argv[3]))\n"
                "rt.close()\n")
        proc = subprocess.Popen([sys.executable, "-c", code, str(ws), str(policy_dir), str(seconds)], stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        assert proc.stdout.readline() == "ready\n"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_every_command_explains_a_kernel_holding_the_db(tmp_path, policy_dir, holder):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir) as rt:
        rt.execute(claims_request())
        archive = rt.export_archive(tmp_path / "archive").path
    kernel = holder(ws, 60)
    requests = write_requests(tmp_path / "r.json", [claims_request(risk_score=7)])
    db = ws / "audit.duckdb"
    for args in (["run", "--policies", policy_dir, requests], ["export", "--out", tmp_path / "out"], ["import", archive],
                 ["audit", "replays", db], ["audit", "reproduce", db]):
        out = cli("--workspace", ws, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert "[AUD-001@audit]" in out.stderr and "in use by another process" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
    assert f"process {kernel.pid}" in cli("--workspace", ws, "run", requests).stderr  # names the holder
    waited = cli("--workspace", ws, "--wait", 0.5, "run", requests)
    assert waited.returncode == 2 and "[AUD-001@audit]" in waited.stderr and "(waited 0.5 s)" in waited.stderr
    assert not (tmp_path / "out").exists()


def test_wait_lets_the_second_process_proceed_once_the_first_lets_go(tmp_path, policy_dir, holder):
    ws = tmp_path / "ws"
    holder(ws, 1.5)
    requests = write_requests(tmp_path / "r.json", [claims_request(risk_score=s) for s in range(5)])
    out = cli("--workspace", ws, "--wait", 60, "run", "--json", "--policies", policy_dir, requests)
    assert out.returncode == 0, out.stderr
    assert assert_consistent(ws, out.stdout.splitlines()[:-1]) == 5


def test_two_processes_at_once_never_confirm_a_fingerprint_twice(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    Runtime(ws, policies=policy_dir).close()  # the key exists before both start
    first = write_requests(tmp_path / "a.json", [request_for(0, i) for i in range(0, 60)])
    second = write_requests(tmp_path / "b.json", [request_for(0, i) for i in range(30, 90)])
    procs = [subprocess.Popen([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(ws), "--wait", "120", "run",
                               "--json", "--policies", str(policy_dir), str(f)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for f in (first, second)]
    outputs = [p.communicate() for p in procs]
    assert all("Traceback" not in err for _, err in outputs)
    lines = [line for out, _ in outputs for line in out.splitlines()]
    attested = [line for line in lines if not line.startswith(('{"error"', '{"summary"'))]
    refused = [json.loads(line)["error"]["code"] for line in lines if line.startswith('{"error"')]
    assert len(attested) == 90 and refused == ["INV-013"] * 30  # the 30 shared requests ran once, wherever first
    assert assert_consistent(ws, attested) == 90


# -- a full disk -------------------------------------------------------------------------------

DISK_FULL_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from parmana_lab import ParmanaError, Runtime
    sys.path.insert(0, sys.argv[3])
    from tests.crash_child import request_for
    rt = Runtime(sys.argv[1], policies=sys.argv[2])
    limit = int(sys.argv[4])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    index = 0
    try:
        while True:
            for result in rt.execute_many([request_for(1, index + k) for k in range(200)]):
                print("A " + result.canonical().decode() if not isinstance(result, ParmanaError) else "R " + result.code, flush=True)
            index += 200
    except ParmanaError as exc:
        print("STOP " + json.dumps(exc.to_dict()), flush=True)
    rt.close()
""")


def test_disk_full_mid_run_is_refused_and_loses_nothing(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir) as rt:
        rt.execute_many([request_for(0, i) for i in range(10)])
    limit = (ws / "audit.duckdb").stat().st_size + 1_500_000  # room for a few batches, then full
    out = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(ws), str(policy_dir), str(REPO), str(limit)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    stop = json.loads(lines[-1].removeprefix("STOP "))
    assert stop["code"] == "AUD-006" and "size limit is full" in stop["reason"] and "can be retried" in stop["reason"]
    handed_back = [line[2:] for line in lines if line.startswith("A ")]
    assert len(handed_back) >= 200  # some batches committed before the disk filled
    assert assert_consistent(ws, handed_back) == 10 + len(handed_back)
    # the failed batch is retryable once its hold expires
    clock = FakeClock(start=FakeClock().now.replace(year=2100))
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        failed = len(handed_back)
        results = rt.execute_many([request_for(1, i) for i in range(failed, failed + 200)])
        assert all(not isinstance(r, Exception) for r in results)


def test_cli_on_a_full_disk_prints_a_refusal_not_a_traceback(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    Runtime(ws, policies=policy_dir).close()
    requests = write_requests(tmp_path / "r.json", [request_for(0, i) for i in range(3000)])
    limit = (ws / "audit.duckdb").stat().st_size + 200_000

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = cli("--workspace", ws, "run", "--json", "--policies", policy_dir, requests, preexec_fn=full_disk)
    assert out.returncode == 2 and "[AUD-006@audit]" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert assert_consistent(ws, out.stdout.splitlines()) == len(out.stdout.splitlines())


def test_import_on_a_full_disk_is_refused_and_completed_by_importing_again(tmp_path, policy_dir):
    with Runtime(tmp_path / "producer", policies=policy_dir) as rt:
        rt.execute_many([request_for(0, i) for i in range(3000)])
        archive = rt.export_archive(tmp_path / "archive").path
    ws = tmp_path / "ws"
    Runtime(ws, policies=policy_dir).close()
    limit = (ws / "audit.duckdb").stat().st_size + 300_000

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    trust = tmp_path / "producer" / "keys" / "trust.json"
    out = cli("--workspace", ws, "import", archive, "--trust", trust, "--json", preexec_fn=full_disk)
    assert out.returncode == 2 and "[AUD-006@audit]" in out.stderr and "Traceback" not in out.stderr, out.stderr
    again = cli("--workspace", ws, "import", archive, "--trust", trust, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.splitlines()[0])
    assert result["conflicts"] == [] and result["inserted"] + result["already_present"] == 3000
    with AuditDB(ws / "audit.duckdb") as db:
        assert db.count() == db.count("signals") == 3000


def test_import_stopped_by_duckdb_mid_chunk_says_why_and_is_completed_by_importing_again(tmp_path, policy_dir):
    """A statement failing inside a chunk (here DuckDB out of memory under a tiny cap) is AUD-006 naming
    the first error, not the "transaction is aborted" that any later statement would report."""
    with Runtime(tmp_path / "producer", policies=policy_dir) as rt:
        rt.execute_many([request_for(0, i) for i in range(3000)])
        archive = rt.export_archive(tmp_path / "archive").path
        trust = rt.trust_store()
    with AuditDB(tmp_path / "audit.duckdb") as db:
        db.connection.execute("SET memory_limit = '1MB'")
        with pytest.raises(AuditStoreError) as info:
            import_archive(archive, db, trust, chunk_lines=1000)
        assert info.value.code == "AUD-006" and "Out of Memory" in info.value.reason and "importing again" in info.value.reason
        db.connection.execute("RESET memory_limit")
        result = import_archive(archive, db, trust, chunk_lines=1000)
        assert result.conflicts == [] and result.inserted + result.already_present == 3000
        assert db.count() == db.count("signals") == 3000


# -- a read-only workspace ----------------------------------------------------------------------


def without_root_override() -> None:
    """In the child, before exec: drop the capabilities that let root ignore file modes (a no-op for other users)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def read_only_ws(policy_dir, tmp_path):
    """A workspace whose files and folders are all read-only (and root's override of that dropped in the children)."""
    root = tmp_path / "ro"
    ws = root / "ws"
    with Runtime(ws, policies=policy_dir) as rt:
        rt.execute(claims_request())
        archive = rt.export_archive(root / "archive").path
        (root / "trust.json").write_text(rt.trust_store().to_json())
    for path in [root, *root.rglob("*")]:
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o222)
    yield root, ws, Path(archive)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o200)


def test_read_only_workspace_refuses_clearly_and_stays_unchanged(read_only_ws, policy_dir, tmp_path):
    root, ws, archive = read_only_ws
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    requests = write_requests(tmp_path / "r.json", [claims_request(risk_score=3)])
    for args in (["run", "--policies", policy_dir, requests], ["keys", "rotate"], ["import", archive],
                 ["export", "--out", root / "out"]):
        out = cli("--workspace", ws, *args, preexec_fn=without_root_override)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("parmana-lab: [") and "Traceback" not in out.stderr, (args, out.stderr)
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before
    # what needs no writing still works: an auditor verifying from a read-only place
    out = cli("verify", archive, "--trust", root / "trust.json", "--no-progress", preexec_fn=without_root_override)
    assert out.returncode == 0, out.stderr


# -- keys --------------------------------------------------------------------------------------


def test_deleted_key_file_stops_signing_with_a_clear_refusal_and_nothing_recorded(tmp_path, policy_dir):
    ws = tmp_path / "ws"
    with Runtime(ws, policies=policy_dir) as rt:
        rt.execute(claims_request())
        key_file = rt.keyring.private_key_path(rt.signer_key_id)
    key_file.unlink()
    requests = write_requests(tmp_path / "r.json", [claims_request(risk_score=5)])
    out = cli("--workspace", ws, "run", "--policies", policy_dir, requests)
    assert out.returncode == 2 and "[KEY-001@keys]" in out.stderr and "keys rotate" in out.stderr
    assert "Traceback" not in out.stderr
    assert assert_consistent(ws, []) == 1  # the request was not executed


def test_unwritable_keys_folder_is_a_key_store_refusal_and_leaves_no_partial_key(tmp_path):
    from parmana_lab import Keyring, KeyStoreError

    ring = Keyring(tmp_path / "keys")
    ring.rotate()
    before = sorted(p.name for p in ring.dir.iterdir())

    # a trust store that cannot be replaced: a directory sits where its temporary file goes
    (ring.dir / ".trust.json.tmp").mkdir()
    with pytest.raises(KeyStoreError) as info:
        ring.rotate()
    assert info.value.code == "KEY-006" and "nothing was changed" in info.value.reason
    (ring.dir / ".trust.json.tmp").rmdir()
    assert sorted(p.name for p in ring.dir.iterdir()) == before  # the new private key was removed again
    assert stat.S_IMODE(ring.dir.stat().st_mode) == 0o700
