from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from parmana_lab import Runtime

REPO = Path(__file__).resolve().parent.parent
SAMPLE_POLICIES = REPO / "sample_policies"
SAMPLE_REQUESTS = REPO / "sample_requests"
JCS_VECTORS = REPO.parent / "shared" / "vectors" / "jcs"


class FakeClock:
    """A clock tests move by hand (the runtime takes any zero-argument callable)."""

    def __init__(self, start: datetime = datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the sample policies, so tests may edit them."""
    target = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, target)
    return target


@pytest.fixture
def runtime(tmp_path: Path, policy_dir: Path, clock: FakeClock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        yield rt


def claims_request(**signals) -> dict:
    base = {"insurance_active": True, "risk_score": 42, "vip_customer": False, "claim_amount": 8500}
    base.update(signals)
    return {"policyId": "claims-approval", "policyVersion": "1.0.0", "signals": base}


def loan_request(score: int = 742, amount: int = 2_500_000, employed: bool = True, version: str = "1.0.0") -> dict:
    return {
        "policyId": "loan-approval",
        "policyVersion": version,
        "signals": {"credit_score": score, "loan_amount": amount, "employed": employed},
    }


def write_policy(root: Path, document: dict, folder_id: str | None = None, folder_version: str | None = None) -> Path:
    path = root / (folder_id or document["policyId"]) / (folder_version or document["policyVersion"]) / "policy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def sample_requests() -> list[dict]:
    """Every ordinary sample request (not the replayed or invalid ones)."""
    out: list[dict] = []
    for path in sorted(SAMPLE_REQUESTS.glob("*.json")):
        if path.name not in ("replayed.json", "invalid.json"):
            out += json.loads(path.read_text())
    return out


@pytest.fixture
def exported(tmp_path: Path, policy_dir: Path, clock: FakeClock):
    """A runtime that executed every sample request (a minute apart) and its exported archive."""
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        for request in sample_requests():
            rt.execute(request)
            clock.advance(60)
        result = rt.export_archive(tmp_path / "archive")
        store = rt.trust_store()
    return Path(result.path), store
