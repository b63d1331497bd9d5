"""Bulk verification on a real Dask LocalCluster (worker processes): the same reports as one machine.

One module-scoped cluster of two single-threaded worker processes; blocks of 64 lines so that even the
small archives here are split into many tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")  # the dask extra is in the dev set: make test always has it

from parmana_lab import Runtime, default_policy_dir, verify_archive  # noqa: E402
from parmana_lab.batch import verify_archives  # noqa: E402

from .test_verify import copy, lines, write_lines  # noqa: E402

BLOCK = 64


def _cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def client():
    yield from _cluster()


@pytest.fixture
def doomed_client():
    """A cluster of its own for a test that kills a worker: the others never wait on a nanny's restart."""
    yield from _cluster()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from benchmarks.bench_runtime import loan_requests

    root = tmp_path_factory.mktemp("cluster")
    with Runtime(root / "ws", policies=default_policy_dir()) as rt:
        rt.execute_many(loan_requests(700, seed=3))
        archive = Path(rt.export_archive(root / "archive").path)
        rt.export_archive(root / "archive.zip", format="zip")
        rt.export_archive(root / "archive.tar.gz", format="tar.gz")
        rt.export_archive(root / "filtered", policy_id="loan-approval", until="2100-01-01")
        store = rt.trust_store()
    return root, archive, store


def same(a, b) -> None:
    """Every row and every archive-level finding alike."""
    assert a.summary == b.summary
    assert a.archive_checks == b.archive_checks
    assert a.to_pandas().equals(b.to_pandas())
    assert [r.model_dump() for r in a.failures()] == [r.model_dump() for r in b.failures()]


def both(path, store, client, tmp_path, **kw):
    here = verify_archive(path, store, progress=False, chunk_lines=BLOCK, **kw)
    there = verify_archive(path, store, progress=False, client=client, chunk_lines=BLOCK, scratch=tmp_path / "scratch", **kw)
    same(here, there)
    return there


@pytest.mark.parametrize("name", ["archive", "archive.zip", "archive.tar.gz", "filtered"])
def test_clean_archives_of_every_container_give_the_same_report(made, client, tmp_path, name):
    root, _, store = made
    report = both(root / name, store, client, tmp_path)
    assert report.status == "verified" and report.summary.total == 700


def test_one_archive_unpacked_by_many_tasks_at_once_is_one_whole_tree(made, client, tmp_path):
    """The same .zip given several times (or a task run twice) unpacks concurrently into one folder, never a half one:
    each run unpacks into a folder of its own and renames it into place."""
    from parmana_lab.cluster import _unwrap, unpack_task

    root, _, store = made
    futures = [client.submit(unpack_task, str(root / "archive.zip"), str(tmp_path / "unpacked"), pure=False)
               for _ in range(8)]
    paths = {_unwrap(f.result()) for f in futures}
    assert len(paths) == 1
    assert verify_archive(Path(paths.pop()), store, progress=False).status == "verified"
    assert not list((tmp_path / "unpacked").glob("*.part-*"))  # no run's own folder is left behind


def _edit_line(items, i, field, value):
    att = json.loads(items[i])
    att[field] = value
    items[i] = json.dumps(att, separators=(",", ":"), sort_keys=True).encode()


TAMPERS = {
    "signature": lambda items, sig: _edit_line(items, 5, "issuedAt", "2030-01-01T00:00:00.000Z"),
    "malformed": lambda items, sig: items.__setitem__(70, b"{not json"),
    "deleted-line": lambda items, sig: items.pop(100),
    "reordered": lambda items, sig: items.insert(3, items.pop(200)),
    "replayed": lambda items, sig: items.append(items[10]),
    "signals-edited": lambda items, sig: sig.__setitem__(12, sig[12].replace(b'"credit_score":', b'"credit_score":1')),
    "signals-line-deleted": lambda items, sig: sig.pop(300),  # out of step: one worker verifies it whole
    "empty": lambda items, sig: (items.clear(), sig.clear()),
}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_every_tampered_kind_gives_the_same_report(made, client, tmp_path, kind):
    _, archive, store = made
    bad = copy(archive, tmp_path, "bad")
    items, sig = lines(bad), (bad / "signals.jsonl").read_bytes().splitlines()
    TAMPERS[kind](items, sig)
    write_lines(bad, items)
    (bad / "signals.jsonl").write_bytes(b"".join(s + b"\n" for s in sig))
    report = both(bad, store, client, tmp_path)
    assert report.status == "failed"


def test_archive_level_damage_and_a_packed_copy_of_it(made, client, tmp_path):
    _, archive, store = made
    bad = copy(archive, tmp_path, "keys")
    (bad / "keys.json").write_text('{"keys": []}')
    (bad / "notes.txt").write_text("hello")
    both(bad, store, client, tmp_path)
    packed = tmp_path / "bad.tar.gz"
    with tarfile.open(packed, "w:gz") as tf:
        for p in sorted(bad.rglob("*")):
            tf.add(p, arcname=p.relative_to(bad).as_posix(), recursive=False)
    assert {c.code for c in both(packed, store, client, tmp_path).archive_checks} == {"FILE_HASH_MISMATCH"}
    (bad / "manifest.json").unlink()
    assert both(bad, store, client, tmp_path).summary.archive_codes == ["MANIFEST_MALFORMED"]


def test_several_archives_and_an_unusable_one(made, client, tmp_path):
    root, archive, store = made
    bad = copy(archive, tmp_path, "bad")
    items = lines(bad)
    _edit_line(items, 1, "issuedAt", "2031-01-01T00:00:00.000Z")
    write_lines(bad, items)
    paths = [root / "archive.zip", bad, tmp_path / "missing.zip", root / "filtered"]
    local = verify_archives(paths, store, progress=False, chunk_lines=BLOCK)
    there = verify_archives(paths, store, progress=False, client=client, scratch=tmp_path / "s", chunk_lines=BLOCK,
                            results_dir=tmp_path / "rows")
    assert [a.model_dump(exclude={"rows_file"}) for a in local.archives] == \
           [a.model_dump(exclude={"rows_file"}) for a in there.archives]
    assert [a.status for a in there.archives] == ["verified", "failed", "unusable", "verified"]
    assert there.summary["attestations"]["total"] == 2100 and there.archives[2].error["code"] == "ARC-001"
    assert len(there.failures()) == 1 and Path(there.archives[1].rows_file).read_text().count("\n") == 701
    assert "4 archives" in repr(there) and "1 failed" in repr(there)


def test_a_worker_killed_mid_run_loses_nothing_and_counts_nothing_twice(made, doomed_client, tmp_path):
    client = doomed_client
    root, archive, store = made
    bigger = tmp_path / "bigger"
    shutil.copytree(archive, bigger)
    expected = verify_archive(bigger, store, progress=False, chunk_lines=8)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def kill_once(done, total):
        if not killed and done >= 64:
            os.kill(victim, signal.SIGKILL)
            killed.append(done)

    report = verify_archive(bigger, store, progress=kill_once, client=client, chunk_lines=8, scratch=tmp_path / "s")
    assert killed, "the worker was never killed"
    same(expected, report)


def test_the_command_line_on_a_local_cluster_prints_what_one_machine_prints(made, tmp_path):
    import subprocess
    import sys

    from .override_setup import REPO

    root, archive, store = made
    trust = tmp_path / "trust.json"
    trust.write_text(store.to_json())

    def run(*extra):
        out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "verify", str(root / "archive.zip"), str(tmp_path / "no.zip"),
                              "--trust", str(trust), "--json", *extra], capture_output=True, text=True, cwd=REPO)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    here, there = run(), run("--scheduler", "local:2", "--scratch", str(tmp_path / "scratch"))
    assert here.returncode == there.returncode == 2  # one archive missing: unusable, the other still verified
    assert here.stdout == there.stdout and "dashboard" in there.stderr
    bad = run("--scheduler", "tcp://127.0.0.1:9")
    assert bad.returncode == 2 and "ARC-010" in bad.stderr


@pytest.fixture(scope="module")
def replay_sources(made, tmp_path_factory):
    """Two runtimes sharing 40 requests (replays), copies (a folder and its zip), an audit DB file, a damaged copy."""
    from benchmarks.bench_runtime import loan_requests

    root, archive, _ = made
    other = tmp_path_factory.mktemp("other")
    with Runtime(other / "ws", policies=default_policy_dir()) as rt:
        rt.execute_many(loan_requests(700, seed=3)[:40] + loan_requests(200, seed=9))
        second = Path(rt.export_archive(other / "second.tar.gz", format="tar.gz").path)
    damaged = other / "damaged"
    shutil.copytree(archive, damaged)
    items = lines(damaged)
    items[7] = b"{broken"
    _edit_line(items, 9, "issuedAt", "2032-01-01T00:00:00.000Z")  # a reused executionId with other content
    write_lines(damaged, items)
    return [archive, root / "archive.zip", second, other / "ws" / "audit.duckdb", damaged]


def same_replays(a, b) -> None:
    assert a.summary == b.summary and a.headline() == b.headline()
    assert a.executions.equals(b.executions)
    assert a.reused_ids.astype(str).equals(b.reused_ids.astype(str))
    assert a.unreadable == b.unreadable and a.findings() == b.findings()


def test_find_replays_on_the_cluster_equals_the_local_call(replay_sources, client, tmp_path):
    from parmana_lab import find_replays

    with find_replays(replay_sources) as here, find_replays(replay_sources, client=client, scratch=tmp_path) as there:
        same_replays(here, there)
        s = there.summary
        assert s.replayed_fingerprints == 40 and s.reused_execution_ids == 1 and s.unreadable_records == 1 and s.copies > 0
        assert there.sql("SELECT count(*) AS n FROM records")["n"][0] == s.records  # your own SQL still works


def test_a_worker_killed_during_find_replays_changes_nothing(replay_sources, doomed_client, tmp_path):
    import threading
    import time

    from parmana_lab import find_replays

    client = doomed_client
    victim = sorted(client.run(os.getpid).values())[-1]
    timer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    sources = replay_sources * 3
    with find_replays(sources) as here:
        timer.start()
        began = time.monotonic()
        try:
            with find_replays(sources, client=client, scratch=tmp_path) as there:
                took = time.monotonic() - began
                same_replays(here, there)
        finally:
            timer.join()
    assert took > 0.3, f"the run ended ({took:.2f} s) before the worker was killed"  # so the kill landed mid-run


def test_workers_on_another_duckdb_are_refused_before_anything_is_grouped(replay_sources, doomed_client, tmp_path):
    """Replay buckets are DuckDB's hash: a worker whose DuckDB differs from the client's would split groups silently."""
    from parmana_lab import ArchiveError, find_replays

    doomed_client.run(lambda: setattr(__import__("duckdb"), "__version__", "0.0.1"))  # real workers, another version
    with pytest.raises(ArchiveError) as info:
        find_replays(replay_sources, client=doomed_client, scratch=tmp_path)
    assert info.value.code == "ARC-010" and "DuckDB 0.0.1" in info.value.reason


def test_audit_replays_on_a_local_cluster_prints_what_one_machine_prints(replay_sources, tmp_path):
    import subprocess
    import sys

    from .override_setup import REPO

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "parmana_lab.cli", "audit", "replays", *map(str, replay_sources), "--json",
                               *extra], capture_output=True, text=True, cwd=REPO)

    here, there = run(), run("--scheduler", "local:2", "--scratch", str(tmp_path))
    assert here.returncode == there.returncode == 1 and "Traceback" not in there.stderr
    assert here.stdout == there.stdout


@pytest.mark.parametrize("kind", ["archive", "archive.zip", "what-if", "signals-edited", "signals-line-deleted"])
def test_reproduce_on_the_cluster_equals_the_local_call(made, client, tmp_path, kind):
    from parmana_lab import reproduce

    root, archive, _ = made
    source, options = root / "archive", {}
    if kind == "archive.zip":
        source = root / "archive.zip"
    elif kind == "what-if":
        options = {"policy_versions": {"loan-approval": "1.0.0"}, "policies": default_policy_dir()}
    elif kind.startswith("signals"):
        source = copy(archive, tmp_path, "bad")
        items, sig = lines(source), (source / "signals.jsonl").read_bytes().splitlines()
        TAMPERS[kind](items, sig)
        (source / "signals.jsonl").write_bytes(b"".join(s + b"\n" for s in sig))
    here = reproduce(source, **options)
    there = reproduce(source, client=client, scratch=tmp_path / "s", **options)
    assert there.rows == here.rows and there.summary == here.summary
    if kind == "what-if":
        assert here.summary.statuses["DIVERGED"] > 0
