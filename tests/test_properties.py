"""Property-based tests (hypothesis): canonical JSON, evaluation, hostile inputs."""

import json

import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parmana_lab import CanonicalizationError, ParmanaError, PolicyStore, canonicalize, evaluate, parse_policy, parse_request
from parmana_lab.attestation import parse_attestation_line
from parmana_lab.validation import _conformance, check_each_signal, validate_signals

from .conftest import SAMPLE_POLICIES

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
JSON = st.recursive(
    st.none() | st.booleans() | SAFE_INT | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
STORE = PolicyStore(SAMPLE_POLICIES)
POLICIES = [p for p in STORE.scan()]


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_canonicalize_equals_rfc8785(value):
    try:
        expected = rfc8785.dumps(value)
    except Exception:  # rfc8785 refuses it (e.g. lone surrogates): so must we
        try:
            canonicalize(value)
        except CanonicalizationError:
            return
        raise AssertionError(f"accepted what rfc8785 refuses: {value!r}") from None
    assert canonicalize(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(POLICIES), st.data())
def test_evaluation_is_deterministic_on_valid_signals(policy, data):
    kinds = {"integer": SAFE_INT, "boolean": st.booleans(), "string": st.text(max_size=6)}
    signals = {
        name: data.draw(st.sampled_from(spec.values) if spec.type == "enum" else kinds[spec.type])
        for name, spec in policy.signalsSchema.items()
    }
    validate_signals(signals, policy)
    first = evaluate(policy, signals)
    assert evaluate(policy, dict(reversed(list(signals.items())))) == first


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(POLICIES), st.dictionaries(st.text(max_size=12), JSON, max_size=6))
def test_random_signals_only_ever_give_structured_refusals(policy, signals):
    try:
        validate_signals(signals, policy)
        evaluate(policy, signals)
    except ParmanaError as exc:
        assert exc.code.startswith(("VAL-", "SYS-")) and str(exc).startswith(f"[{exc.code}@")


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_random_requests_and_policies_only_ever_give_structured_refusals(value):
    for attempt in (lambda: parse_request(value), lambda: parse_request(json.dumps(value)), lambda: parse_policy(value)):
        try:
            attempt()
        except ParmanaError as exc:
            assert exc.code[:4] in ("VAL-", "POL-") and exc.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | JSON.map(lambda v: json.dumps(v).encode()))
def test_random_archive_lines_are_malformed_never_a_crash(line):
    obj, problem = parse_attestation_line(line)
    assert obj is None and problem


NEAR_VALUES = (st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=4) | st.sampled_from(["", "x", "1"])
               | st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 0, 1]) | st.integers())


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(POLICIES), st.data())
def test_fast_signal_check_agrees_with_the_reference_check(policy, data):
    """Signals that are almost right (each value valid, or of a wrong kind; keys missing or added)."""
    signals = {}
    for name, spec in policy.signalsSchema.items():
        valid = st.sampled_from(spec.values) if spec.type == "enum" else {"integer": SAFE_INT, "boolean": st.booleans(),
                                                                           "string": st.text(max_size=6)}[spec.type]
        if data.draw(st.integers(0, 9)) == 0:
            continue  # a missing signal
        signals[name] = data.draw(valid if data.draw(st.integers(0, 3)) else NEAR_VALUES)
    if data.draw(st.integers(0, 9)) == 0:
        signals[data.draw(st.text(max_size=6))] = 1  # perhaps an undeclared one
    try:
        check_each_signal(signals, policy)
        reference = True
    except ParmanaError:
        reference = False
    assert _conformance(policy)(signals) is reference
