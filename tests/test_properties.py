"""Property-based tests (hypothesis): canonical JSON, evaluation, hostile inputs."""

import json

import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parmana_lab import CanonicalizationError, ParmanaError, PolicyStore, canonicalize, evaluate, parse_policy, parse_request
from parmana_lab.attestation import parse_attestation_line
from parmana_lab.validation import validate_signals

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
