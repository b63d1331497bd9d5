"""A workspace where overrides can be decided: signed sample policies, an author, and approvers with real keys.

Used by the override tests and by the child processes they start (crash and race tests).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from parmana_lab.authority import ApproverEntry, AuthorEntry, Authority
from parmana_lab.bundles import sign_bundle
from parmana_lab.classroom import APPROVERS  # approverId -> roles, the lessons' people; carol also asks for payments
from parmana_lab.keys import SigningKey, new_key_file
from parmana_lab.policy import version_order

REPO = Path(__file__).resolve().parent.parent
SINCE = "2026-01-01T00:00:00.000Z"


@dataclass
class Desk:
    root: Path
    policies: Path
    authority_path: Path
    authority: Authority
    keys: dict[str, SigningKey]

    def key_file(self, name: str) -> Path:
        return self.root / "people" / f"{name}.pem"


def make_desk(root: Path) -> Desk:
    """Sample policies (and any extra folders already under root/policies) signed by one author; five approvers."""
    policies = root / "policies"
    if not policies.exists():
        shutil.copytree(REPO / "sample_policies", policies)
    author = new_key_file(root / "people" / "author.pem")
    keys = {name: new_key_file(root / "people" / f"{name}.pem") for name in APPROVERS}
    authority = Authority(
        authors=[AuthorEntry(authorId="author", keyId=author.key_id, publicKey=author.public_key_pem(), policyIds=["*"],
                             notBefore=SINCE)],
        approvers=[ApproverEntry(approverId=name, roles=roles, keyId=keys[name].key_id, publicKey=keys[name].public_key_pem(),
                                 notBefore=SINCE) for name, roles in APPROVERS.items()],
    )
    authority.save(root / "authority.json")
    for folder in sorted(policies.glob("*/*/policy.json"), key=lambda f: (f.parent.parent.name, version_order(f.parent.name))):
        sign_bundle(folder.parent, author, "author", clock=lambda: _at(SINCE))
    return Desk(root, policies, root / "authority.json", authority, keys)


def _at(text: str):
    from parmana_lab.timestamps import parse_ts

    return parse_ts(text)


def payment(amount: int = 5_000_000, requested_by: str | None = "carol", execution_id: str | None = None) -> dict:
    """A vendor-payment 1.1.0 request that ends pending_override (second-approver: two finance approvals)."""
    request = {"policyId": "vendor-payment", "policyVersion": "1.1.0",
               "signals": {"amount_cents": amount, "vendor_status": "approved", "invoice_matched": True, "currency": "EUR"}}
    if requested_by:
        request["requestedBy"] = requested_by
    if execution_id:
        request["executionId"] = execution_id
    return request


def loan(score: int = 600, version: str = "1.2.0") -> dict:
    """A loan that goes to manual review (one underwriter decides under 1.2.0; nobody under 1.0.0)."""
    return {"policyId": "loan-approval", "policyVersion": version,
            "signals": {"credit_score": score, "loan_amount": 1_000_000, "employed": True}}
