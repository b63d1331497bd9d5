"""Auditor-grade results: every reporting command exits 0 only when everything asked for was checked and held,
1 when something failed or could not be checked, 2 for unusable input, always with a coded message.

Each test is a row of the exit-code table in README and SPEC, run the way a CI job would run it.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from parmana_lab import AuditDB, Runtime, TrustStore, canonicalize
from parmana_lab.audit import SCHEMA_VERSION
from parmana_lab.imports import ImportRefused, import_archive
from parmana_lab.reproducibility import reproduce
from parmana_lab.verify import verify_archive

from .conftest import REPO, claims_request, loan_request, sample_requests


def cli(*args, code=None):
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    if code is not None:
        assert out.returncode == code, (out.stdout, out.stderr)
    return out


def json_lines(out) -> list[dict]:
    return [json.loads(x) for x in out.stdout.splitlines()]


@pytest.fixture
def producer(tmp_path, policy_dir, clock):
    """A workspace that ran every sample, its archive (with and without signals) and its trust store file."""
    ws = tmp_path / "producer"
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        for request in sample_requests():
            rt.execute(request)
            clock.advance(60)
        archive = Path(rt.export_archive(tmp_path / "archive").path)
        bare = Path(rt.export_archive(tmp_path / "no-signals", signals=False).path)
    return ws, archive, bare, ws / "keys" / "trust.json"


def copy_with(archive: Path, target: Path, edit) -> Path:
    shutil.copytree(archive, target)
    edit(target)
    return target


def flip_decision(root: Path) -> None:
    lines = (root / "attestations.jsonl").read_bytes().splitlines()
    att = json.loads(lines[0])
    att["decision"]["action"] = "reject" if att["decision"]["action"] != "reject" else "approve"
    lines[0] = canonicalize(att)
    (root / "attestations.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def edit_policy(root: Path) -> None:
    path = root / "policies" / "loan-approval" / "1.0.0" / "policy.json"
    doc = json.loads(path.read_text())
    doc["rules"][0]["outcome"]["reason"] = "edited after the fact"
    path.write_bytes(canonicalize(doc))


# -- audit reproduce ----------------------------------------------------------------------------


def test_reproduce_that_could_rerun_nothing_is_not_a_pass(producer, tmp_path):
    _, archive, bare, _ = producer
    edited = copy_with(archive, tmp_path / "edited", edit_policy)
    out = cli("audit", "reproduce", edited, "--json", code=1)  # the loan records are NOT_REPLAYABLE
    *rows, summary = json_lines(out)
    assert {r["status"] for r in rows if r["why"] and "bundleHash" in r["why"]} == {"NOT_REPLAYABLE"}
    assert summary["summary"]["exit"] == 1 and summary["summary"]["statuses"]["NOT_REPLAYABLE"] > 0
    out = cli("audit", "reproduce", bare, "--json", code=1)  # exported without signals: nothing could be re-run
    *rows, summary = json_lines(out)
    assert {r["status"] for r in rows} == {"NOT_REPLAYABLE"} and summary["summary"]["statuses"]["MATCH"] == 0
    assert "NOT_REPLAYABLE 15" in cli("audit", "reproduce", bare, code=1).stdout


def test_reproduce_what_if_that_names_nothing_real_is_unusable_input(producer, policy_dir):
    _, archive, _, _ = producer
    missing = cli("audit", "reproduce", archive, "--policy-version", "loan-approval=9.9.9", "--policies", policy_dir, code=2)
    assert "[POL-001@policy]" in missing.stderr and missing.stdout == ""
    unused = cli("audit", "reproduce", archive, "--policy-version", "nosuch=1.0.0", "--policies", policy_dir, code=2)
    assert "POL" in unused.stderr and missing.stdout == ""
    unused_real = policy_dir / "unused-policy" / "1.0.0"
    shutil.copytree(policy_dir / "loan-approval" / "1.0.0", unused_real)
    doc = json.loads((unused_real / "policy.json").read_text())
    doc["policyId"] = "unused-policy"
    (unused_real / "policy.json").write_text(json.dumps(doc))
    out = cli("audit", "reproduce", archive, "--policy-version", "unused-policy=1.0.0", "--policies", policy_dir, code=2)
    assert "[POL-023@policy]" in out.stderr and "no record" in out.stderr


def test_a_duckdb_file_that_is_not_an_audit_db_is_unusable_input(tmp_path):
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE attestations (x INTEGER)")
    for command in (("audit", "reproduce", foreign), ("audit", "replays", foreign)):
        out = cli(*command, code=2)
        assert "[AUD-002@audit]" in out.stderr and "not a parmana audit database" in out.stderr


def test_reports_accept_the_open_runtime_and_db(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute_many([claims_request(), loan_request()])
        for source in (rt, rt.db, rt.db.path, str(rt.db.path)):
            report = reproduce(source)
            assert report.summary.statuses["MATCH"] == 2 and report.source == str(rt.db.path)


# -- import ------------------------------------------------------------------------------------


def _db_counts(ws: Path) -> tuple[int, int, int]:
    with AuditDB(ws / "audit.duckdb") as db:
        return db.count(), db.count("signals"), db.count("policies")


def test_import_refuses_a_tampered_archive_whole_and_writes_nothing(producer, tmp_path):
    _, archive, _, trust = producer
    central = tmp_path / "central"
    Runtime(central).close()
    before = _db_counts(central)
    for name, edit, code in (("flipped", flip_decision, "SIGNATURE_INVALID"), ("policy", edit_policy, "BUNDLE_HASH_MISMATCH")):
        tampered = copy_with(archive, tmp_path / name, edit)
        out = cli("--workspace", central, "import", tampered, "--trust", trust, "--json", code=1)
        refused, summary = json_lines(out)
        assert refused["status"] == "refused" and refused["code"] == "ARC-009" and code in refused["reason"]
        assert code in refused["verification"]["codes"] or code in refused["verification"]["archive_codes"]
        assert summary["summary"] == {"archives": 1, "imported": 0, "refused": 1, "unusable": 0, "inserted": 0,
                                      "already_present": 0, "conflicts": 0, "malformed": 0, "exit": 1}
        assert _db_counts(central) == before  # nothing written, not even its policies
        assert "REFUSED, nothing imported" in cli("--workspace", central, "import", tampered, "--trust", trust, code=1).stdout


def test_unverified_import_is_marked_and_conflicts_name_the_verified_side(producer, tmp_path, policy_dir):
    _, archive, _, trust = producer
    central = tmp_path / "central"
    edited = copy_with(archive, tmp_path / "edited", edit_policy)
    out = cli("--workspace", central, "import", edited, "--unverified", "--json", code=0)
    first = json_lines(out)[0]
    assert first["status"] == "unverified" and first["trust"].startswith("none") and first["inserted"] == 15
    assert "UNVERIFIED" in cli("--workspace", central, "import", edited, "--unverified", code=0).stdout
    with AuditDB(central / "audit.duckdb") as db:
        assert set(db.sql("SELECT import_status FROM attestations")["import_status"]) == {"unverified"}
        assert set(db.sql("SELECT import_status FROM policies")["import_status"]) == {"unverified"}
    genuine = cli("--workspace", central, "import", archive, "--trust", trust, "--json", code=1)
    result = json_lines(genuine)[0]
    (conflict,) = result["conflicts"]
    assert conflict == {"policy": "loan-approval@1.0.0", "with": "a different document already in the audit DB",
                        "archive_side": "verified", "db_side": "imported unverified"}
    # every report over that DB says which records nobody checked
    assert reproduce(central / "audit.duckdb").summary.unverified == 15
    replays = json_lines(cli("audit", "replays", central / "audit.duckdb", "--json", code=0))
    assert replays[-1]["summary"]["unverified_records"] == 15


def test_multi_archive_import_reports_every_archive(producer, tmp_path):
    _, archive, _, trust = producer
    central = tmp_path / "central"
    out = cli("--workspace", central, "import", tmp_path / "nowhere.zip", archive, "--trust", trust, "--json", code=2)
    missing, imported, summary = json_lines(out)
    assert missing == {"archive": str(tmp_path / "nowhere.zip"), "status": "unusable", "code": "ARC-001", "stage": "archive",
                       "reason": missing["reason"]}
    assert imported["inserted"] == 15 and summary["summary"]["exit"] == 2 and summary["summary"]["imported"] == 1


# -- verify ------------------------------------------------------------------------------------


def test_multi_archive_verify_reports_every_archive_and_exits_with_the_worst(producer, tmp_path):
    _, archive, bare, trust = producer
    flipped = copy_with(archive, tmp_path / "flipped", flip_decision)
    out = cli("verify", archive, tmp_path / "missing", flipped, bare, "--trust", trust, "--json", code=2)
    rows = json_lines(out)
    archives = [r["archive"] for r in rows if "archive" in r]
    assert [a["path"] for a in archives] == [str(archive), str(tmp_path / "missing"), str(flipped), str(bare)]
    assert [a["status"] for a in archives] == ["verified", "unusable", "failed", "verified"]
    assert archives[1]["code"] == "ARC-001" and "reason" in archives[1]
    records = [r for r in rows if "line" in r]
    assert len(records) == 45 and {r["source"] for r in records} == {str(archive), str(flipped), str(bare)}
    summary = rows[-1]["summary"]
    assert (summary["archives"], summary["verified"], summary["failed"], summary["unusable"], summary["exit"]) == (4, 2, 1, 1, 2)
    assert summary["attestations"] == {"total": 45, "verified": 44, "warnings": 0, "failed": 1}
    # without the missing one, the worst is a failure
    assert cli("verify", archive, flipped, "--trust", trust).returncode == 1


def test_archive_lines_carry_warnings_and_failures(producer, tmp_path):
    _, archive, _, trust = producer
    out = cli("verify", archive, "--trust", trust, "--known-runtime", "0" * 64, "--json", code=0)
    line = [r for r in json_lines(out) if "archive" in r][0]["archive"]
    assert (line["status"], line["total"], line["verified"], line["warnings"], line["failed"]) == ("verified", 15, 0, 15, 0)


def test_the_archive_own_keys_are_never_reported_as_the_verifier_trust_store(producer, tmp_path):
    _, archive, _, _ = producer
    inside = archive / "keys.json"
    copied = tmp_path / "looks-like-mine.json"
    copied.write_bytes(inside.read_bytes())
    for trust in (inside, copied):
        report = verify_archive(archive, trust, progress=False)
        assert report.status == "failed" and report.summary.archive_codes == ["TRUST_FROM_ARCHIVE"]
        assert "archive's own keys.json" in report.summary.trust and "verifier trust store" not in report.summary.trust
        out = cli("verify", archive, "--trust", trust, code=1)
        assert "TRUST_FROM_ARCHIVE" in out.stdout and "trust: the archive's own keys.json" in out.stdout
    explicit = verify_archive(archive, inside, trust_archive_keys=True, progress=False)  # said out loud: accepted, labelled
    assert explicit.status == "verified" and "explicitly trusted" in explicit.summary.trust


def test_a_trust_store_with_no_keys_is_unusable_input(producer, tmp_path):
    _, archive, _, _ = producer
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    out = cli("verify", archive, "--trust", empty, code=2)
    assert "[KEY-004@verify]" in out.stderr and "no keys" in out.stderr


def test_unusable_archive_shapes_are_coded(producer, tmp_path):
    _, archive, _, trust = producer
    deep = tmp_path / "deep.zip"
    with zipfile.ZipFile(deep, "w") as zf:
        for f in sorted(p for p in archive.rglob("*") if p.is_file()):
            zf.write(f, "export/" + f.relative_to(archive).as_posix())
    truncated = tmp_path / "cut.zip"
    shutil.make_archive(str(tmp_path / "whole"), "zip", archive)
    truncated.write_bytes((tmp_path / "whole.zip").read_bytes()[:2000])
    empty = tmp_path / "empty"
    empty.mkdir()
    huge = copy_with(archive, tmp_path / "huge", lambda r: open(r / "attestations.jsonl", "ab").write(b"x" * (1 << 21) + b"\n"))
    for path, code, words in ((deep, "ARC-005", "one level too deep"), (truncated, "ARC-001", ""), (empty, "ARC-005", "empty"),
                              (huge, "ARC-006", "1 MiB")):
        for command in (("verify", path, "--trust", trust), ("audit", "reproduce", path), ("audit", "replays", path)):
            out = cli(*command, code=2)
            assert f"[{code}@archive]" in out.stderr and words in out.stderr, (command, out.stderr)


# -- typed audit data -----------------------------------------------------------------------------


class TickingClock:
    """Every reading is 1 ms later: shows when each refusal was stamped."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def test_timestamps_are_typed_utc_and_refusals_stamped_when_they_happen(tmp_path, policy_dir):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=TickingClock()) as rt:
        original = claims_request()
        results = rt.execute_many([{"policyId": "nope", "policyVersion": "1.0.0", "signals": {}}, original, loan_request(),
                                   dict(original)])
        att, replay = results[1], results[3]
        assert replay.code == "INV-013"
        types = rt.db.sql("SELECT table_name, column_name, data_type FROM information_schema.columns "
                          "WHERE data_type LIKE 'TIMESTAMP%'")
        assert set(types["data_type"]) == {"TIMESTAMP WITH TIME ZONE"}, types
        assert {"issued_at", "refused_at", "reserved_at", "expires_at", "updated_at", "first_used_at"} <= set(types["column_name"])
        refusals = rt.db.refusals()
        assert str(refusals["refused_at"].dtype).endswith("UTC]")
        by_code = dict(zip(refusals["code"], refusals["refused_at"]))
        issued = rt.db.sql("SELECT issued_at FROM attestations WHERE executionId = ?", [att.executionId]).iloc[0, 0]
        assert by_code["POL-001"] < issued <= by_code["INV-013"]  # the replay is refused after the execution it repeats
        per_day = rt.db.sql("SELECT date_trunc('day', issued_at) AS day, decision_action, count(*) AS n FROM attestations "
                            "GROUP BY ALL ORDER BY ALL")
        assert per_day["day"].iloc[0] == pd.Timestamp("2026-03-01", tz="UTC") and per_day["n"].sum() == 2
        frame = rt.db.attestations()
        assert (frame["issued_at"] >= refusals["refused_at"].min()).all()  # comparable in pandas, no casts
        assert [pd.Timestamp(t) for t in frame["issuedAt"]] == list(frame["issued_at"])


V1_SCHEMA_ROW = ("INSERT INTO attestations VALUES (1, 'e1', 'fp', 'p', '1.0.0', '1.0.0', '1.0.0', 'rh', 'ah', 'sh', 'bh', "
                 "'approve', false, 'r', 'rule', 'completed', '2026-02-03T04:05:06.789Z', 'kid', 'sig', '{}')")


def test_a_v1_audit_db_is_migrated_forward(tmp_path):
    from parmana_lab.audit import MIGRATIONS

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'America/New_York'")  # the migration must not depend on the session's zone
        con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
        con.execute(MIGRATIONS[0][1])
        con.execute("INSERT INTO schema_migrations VALUES (1, TIMESTAMP '2026-02-01 00:00:00')")
        con.execute(V1_SCHEMA_ROW)
        con.execute("INSERT INTO refusals VALUES (TIMESTAMP '2026-02-03 04:05:00', 'VAL-001', 'validate', 'x', NULL, NULL, NULL, NULL)")
        con.execute("INSERT INTO replay VALUES ('fp', 'CONFIRMED', 'e1', TIMESTAMP '2026-02-03 04:05:06', NULL, "
                    "TIMESTAMP '2026-02-03 04:05:07')")
    with AuditDB(path) as db:
        assert db.schema_version() == SCHEMA_VERSION == 5
        row = db.sql("SELECT issued_at, import_status FROM attestations").iloc[0]
        assert row["issued_at"] == pd.Timestamp("2026-02-03T04:05:06.789Z") and row["import_status"] is None
        assert db.refusals()["refused_at"].iloc[0] == pd.Timestamp("2026-02-03T04:05:00Z")  # stored UTC stays UTC
        assert db.replay_states()["reserved_at"].iloc[0] == pd.Timestamp("2026-02-03T04:05:06Z")
        from parmana_lab.translog import log_size, root_at

        # v3 backfilled the log for the record it already held: one leaf, the hash of its line
        assert log_size(db.connection) == 1 and root_at(db.connection, 1) == hashlib.sha256(b"\x00{}").digest()


def test_charts_leave_the_matplotlib_state_alone(producer):
    """The old chart code switched the backend to Agg; a notebook's inline backend must survive a report."""
    import matplotlib
    import matplotlib.pyplot as plt

    _, archive, _, _ = producer
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figures = plt.get_fignums()
        html = reproduce(archive).to_html()
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
        assert "data:image/png;base64," in html
    finally:
        matplotlib.use(backend)


def test_the_api_refuses_what_the_cli_refuses(producer, tmp_path):
    _, archive, _, trust = producer
    flipped = copy_with(archive, tmp_path / "flipped", flip_decision)
    with AuditDB(tmp_path / "central.duckdb") as db:
        with pytest.raises(ImportRefused) as info:
            import_archive(flipped, db, TrustStore.load(trust))
        assert info.value.summary["codes"]["SIGNATURE_INVALID"] == 1 and db.count() == db.count("policies") == 0
