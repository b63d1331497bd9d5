import itertools

import pytest

from parmana_lab import EvaluationError, PolicyStore, RequestError, evaluate, parse_policy

from .conftest import SAMPLE_POLICIES

STORE = PolicyStore(SAMPLE_POLICIES)


def decide(policy_id, version="1.0.0", **signals):
    return evaluate(STORE.get(policy_id, version), signals)


def test_documented_claims_example():
    d = decide("claims-approval", insurance_active=True, risk_score=42, vip_customer=False, claim_amount=8500)
    assert (d.action, d.requires_override, d.execution_state, d.ruleId) == ("approve", False, "completed", "approve-active-low-risk")


@pytest.mark.parametrize(
    ("score", "action", "override", "rule"),
    [(499, "reject", False, "reject-low-credit"), (500, "manual_review", True, "manual-review"),
     (700, "manual_review", True, "manual-review"), (701, "approve", False, "approve-high-credit")],
)
def test_loan_thresholds_first_match_wins(score, action, override, rule):
    d = decide("loan-approval", credit_score=score, loan_amount=1, employed=True)
    assert (d.action, d.requires_override, d.ruleId) == (action, override, rule)
    assert d.execution_state == ("pending_override" if override else "completed")


def test_rule_order_matters():
    # risk > 80 is rejected even for a VIP, because that rule comes first
    d = decide("claims-approval", insurance_active=True, risk_score=81, vip_customer=True, claim_amount=1)
    assert d.ruleId == "reject-high-risk"


def test_not_and_in_operators():
    base = {"amount_cents": 100, "vendor_status": "approved", "invoice_matched": True}
    assert decide("vendor-payment", currency="EUR", **base).ruleId == "pay-approved-small"
    assert decide("vendor-payment", currency="JPY", **base).ruleId == "hold-foreign-currency"
    assert decide("vendor-payment", currency="EUR", **{**base, "invoice_matched": False}).ruleId == "hold-unmatched"


def _policy(cond):
    return parse_policy({
        "policyId": "ops", "policyVersion": "1.0.0", "schemaVersion": "1.0.0",
        "signalsSchema": {"n": {"type": "integer"}, "s": {"type": "string"}, "b": {"type": "boolean"}},
        "rules": [{"id": "hit", "condition": cond, "outcome": {"action": "yes", "requires_override": False, "reason": "r"}}],
    })


@pytest.mark.parametrize(
    ("cond", "n", "expected"),
    [
        ({"signal": "n", "equals": 5}, 5, True), ({"signal": "n", "equals": 5}, 6, False),
        ({"signal": "n", "not_equals": 5}, 6, True), ({"signal": "n", "greater_than": 5}, 5, False),
        ({"signal": "n", "greater_than_or_equal": 5}, 5, True), ({"signal": "n", "less_than": 5}, 5, False),
        ({"signal": "n", "less_than_or_equal": 5}, 5, True), ({"signal": "n", "in": [1, 5]}, 5, True),
        ({"signal": "n", "in": [1, 2]}, 5, False), ({"any": []}, 5, False), ({"all": []}, 5, True),
        ({"not": {"all": []}}, 5, False),
        ({"any": [{"signal": "n", "equals": 1}, {"all": [{"signal": "b", "equals": True}, {"signal": "s", "equals": "x"}]}]}, 5, True),
    ],
)
def test_every_operator(cond, n, expected):
    policy = _policy(cond)
    signals = {"n": n, "s": "x", "b": True}
    if expected:
        assert evaluate(policy, signals).ruleId == "hit"
    else:
        with pytest.raises(EvaluationError) as info:
            evaluate(policy, signals)
        assert info.value.code == "SYS-006" and info.value.stage == "execute"


def test_evaluation_is_deterministic_over_many_inputs():
    policy = STORE.get("loan-approval", "1.1.0")
    grid = list(itertools.product(range(300, 850, 37), (0, 5_000_000, 5_000_001, 9_000_000), (True, False)))
    first = [evaluate(policy, {"credit_score": s, "loan_amount": a, "employed": e}) for s, a, e in grid]
    again = [evaluate(policy, {"employed": e, "loan_amount": a, "credit_score": s}) for s, a, e in reversed(grid)]
    assert first == list(reversed(again))


@pytest.mark.parametrize(("signals", "code"), [
    ({"credit_score": 700, "loan_amount": 100}, "VAL-004"),
    ({"credit_score": True, "loan_amount": 100, "employed": True}, "VAL-007"),
    ({"credit_score": 700, "loan_amount": 100, "employed": True, "extra": 1}, "VAL-003"),
    (None, "VAL-001"),
    ([700, 100, True], "VAL-001"),
])
def test_evaluate_refuses_signals_the_schema_does_not_allow(signals, code):
    """Unchecked, these reach the rules as a KeyError or as True >= 700 quietly deciding."""
    with pytest.raises(RequestError) as info:
        evaluate(STORE.get("loan-approval", "1.0.0"), signals)
    assert info.value.code == code
