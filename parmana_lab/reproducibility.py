"""Reproducibility audit: would the same policy and runtime still decide the same?

Re-executes every recorded execution from an archive or an audit DB with the
current evaluator, without touching any replay store or audit DB, and says per
execution MATCH, DIVERGED (with the fields that differ), NOT_REPLAYABLE (with
why) or INPUT_MISMATCH (the signals do not hash to what was attested). With
``policy_versions`` it answers "what would version X have decided?" instead.
"""

from __future__ import annotations

import binascii
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict

from .archive import MANIFEST, OVERRIDES, SIGNALS, ArchiveError, iter_lines, open_archive, require_attestations, signals_line
from .attestation import parse_attestation_line
from .audit import is_duckdb_file, open_in_process, reading, source_name
from .canonical import canonicalize, fingerprint_payload, parse_canonical, parse_json, quote
from .charts import bar_chart
from .checks import PolicyEntry, SignalsAligner, load_archive_policies, policy_entry
from .errors import CanonicalizationError, ParmanaError, PolicyError
from .evaluate import Decision, decide
from .policy import Policy, PolicyStore
from .progress import Progress, progress_bar
from .provenance import evaluator_artifact_hash, runtime_hash, runtime_manifest
from .validation import validate_signals

STATUSES = ("MATCH", "DIVERGED", "NOT_REPLAYABLE", "INPUT_MISMATCH")
DECISION_FIELDS = ("action", "requires_override", "reason", "ruleId", "execution_state")
Evaluator = Callable[[Policy, dict[str, Any]], Decision]
PROGRESS_STEP = 2_000


class ReproSummary(BaseModel):
    model_config = ConfigDict(defer_build=True)

    source: str
    total: int
    statuses: dict[str, int]
    other_runtime: int
    other_evaluator: int
    unverified: int
    what_if: dict[str, str]
    overrides: dict[str, int] = {}  # pending_override executions by their recorded resolution

    @property
    def all_match(self) -> bool:
        """Every execution was re-run and decided the same (the only result that exits 0)."""
        return self.statuses["MATCH"] == self.total


class ReproReport:
    """One row per execution: status, the differing fields, and provenance flags."""

    def __init__(self, source: str, rows: list[dict[str, Any]], what_if: dict[str, str]) -> None:
        self.source, self.rows, self.what_if = source, rows, what_if

    def __repr__(self) -> str:
        return f"ReproReport({self.source!r}: {dict(self.summary.statuses)})"

    @property
    def summary(self) -> ReproSummary:
        counts = Counter(r["status"] for r in self.rows)
        return ReproSummary(
            source=self.source,
            total=len(self.rows),
            statuses={s: counts.get(s, 0) for s in STATUSES},
            other_runtime=sum(r["other_runtime"] for r in self.rows),
            other_evaluator=sum(r["other_evaluator"] for r in self.rows),
            unverified=sum(r["unverified"] for r in self.rows),
            what_if=self.what_if,
            overrides=dict(sorted(Counter(r["override"] for r in self.rows if r["override"]).items())),
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["line", "executionId", "policyId", "policyVersion", "replayedWith", "status",
                                                "attested", "now", "changed", "diff", "why", "other_runtime", "other_evaluator",
                                                "unverified", "override"])

    def changes(self) -> pd.DataFrame:
        """Only the executions whose decision differs (the what-if table)."""
        df = self.to_pandas()
        return df[df["status"] == "DIVERGED"].reset_index(drop=True)

    def to_markdown(self) -> str:
        s = self.summary
        what_if = f" (what if: {', '.join(f'{k} {v}' for k, v in s.what_if.items())})" if s.what_if else ""
        out = [f"# Reproducibility of `{s.source}`{what_if}", "",
               ", ".join(f"{k} {v}" for k, v in s.statuses.items()) + f"; from another runtime {s.other_runtime}, "
               f"from another evaluator build {s.other_evaluator}."]
        changed = [r for r in self.rows if r["status"] != "MATCH"]
        if changed:
            out += ["", "| line | executionId | status | attested | now | why |", "| ---: | --- | --- | --- | --- | --- |"]
            out += [f"| {r['line']} | {r['executionId']} | {r['status']} | {r['attested'] or ''} | {r['now'] or ''} | {r['why'] or ''} |"
                    for r in changed[:200]]
        return "\n".join(out) + "\n"

    def by_policy(self) -> pd.DataFrame:
        """Statuses counted per policy version: the chart's data."""
        df = self.to_pandas()
        df["policy"] = df["policyId"].fillna("?") + " " + df["policyVersion"].fillna("")
        return df.pivot_table(index="policy", columns="status", values="line", aggfunc="count", fill_value=0)

    def to_html(self) -> str:
        s = self.summary
        counts = ", ".join(f"{k} {v}" for k, v in s.statuses.items())
        table = self.to_pandas().query("status != 'MATCH'").to_html(index=False) if s.total - s.statuses["MATCH"] else ""
        chart = bar_chart(self.by_policy(), "re-execution by policy") if s.total else ""
        return f"<h3>Reproducibility of <code>{s.source}</code></h3><p>{counts}</p>{chart}{table}"

    def _repr_html_(self) -> str:
        return self.to_html()


def reproduce(
    source: str | Path | Any,
    *,
    policy_versions: dict[str, str] | None = None,
    policies: str | Path | PolicyStore | None = None,
    evaluator: Evaluator = decide,
    progress: Progress = False,
    client: Any = None,
    scratch: str | Path | None = None,
) -> ReproReport:
    """Re-run every execution of an archive or audit DB file and compare decisions.

    ``source`` is an archive, an audit DB file, or an open AuditDB / Runtime.
    ``policy_versions`` maps a policyId to the version to re-run it under
    (loaded from ``policies``, a policy folder; a version that does not exist,
    or a policyId no record uses, is refused); ``evaluator`` is the decision
    function, given signals already validated against the policy (the kit's own
    ``decide`` by default). ``progress`` is as for verify_archive. With a Dask ``client`` an archive is
    re-run block by block on the workers (cluster.py; an audit DB file stays on this machine).
    """
    what_if = dict(policy_versions or {})
    store = policies if isinstance(policies, PolicyStore) else PolicyStore(policies) if policies else None
    if what_if and store is None:
        raise ArchiveError("ARC-005", "a what-if re-run needs the folder of the policy versions to use (policies=...)")
    for pid, version in what_if.items():
        store.get(pid, version)  # POL-001 now, not NOT_REPLAYABLE on every row later
    name = source_name(source)
    if client is not None and open_in_process(source) is None and not is_duckdb_file(Path(source)):
        from .cluster import reproduce_on_cluster

        rows = reproduce_on_cluster(client, source, what_if, store.root if store else None, evaluator, scratch=scratch,
                                    progress=progress)
    else:
        rows = _reproduce_rows(source, name, what_if, store, evaluator, progress)
    unused = sorted(set(what_if) - {r["policyId"] for r in rows})
    if unused:
        raise PolicyError("POL-023", "policy", f"--policy-version names {', '.join(unused)}, which no record in {name} uses "
                          "(a typo? `parmana-lab audit reproduce SOURCE` lists what is there)")
    return ReproReport(name, rows, what_if)


def _reproduce_rows(source: Any, name: str, what_if: dict[str, str], store: PolicyStore | None, evaluator: Evaluator,
                    progress: Progress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with _records(source) as (records, archived, total, overrides), progress_bar(progress, total, f"reproduce {Path(name).name}",
                                                                      "exec") as bar:
        replay = _Replayer(what_if, store, evaluator, archived, overrides)
        for line_no, line, signals_line, unverified in records:
            rows.append(replay(line_no, line, signals_line, unverified))
            if len(rows) % PROGRESS_STEP == 0:
                bar.update(PROGRESS_STEP)
        bar.update(len(rows) % PROGRESS_STEP)
    return rows


def reproduce_block(first_line: int, lines: list[bytes], signals: list[bytes | None], what_if: dict[str, str],
                    policies: Path | None, evaluator: Evaluator, archived: dict[tuple[str, str], PolicyEntry],
                    overrides: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of a run of an archive's lines (what a cluster's worker computes for one block), given the archive's
    policies and override states."""
    replay = _Replayer(what_if, PolicyStore(policies) if policies is not None else None, evaluator, archived, overrides)
    return [replay(first_line + n, line, paired, False) for n, (line, paired) in enumerate(zip(lines, signals))]


def archive_override_states(root: Path) -> dict[str, str]:
    """Each execution's override state as an archive records it (its last record: an outcome, else pending).

    Read to report, not to trust: only each envelope's type and the body's executionId and outcome are decoded, and a
    line that is no record is passed over (whether the records are authentic is what `verify --authority` checks).
    """
    from .overrides import KINDS, OUTCOME_STATE

    states: dict[str, str] = {}
    if not (root / OVERRIDES).is_file():
        return states
    for line in iter_lines(root / OVERRIDES):
        try:
            envelope = orjson.loads(line)
            kind = KINDS.get(envelope["payloadType"])
            body = orjson.loads(binascii.a2b_base64(envelope["payload"], strict_mode=True))
            eid, outcome = body["executionId"], body.get("outcome")
        except (orjson.JSONDecodeError, binascii.Error, ValueError, KeyError, TypeError):
            continue
        if kind is not None and type(eid) is str and (kind != "outcome" or outcome in OUTCOME_STATE):
            states[eid] = outcome if kind == "outcome" else "pending"
    return states


class _Replayer:
    """Re-runs one record at a time against the source's policies (or the what-if versions) and this build."""

    def __init__(self, what_if: dict[str, str], store: PolicyStore | None, evaluator: Evaluator,
                 archived: dict[tuple[str, str], PolicyEntry] | None = None, overrides: dict[str, str] | None = None) -> None:
        self.what_if, self.store, self.evaluator = what_if, store, evaluator
        self.archived, self.overrides = archived or {}, overrides or {}
        self.runtime_hash, self.evaluator_hash = runtime_hash(runtime_manifest()), evaluator_artifact_hash()
        self._plans: dict[tuple[str, str, str], tuple[bytes, str | None, str | None, Policy | None]] = {}

    def __call__(self, line_no: int, line: bytes, signals_line: bytes | None, unverified: bool) -> dict[str, Any]:
        att, problem = parse_attestation_line(line)
        if att is None:
            return _row(line_no, None, None, None, "NOT_REPLAYABLE", f"malformed record: {problem}", False, False, None,
                        unverified)
        eid, state = att["executionId"], att["execution_state"]
        status, why, policy, signals = self._inputs(att, signals_line)
        row = _row(line_no, eid, att["policyId"], att["policyVersion"], status, why, att["runtimeHash"] != self.runtime_hash,
                   att["evaluatorArtifactHash"] != self.evaluator_hash,
                   # an override: reported with the decision that required it
                   self.overrides.get(eid, "pending") if state == "pending_override" else None, unverified)
        if policy is None:
            return row
        row["replayedWith"] = f"{policy.policyId} {policy.policyVersion}"
        decision = att["decision"]
        try:
            validate_signals(signals, policy)
            got = self.evaluator(policy, signals)
        except ParmanaError as exc:
            now: dict[str, Any] = {"refused": str(exc)}
        else:
            if (got.action == decision["action"] and got.ruleId == decision["ruleId"] and got.reason == decision["reason"]
                    and got.requires_override is decision["requires_override"] and got.execution_state == state):
                row["status"] = "MATCH"
                row["attested"] = row["now"] = f"{got.action} by {got.ruleId} ({state})"
                return row
            now = {**got.model_dump(), "execution_state": got.execution_state}
        attested = {**decision, "execution_state": state}
        diff = {f: [attested.get(f), now.get(f)] for f in DECISION_FIELDS if attested.get(f) != now.get(f)}
        row["attested"], row["now"] = _decision_text(attested), _decision_text(now)
        row["status"], row["changed"], row["diff"] = ("DIVERGED", list(diff), diff) if diff else ("MATCH", None, None)
        return row

    def _inputs(self, att: dict[str, Any], signals_line: bytes | None) -> tuple[str | None, str | None, Policy | None, Any]:
        """(status, why, None, None) when the record cannot be re-run, else (None, None, the policy to re-run it under,
        the signals)."""
        signals, signals_jcs, why = _signals(signals_line, att["executionId"])
        if signals is None:
            return "NOT_REPLAYABLE", why, None, None
        key = (att["policyId"], att["policyVersion"], att["bundleHash"])
        plan = self._plans.get(key) or self._plans.setdefault(key, self._plan(*key))
        if (hashlib.sha256(signals_jcs).hexdigest() != att["signalsHash"]
                or hashlib.sha256(plan[0] + signals_jcs + b"}").hexdigest() != att["execution_fingerprint"]):
            return "INPUT_MISMATCH", "the archived signals do not hash to the attested signalsHash / fingerprint", None, None
        return plan[1], plan[2], plan[3], signals

    def _plan(self, pid: str, version: str, bundle_hash: str) -> tuple[bytes, str | None, str | None, Policy | None]:
        """What every record of one policy version (as applied: its bundleHash) is re-run under: (the fingerprint's
        JCS up to the signals, then status, why, policy as _inputs returns them)."""
        prefix = fingerprint_payload(pid, version, b"")[:-1]
        if pid in self.what_if:
            try:
                return prefix, None, None, self.store.get(pid, self.what_if[pid])
            except ParmanaError as exc:
                return prefix, "NOT_REPLAYABLE", str(exc), None
        entry: PolicyEntry | None = self.archived.get((pid, version))
        if entry is None or entry.bundle_hash is None:
            return prefix, "NOT_REPLAYABLE", f"policy {pid} {version} is not in the source", None
        if entry.bundle_hash != bundle_hash:
            return (prefix, "NOT_REPLAYABLE", f"the stored policy {pid} {version} is not the one applied (bundleHash "
                    f"{entry.bundle_hash[:12]}… ≠ {bundle_hash[:12]}…)", None)
        if entry.policy is None:
            return prefix, "NOT_REPLAYABLE", entry.problem, None
        return prefix, None, None, entry.policy


def _row(line_no: int, eid: str | None, pid: str | None, version: str | None, status: str | None, why: str | None,
         other_runtime: bool, other_evaluator: bool, override: str | None, unverified: bool) -> dict[str, Any]:
    return {"line": line_no, "executionId": eid, "policyId": pid, "policyVersion": version, "replayedWith": None,
            "attested": None, "now": None, "changed": None, "diff": None, "why": why, "other_runtime": other_runtime,
            "other_evaluator": other_evaluator, "override": override, "status": status, "unverified": unverified}


def _decision_text(d: dict[str, Any]) -> str:
    if "refused" in d:
        return d["refused"]
    return f"{d['action']} by {d['ruleId']} ({d['execution_state']})"


def _signals(line: bytes | None, eid: str) -> tuple[dict[str, Any] | None, bytes | None, str | None]:
    """(signals, their JCS, None) from a signals line, or (None, None, why not).

    Read as a strict reader would: a line as exported is JCS and read by orjson; any other through parse_json
    (duplicate keys refused, integers exact), and a tampered one then shows as INPUT_MISMATCH against the hashes.
    """
    if line is None:
        return None, None, "no signals for this execution in the source (exported with --no-signals?)"
    canonical = parse_canonical(line)
    try:
        item = canonical[0] if canonical is not None else parse_json(line)
        signals = item.get("signals") if type(item) is dict else None
        if type(signals) is dict and canonical is not None and len(item) == 2 and item.get("executionId") == eid:
            return signals, line[len(b'{"executionId":,"signals":') + len(quote(eid)):-1], None  # JCS of item: its part
        signals_jcs = canonicalize(signals) if type(signals) is dict else None
    except CanonicalizationError as exc:
        return None, None, f"unusable signals line: {exc.reason}"
    if type(item) is not dict or item.get("executionId") != eid:
        return None, None, "no signals line for this execution"
    if signals is None:
        return None, None, "signals were not exported for this execution"
    if signals_jcs is None:
        return None, None, "signals is not an object"
    return signals, signals_jcs, None


@contextmanager
def _records(source: Any) -> Iterator[tuple[Iterator[tuple[int, bytes, bytes | None, bool]], dict, int | None]]:
    """(line number, canonical attestation, signals line, imported unverified) per execution, the stored policies, how many."""
    if open_in_process(source) is not None or is_duckdb_file(Path(source)):
        with reading(source) as con:
            policies = {(p, v): policy_entry(doc, (p, v))
                        for p, v, doc in con.execute("SELECT policyId, policyVersion, document FROM policies").fetchall()}
            total = con.execute("SELECT count(*) FROM attestations").fetchall()[0][0]  # before the streaming query
            overrides = _override_states(con)
            status = "a.import_status = 'unverified'" if _has_status(con) else "false"
            cur = con.execute(
                f"SELECT a.seq, a.canonical, s.signals, a.executionId, {status} FROM attestations a LEFT JOIN "
                "(SELECT executionId, any_value(signals) AS signals FROM signals GROUP BY ALL) s USING (executionId) ORDER BY a.seq"
            )

            def rows() -> Iterator[tuple[int, bytes, bytes | None, bool]]:
                while batch := cur.fetchmany(10_000):
                    for seq, canonical, sig, eid, unverified in batch:
                        yield seq, canonical.encode("utf-8"), signals_line(eid, sig) if sig else None, bool(unverified)

            yield rows(), policies, total, overrides
        return
    with open_archive(source) as root:
        lines_path = require_attestations(root, source)
        aligner = SignalsAligner(iter_lines(root / SIGNALS)) if (root / SIGNALS).is_file() else None

        def lines() -> Iterator[tuple[int, bytes, bytes | None, bool]]:
            for number, line in enumerate(iter_lines(lines_path), start=1):
                yield number, line, aligner.for_line(line) if aligner else None, False

        yield lines(), load_archive_policies(root), _manifest_count(root), archive_override_states(root)


def _override_states(con) -> dict[str, str]:
    """Each execution's override state as recorded (its last record: an outcome, else still pending)."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'override_records'").fetchall()[0][0]:
        return {}
    return dict(con.execute("SELECT executionId, CASE WHEN arg_max(kind, seq) = 'outcome' THEN arg_max(decision, seq) "
                            "ELSE 'pending' END FROM override_records GROUP BY executionId").fetchall())


def _has_status(con) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'attestations' "
                            "AND column_name = 'import_status'").fetchall()[0][0])


def _manifest_count(root: Path) -> int | None:
    """The manifest's count, for the progress bar only (verification is what checks it)."""
    try:
        count = orjson.loads((root / MANIFEST).read_bytes()).get("count")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return count if type(count) is int else None

