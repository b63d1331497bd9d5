"""The main job: run every sample request on a fresh workspace and summarise.

Used by ``parmana-lab demo`` and ``make demo``; it calls the same public API a
notebook user would.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .attestation import ExecutionAttestation
from .canonical import parse_json
from .errors import CanonicalizationError, ParmanaError, RequestError
from .logverify import verify_checkpoint, verify_inclusion
from .replays import find_replays
from .reports import archive_text
from .reproducibility import reproduce
from .runtime import Runtime
from .verify import verify_archive
from .workspace import default_policy_dir, default_requests_dir

Printer = Callable[[str], None]
# Run order: ordinary requests first, then the replay and the invalid ones.
LAST = ("replayed.json", "invalid.json")


class DemoSummary(BaseModel):
    model_config = ConfigDict(defer_build=True)

    workspace: str
    executed: int
    refused: int
    actions: dict[str, int]
    states: dict[str, int]
    refusal_codes: dict[str, int]
    archive: str | None = None
    archive_status: str | None = None


def request_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.json"))
    return [f for f in files if f.name not in LAST] + [directory / n for n in LAST if (directory / n).exists()]


def load_requests(path: Path) -> list:
    try:
        data = parse_json(path.read_bytes())
    except OSError as exc:
        raise RequestError("VAL-001", "validate", f"cannot read {path}: {exc.strerror}") from None
    except CanonicalizationError as exc:
        raise RequestError("VAL-001", "validate", f"{path}: {exc.reason}") from None
    return data if isinstance(data, list) else [data]


def run_demo(
    workspace: str | Path,
    *,
    policies: str | Path | None = None,
    requests: str | Path | None = None,
    echo: Printer = print,
) -> DemoSummary:
    """Recreate ``workspace``, run all sample requests, print a readable summary."""
    root = Path(workspace)
    policy_dir = Path(policies) if policies else default_policy_dir()
    request_dir = Path(requests) if requests else default_requests_dir()
    replayed = request_files(request_dir)
    if not replayed:
        raise RequestError("VAL-001", "validate", f"no request files (*.json) in {request_dir}")
    if root.exists():
        shutil.rmtree(root)
    signed, authority, approvers = _signed_copies(root, policy_dir)
    with Runtime(root, policies=signed, authority=authority) as rt:
        info = rt.info()
        echo(f"parmana_lab demo — workspace {root}")
        echo(f"runtime {info.manifest.runtimeVersion}  runtimeHash {info.runtimeHash[:16]}…  evaluator {info.evaluatorArtifactHash[:16]}…")
        echo(f"signing key {rt.signer_key_id} (private key 0600 in {rt.workspace.keys_dir})")
        for item in rt.policies.scan():
            if isinstance(item, ParmanaError):
                echo(f"  policy error {item}")
            else:
                echo(f"  policy {item.policyId} {item.policyVersion}  bundleHash {item.bundleHash[:16]}…")
        echo(f"  ({rt.authorship}: copies signed by demo-author, whose key is in {root / 'authors'} and never reaches the "
             "runtime)")
        results: list[ExecutionAttestation | ParmanaError] = []
        for path in request_files(request_dir):
            echo(f"\n{path.name}")
            for result in rt.execute_many(load_requests(path)):
                results.append(result)
                echo("  " + describe(result))
        atts = [r for r in results if isinstance(r, ExecutionAttestation)]
        refusals = [r for r in results if isinstance(r, ParmanaError)]
        summary = DemoSummary(
            workspace=str(root),
            executed=len(atts),
            refused=len(refusals),
            actions=dict(Counter(a.decision.action for a in atts)),
            states=dict(Counter(a.execution_state for a in atts)),
            refusal_codes=dict(Counter(r.code for r in refusals)),
        )
        echo("\nSummary")
        echo(f"  executed {summary.executed}, refused {summary.refused}")
        echo("  decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.actions.items())))
        echo("  states:    " + ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items())))
        echo("  refusals:  " + ", ".join(f"{k} {v}" for k, v in sorted(summary.refusal_codes.items())))
        _resolve_overrides(rt, approvers, echo)
        table = rt.db.sql(
            "SELECT policyId, policyVersion, decision_action AS action, count(*) AS n "
            "FROM attestations GROUP BY ALL ORDER BY ALL"
        )
        echo(f"\nAudit DB {rt.db.path}: {rt.db.count()} attestations, {rt.db.count('refusals')} refusals")
        echo(table.to_string(index=False))
        exported = rt.export_archive(rt.workspace.exports_dir / "demo-archive.zip", format="zip")
        echo(f"\nExported {exported.count} attestations to {exported.path} (signed manifest, Merkle root {exported.merkleRoot[:16]}…)")
        report = verify_archive(exported.path, rt.trust_store(), progress=False, authority=authority)
        echo(archive_text(report))
        # transparency: publish a checkpoint of the log, prove one attestation is in it, check both offline
        checkpoint = rt.log.checkpoint()
        logged = rt.db.sql("SELECT executionId FROM attestations WHERE log_index IS NOT NULL ORDER BY log_index LIMIT 1")
        proof = rt.log.prove(logged.iloc[0, 0], checkpoint)
        published = rt.workspace.exports_dir / "log.checkpoint"
        published.write_text(checkpoint.render())
        (rt.workspace.exports_dir / "first.tlog-proof").write_text(proof.render())
        offline = [verify_checkpoint(published, rt.trust_store()), verify_inclusion(proof.render(), rt.trust_store())]
        echo(f"\nTransparency log {checkpoint.origin}: checkpoint of {checkpoint.size} leaves published to {published}")
        for verdict in offline:
            echo(f"  offline {verdict.kind}: {'VALID' if verdict.valid else 'INVALID ' + verdict.code} ({verdict.reason})")
        repro = reproduce(exported.path).summary
        echo("\nReproducibility audit: " + ", ".join(f"{k} {v}" for k, v in repro.statuses.items()))
        whatif = reproduce(exported.path, policy_versions={"loan-approval": "1.1.0"}, policies=policy_dir)
        echo(f"What if loan-approval 1.1.0 had decided the 1.0.0 loans: {len(whatif.changes())} decision(s) would change")
    # a second runtime (its own key) runs one request file again (the claims one if there): the same executions, consumed twice
    again = request_dir / "claims-approval.json" if (request_dir / "claims-approval.json").is_file() else replayed[0]
    with Runtime(root / "second-runtime", policies=policy_dir) as other:
        other.execute_many(load_requests(again))
        second = other.export_archive(other.workspace.exports_dir / "second.tar.gz", format="tar.gz")
    with find_replays([exported.path, second.path]) as replays:
        s = replays.summary
        echo(f"Replay detection over both runtimes' archives: {s.records} records, {s.replayed_fingerprints} fingerprints "
             f"consumed by more than one execution ({s.extra_uses} extra uses, {s.copies} copies)")
    return summary.model_copy(update={"archive": exported.path, "archive_status": report.status})


DEMO_APPROVERS = {"fin-ana": ["finance"], "fin-ben": ["finance"], "fin-cai": ["finance"], "uw-uma": ["underwriter"]}


def _signed_copies(root: Path, policy_dir: Path) -> tuple[Path, Path, Path]:
    """A demo author and approvers: personal keys, an authority file naming them, signed copies of the sample policies."""
    from .authority import ApproverEntry, AuthorEntry, Authority
    from .bundles import sign_bundle
    from .keys import new_key_file
    from .timestamps import format_ts, system_clock

    signed = root / "policies"
    shutil.copytree(policy_dir, signed, ignore=shutil.ignore_patterns("bundle.*"))
    key = new_key_file(root / "authors" / "demo-author.pem")
    since = format_ts(system_clock())
    people = {name: new_key_file(root / "approvers" / f"{name}.pem") for name in DEMO_APPROVERS}
    authority = Authority(authors=[AuthorEntry(authorId="demo-author", keyId=key.key_id, publicKey=key.public_key_pem(),
                                               policyIds=["*"], notBefore=since)],
                          approvers=[ApproverEntry(approverId=name, roles=DEMO_APPROVERS[name], keyId=k.key_id,
                                                   publicKey=k.public_key_pem(), notBefore=since) for name, k in people.items()])
    authority.save(root / "authority.json")
    for folder in sorted(signed.glob("*/*/policy.json"), key=lambda f: (f.parent.parent.name, _semver(f.parent.name))):
        sign_bundle(folder.parent, key, "demo-author")
    return signed, root / "authority.json", root / "approvers"


def _resolve_overrides(rt: Runtime, approvers: Path, echo: Printer) -> None:
    """Pending executions decided by approvers' own keys (signed here, as they would sign on their own machines)."""
    from .overrides import record_line, sign_resolution

    echo("\nOverrides: approvers sign with their own keys; the runtime records votes and signs the outcome")
    payment = {"policyId": "vendor-payment", "policyVersion": "1.1.0", "requestedBy": "fin-ben",
               "signals": {"amount_cents": 4_200_000, "vendor_status": "approved", "invoice_matched": True, "currency": "EUR"}}
    loan = {"policyId": "loan-approval", "policyVersion": "1.2.0",
            "signals": {"credit_score": 640, "loan_amount": 1_800_000, "employed": False}}
    paid, lent = rt.execute(payment), rt.execute(loan)
    plan = [(paid, "fin-ben", "finance", "approve", "my own request"), (paid, "fin-ana", "finance", "approve", "PO 4471 matched"),
            (paid, "fin-cai", "finance", "approve", "vendor bank details confirmed by phone"),
            (lent, "uw-uma", "underwriter", "reject", "no income to cover the instalments")]
    for att, who, role, decision, reason in plan:
        vote = sign_resolution(rt.override_request(att.executionId), approvers / f"{who}.pem", approver_id=who, role=role,
                               decision=decision, reason=reason, clock=rt.clock)
        try:
            status = rt.submit_resolution(vote)
            echo(f"  {who:<8} {decision:<7} {att.policyId} {att.executionId[:8]}…  -> {status.state}: {status.needed}")
        except ParmanaError as exc:
            echo(f"  {who:<8} {decision:<7} {att.policyId} {att.executionId[:8]}…  REFUSED {exc}")
    pending = rt.pending_overrides()
    waiting = [s for s in pending if s.policyVersion != "1.1.0" or s.policyId != "vendor-payment"]
    echo(f"  {len(pending)} execution(s) still pending; {sum('no override block' in s.needed for s in waiting)} of them under "
         "policy versions that author no override block (nobody may resolve them)")
    echo(f"  trail of the payment ({paid.executionId[:8]}…): request -> two distinct finance votes -> outcome")
    for record in rt.override_trail(paid.executionId).records:
        echo(f"    {record_line(record)}")


def _semver(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in version.split("."))


def describe(result: ExecutionAttestation | ParmanaError) -> str:
    if isinstance(result, ParmanaError):
        return f"REFUSED  {result}"
    d = result.decision
    return (
        f"{d.action:<14} {result.execution_state:<16} {result.policyId} {result.policyVersion}  "
        f"rule {d.ruleId}  fp {result.execution_fingerprint[:12]}…"
    )
