"""SIGKILL a process at random points while it submits votes: never a half-recorded vote, never two outcomes.

``make test`` runs 30 kills (PARMANA_OVERRIDE_KILLS for more). Each submission is one transaction: the vote and, when
it decides, the signed outcome and the replay state commit together or not at all.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import defaultdict

from parmana_lab import Runtime
from parmana_lab.canonical import canonicalize
from parmana_lab.dsse import envelope_hash
from parmana_lab.overrides import record_of, sign_resolution

from .override_setup import REPO, make_desk, payment
from .test_crashes import kill, wait_until_ready

KILLS = int(os.environ.get("PARMANA_OVERRIDE_KILLS", "30"))
EXECUTIONS = 150


def check_store(ws, printed: list[str]) -> int:
    """Every record whole and named by its hash; one outcome per request, present exactly when two approvals are in."""
    with Runtime(ws) as rt:
        rows = rt.db.sql("SELECT kind, hash, executionId, request_hash, envelope FROM override_records ORDER BY seq")
        states = dict(rt.db.connection.execute("SELECT executionId, state FROM replay").fetchall())
    votes, outcomes = defaultdict(set), defaultdict(list)
    for kind, h, _eid, request_hash, envelope in rows.itertuples(index=False):
        record = record_of(envelope)
        assert record.kind == kind and record.hash == h == envelope_hash(record.envelope)
        if kind == "resolution":
            votes[request_hash].add(record.body["approverId"])
        elif kind == "outcome":
            outcomes[request_hash].append(record.body)
    requests = rows[rows["kind"] == "request"]
    for request_hash, eid in zip(requests["hash"], requests["executionId"]):
        decided = outcomes.get(request_hash, [])
        assert len(decided) <= 1, f"two outcomes for {eid}"
        assert (len(votes[request_hash]) == 2) == (len(decided) == 1), f"{eid}: votes {votes[request_hash]}, outcomes {decided}"
        assert states[eid] == ("OVERRIDDEN" if decided else "PENDING_OVERRIDE")
        if decided:
            assert decided[0]["outcome"] == "approved" and len(decided[0]["resolutionHashes"]) == 2
    for line in printed:  # everything a child reported as committed is there
        if line.startswith("accepted"):
            _, eid, state = line.split()
            assert states[eid] in ("PENDING_OVERRIDE", "OVERRIDDEN") and (state != "approved" or states[eid] == "OVERRIDDEN")
    return sum(len(v) for v in outcomes.values())


def test_kills_during_submit_never_half_record_a_vote_or_double_an_outcome(tmp_path):
    desk = make_desk(tmp_path)
    ws = tmp_path / "ws"
    with Runtime(ws, policies=desk.policies, authority=desk.authority_path) as rt:
        atts = rt.execute_many([payment(amount=5_000_000 + i) for i in range(EXECUTIONS)])
        requests = [rt.override_request(a.executionId) for a in atts]
    votes = tmp_path / "votes.jsonl"
    with open(votes, "wb") as fh:
        for request in requests:
            for who in ("alice", "bob"):
                envelope = sign_resolution(request, desk.key_file(who), approver_id=who, role="finance", decision="approve",
                                           reason="matched by hand")
                fh.write(canonicalize(envelope) + b"\n")
    rng = random.Random(int(os.environ.get("PARMANA_KILL_SEED", "14")))
    printed: list[str] = []
    for cycle in range(KILLS):
        out = tmp_path / f"child-{cycle}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "tests.override_crash_child", str(ws), str(desk.policies),
                                     str(desk.authority_path), str(votes)], cwd=REPO, stdout=sink, stderr=subprocess.PIPE)
        wait_until_ready(proc, out)
        time.sleep(rng.uniform(0.0, 0.12))
        kill(proc)
        printed += [x for x in out.read_text().split("\n")[:-1] if x != "ready"]
        if cycle % 10 == 9:
            check_store(ws, printed)
    decided = check_store(ws, printed)
    assert 0 < decided < EXECUTIONS, f"the kills should land mid-run ({decided} of {EXECUTIONS} decided)"
