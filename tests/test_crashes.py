"""Crash consistency: SIGKILL a runtime at random points and check that nothing is lost or doubled.

``make test`` runs 50 kills; ``make stress`` runs 1,000 (PARMANA_KILLS). Every
25 cycles start from an empty workspace, so key and database creation are
killed too. PARMANA_KILL_SEED replays a run's random choices (timing still varies).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from parmana_lab import Runtime, verify_attestation
from parmana_lab.canonical import execution_fingerprint
from parmana_lab.merkle import merkle_root

from .crash_child import REPLAY_POOL, request_for

REPO = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("PARMANA_KILLS", "50"))
SEGMENT = 25
RECORDED = ("CONFIRMED", "PENDING_OVERRIDE")  # the states transaction 2 leaves (a pending_override execution awaits votes)


class CheckerClock:
    """Real time while checking; moved past every reservation's TTL before retrying leftovers."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.shift


def wait_until_ready(proc: subprocess.Popen, out: Path) -> None:
    """Until the child has printed its first line, "ready" (it has opened the workspace)."""
    deadline = time.monotonic() + 60
    while not out.read_bytes().startswith(b"ready\n"):
        assert proc.poll() is None, f"child died on its own: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "child never became ready"
        time.sleep(0.005)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"child exited by itself ({proc.returncode}): {err.decode()}"


def spawn_and_kill(ws: Path, policies: Path, cycle: int, seed: int, rng: random.Random, out: Path) -> tuple[list[bytes], str]:
    """Start a child, SIGKILL it at a random moment, return its complete output lines and where it was killed."""
    with open(out, "wb") as sink:  # a file, not a pipe: a full pipe would stall the child and bias the kill points
        proc = subprocess.Popen([sys.executable, "-m", "tests.crash_child", str(ws), str(policies), str(cycle), str(seed)],
                                cwd=REPO, stdout=sink, stderr=subprocess.PIPE)
    if rng.random() < 0.2:
        where = "while starting"  # imports, key creation, DB creation or migration, WAL replay
        time.sleep(rng.uniform(0.0, 0.6))
    else:
        where = "while executing"
        wait_until_ready(proc, out)
        time.sleep(rng.uniform(0.0, 0.25))
    kill(proc)
    lines = out.read_bytes().split(b"\n")[:-1]  # the last piece is empty or a line cut by the kill
    return [line for line in lines if line != b"ready"], where


def fingerprint_map(cycle: int, wanted: set[str]) -> dict[str, dict]:
    """Requests for the leftover fingerprints: this cycle's, or an earlier cycle's replayed ones."""
    found: dict[str, dict] = {}
    candidates = [(c, i) for c in range(cycle) for i in range(REPLAY_POOL)]
    index = 0
    while wanted - found.keys():
        batch = candidates or [(cycle, i) for i in range(index, index + 5000)]
        if not candidates:
            index += 5000
            assert index < 2_000_000, f"no request for fingerprints {wanted - found.keys()}"
        candidates = []
        for c, i in batch:
            request = request_for(c, i)
            fp = execution_fingerprint(request["policyId"], request["policyVersion"], request["signals"])
            if fp in wanted:
                found[fp] = request
    return found


def check_after_kill(ws: Path, policies: Path, cycle: int, received: dict[str, str], new_lines: list[bytes], stats: Counter) -> None:
    clock = CheckerClock()  # real time: a key this creates (the child died first) must be valid for the next child
    with Runtime(ws, policies=policies, clock=clock) as rt:  # the DB opens (WAL replayed)
        store = rt.trust_store()
        for line in new_lines:
            if line.startswith(b"A "):
                result = verify_attestation(line[2:], store)
                assert result.code == "VERIFIED", result
                received[result.executionId] = line[2:].decode()
            else:
                stats[line.decode()] += 1
        rows = rt.db.sql("SELECT executionId, execution_fingerprint, canonical FROM attestations")
        recorded = dict(zip(rows["executionId"], rows["canonical"]))
        missing = [eid for eid, line in received.items() if recorded.get(eid) != line]
        assert missing == [], f"attestations handed back but not in the audit DB: {missing[:3]}"
        assert rows["execution_fingerprint"].is_unique, "a fingerprint was confirmed twice"
        replay = rt.db.sql("SELECT execution_fingerprint, state FROM replay")
        confirmed = set(replay.loc[replay["state"].isin(RECORDED), "execution_fingerprint"])
        assert confirmed == set(rows["execution_fingerprint"]), "replay store and attestations disagree"
        signals = rt.db.sql("SELECT count(*) AS n FROM signals")["n"][0]
        assert signals == len(rows), "an attestation without its signals (or the reverse): half-written"
        checkpoint = rt.log.checkpoint()  # the log's leaves and subtree hashes were written with the records
        assert checkpoint.size == len(rows) and checkpoint.root.hex() == merkle_root(
            line.encode() for line in rt.db.sql("SELECT canonical FROM attestations ORDER BY log_index")["canonical"])
        leftovers = set(replay.loc[~replay["state"].isin(RECORDED), "execution_fingerprint"])
        if leftovers:
            stats["kills that left reservations"] += 1
            stats["reservations retried"] += len(leftovers)
            clock.shift = timedelta(hours=1)
            for fp, request in fingerprint_map(cycle, leftovers).items():
                att = rt.execute(request)  # expired reservation: the retry must succeed
                assert att.execution_fingerprint == fp
                received[att.executionId] = att.canonical().decode()


def test_sigkill_at_random_points_loses_nothing_and_doubles_nothing(tmp_path, policy_dir):
    seed = int(os.environ.get("PARMANA_KILL_SEED") or random.randrange(2**31))
    rng = random.Random(seed)
    stats: Counter = Counter()
    received: dict[str, str] = {}
    ws = tmp_path / "ws"
    for kill in range(KILLS):
        if kill % SEGMENT == 0:  # a fresh workspace: creation gets killed too
            ws = tmp_path / f"ws{kill // SEGMENT}"
            received = {}
        cycle = kill % SEGMENT
        new_lines, where = spawn_and_kill(ws, policy_dir, cycle, rng.randrange(2**31), rng, tmp_path / "out")
        stats[f"killed {where}"] += 1
        stats["results reported before the kill"] += len(new_lines)
        try:
            check_after_kill(ws, policy_dir, cycle, received, new_lines, stats)
        except AssertionError as exc:
            raise AssertionError(f"after kill {kill} ({where}), PARMANA_KILL_SEED={seed}: {exc}") from None
    print(f"\n{KILLS} kills, seed {seed}: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    assert stats["killed while executing"] and stats["results reported before the kill"]
