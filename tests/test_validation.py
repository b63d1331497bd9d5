import json

import pytest

from parmana_lab import PolicyStore, RequestError, parse_request, validate_signals

from .conftest import SAMPLE_POLICIES, claims_request

STORE = PolicyStore(SAMPLE_POLICIES)
CLAIMS = STORE.get("claims-approval", "1.0.0")
VENDOR = STORE.get("vendor-payment", "1.0.0")


def check(signals, policy=CLAIMS):
    validate_signals(signals, policy)


def code_of(fn, *args):
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert info.value.stage == "validate"
    return info.value.code


def test_request_shape_codes():
    assert code_of(parse_request, b"[1]") == "VAL-001"
    assert code_of(parse_request, "{not json") == "VAL-001"
    assert code_of(parse_request, '{"policyId": "a", "policyId": "b"}') == "VAL-001"
    assert code_of(parse_request, {"policyId": "p", "policyVersion": "1.0.0"}) == "VAL-002"
    assert code_of(parse_request, {**claims_request(), "extra": 1}) == "VAL-002"
    assert code_of(parse_request, {**claims_request(), "policyVersion": 1}) == "VAL-002"
    assert code_of(parse_request, {**claims_request(), "signals": [1]}) == "VAL-002"
    assert code_of(parse_request, {**claims_request(), "executionId": ""}) == "VAL-002"
    assert code_of(parse_request, {**claims_request(), "executionId": "a\nb"}) == "VAL-002"


def test_requests_over_64_kib_are_refused_as_text_and_as_objects():
    big = claims_request()
    big["signals"]["note"] = "x" * 70_000
    assert code_of(parse_request, big) == "VAL-005"
    assert code_of(parse_request, json.dumps(big).encode()) == "VAL-005"
    just_under = claims_request()
    just_under["signals"]["pad"] = "y" * (64 * 1024 - 400)
    assert parse_request(just_under).signals["pad"]  # shape passes; the policy refuses 'pad' later


def test_execution_id_is_kept_or_generated():
    given = parse_request({**claims_request(), "executionId": "exec-1"})
    assert given.executionId == "exec-1"
    made = parse_request(claims_request())
    assert len(made.executionId) == 36 and made.executionId.count("-") == 4


def test_undeclared_and_missing_signals():
    signals = claims_request()["signals"]
    assert code_of(check, {**signals, "extra": 1}) == "VAL-003"
    del signals["risk_score"]
    assert code_of(check, signals) == "VAL-004"


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("insurance_active", 1, "VAL-006"),
        ("insurance_active", "true", "VAL-006"),
        ("insurance_active", None, "VAL-006"),
        ("risk_score", True, "VAL-007"),
        ("risk_score", 42.0, "VAL-007"),
        ("risk_score", "42", "VAL-007"),
        ("risk_score", None, "VAL-007"),
        ("risk_score", 2**53, "VAL-010"),
        ("risk_score", -(2**53), "VAL-010"),
    ],
)
def test_signal_types_are_strict(name, value, code):
    signals = claims_request()["signals"]
    signals[name] = value
    assert code_of(check, signals) == code


def test_string_and_enum_signals():
    good = {"amount_cents": 100, "vendor_status": "approved", "invoice_matched": True, "currency": "EUR"}
    check(good, VENDOR)
    assert code_of(check, {**good, "currency": 978}, VENDOR) == "VAL-008"
    assert code_of(check, {**good, "vendor_status": 1}, VENDOR) == "VAL-009"
    assert code_of(check, {**good, "vendor_status": "APPROVED"}, VENDOR) == "VAL-011"


def test_float_message_tells_people_what_to_do():
    signals = claims_request()["signals"]
    signals["claim_amount"] = 85.5
    with pytest.raises(RequestError, match="scaled integer"):
        check(signals)


def test_first_problem_is_chosen_deterministically():
    signals = {"insurance_active": "yes", "risk_score": "high", "vip_customer": False, "claim_amount": 1}
    reasons = set()
    for _ in range(5):
        with pytest.raises(RequestError) as info:
            check(dict(reversed(list(signals.items()))))
        reasons.add(str(info.value))
    assert reasons == {"[VAL-006@validate] signal 'insurance_active' must be a boolean, got string 'yes'"}
