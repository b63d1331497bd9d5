"""Property-based tests (hypothesis): canonical JSON, evaluation, hostile inputs."""

import json

import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parmana_lab import CanonicalizationError, ParmanaError, PolicyStore, canonicalize, evaluate, parse_policy, parse_request
from parmana_lab.attestation import parse_attestation_line
from parmana_lab.validation import check_each_signal, signals_conform, validate_signals

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
    assert signals_conform(policy)(signals) is reference


# -- the verifier's short path against its checks one by one ------------------------------------------

_CORPUS: dict = {}


def _corpus():
    """Real archive lines of every sample policy, and verification contexts that see them differently."""
    if not _CORPUS:
        import tempfile
        from datetime import datetime, timezone
        from pathlib import Path

        from parmana_lab import Runtime
        from parmana_lab.checks import Context, load_archive_policies

        from .conftest import FakeClock, sample_requests

        clock = FakeClock()
        with tempfile.TemporaryDirectory() as tmp, Runtime(Path(tmp) / "ws", policies=SAMPLE_POLICIES, clock=clock) as rt:
            for request in sample_requests():
                rt.execute(request)
                clock.advance(60)
            root = Path(rt.export_archive(Path(tmp) / "archive").path)
            lines = (root / "attestations.jsonl").read_bytes().splitlines()
            signals = (root / "signals.jsonl").read_bytes().splitlines()
            policies = load_archive_policies(root)
            store = rt.trust_store()
            current = {json.loads(lines[0])["runtimeHash"]}
        midway = datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc).timestamp() + 60 * len(lines) / 2
        revoked = store.model_copy(update={"keys": [k.model_copy(update={"revokedAt": datetime.fromtimestamp(midway, timezone.utc)
                                                                          .strftime("%Y-%m-%dT%H:%M:%S.000Z")}) for k in store.keys]})
        _CORPUS.update(lines=lines, signals=signals, contexts=[
            Context.build(store, current, policies=policies),
            Context.build(store, {*current, "not a hash", "A" * 64}, policies=policies),
            Context.build(store, set(), policies=policies),
            Context.build(revoked, current, policies=policies),
            Context.build(store, current, policies={}),
        ])
    return _CORPUS


def _reference(line, signals_line, ctx):
    from parmana_lab import checks

    pending: list = []
    rows = [checks._check_each(1, line, signals_line, ctx, pending, 0)]
    checks._verify_signatures(rows, pending, ctx)
    return rows[0]


TAMPER_VALUES = NEAR_VALUES | st.sampled_from([
    True, False, 1, 0, 1.0, "completed", "pending_override", "0" * 64, "A" * 64, "a" * 63, "2026-01-15T09:31:00Z",
    "\u0662026-01-15T09:31:00.000Z", "2026-01-15T09:31:00.000Z", "é", "\u2028", "x\\y", "x\"y", [], {}, ["x"], {"a": 1},
])


def _case_swapped(value):
    return value.swapcase() if isinstance(value, str) else value


def _sibling(value):
    """The same base64 character class neighbour: decodes to the same bytes under a lax decoder."""
    if not isinstance(value, str) or len(value) != 88:
        return value
    return value[:85] + {"A": "B", "Q": "R", "g": "h", "w": "x"}.get(value[85], value[85]) + value[86:]


# values that are wrong only in their format (what a lax reader would let through), per field
_NEAR_MISSES = {
    "decision": lambda v: [1, 0, "true", None],  # decision.requires_override
    "signature": lambda v: [_sibling(v), v[:-2], v + "==", v[:86] + "AA", v[:86] + "A="],
    "issuedAt": lambda v: [v.replace("2", "\u0662", 1), v[:19] + "Z", v.lower(), v[:-1] + "+00:00"],
    "signerKeyId": lambda v: [_case_swapped(v), v + "0"],
    "evaluatorArtifactHash": lambda v: [_case_swapped(v), v[:-1]],
    "runtimeHash": lambda v: [_case_swapped(v), v[:-1]],
    "bundleHash": lambda v: [_case_swapped(v)],
    "signalsHash": lambda v: [_case_swapped(v)],
    "execution_fingerprint": lambda v: [_case_swapped(v)],
    "execution_state": lambda v: ["Completed", "pending", None, True],
    "executionId": lambda v: [7, None, [v], {"id": v}],
    "policyId": lambda v: [[v], None, 1],
    "policyVersion": lambda v: [[v], 1.0, None],
    "runtimeVersion": lambda v: [1, None],
    "schemaVersion": lambda v: [1, None],
}


def _tamper(data, raw: bytes, others: list[bytes]) -> bytes:
    import orjson

    how = data.draw(st.sampled_from(["byte", "value", "other line's value", "drop", "add", "respell"]))
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        how = "byte"
    if how == "byte" or not isinstance(obj, dict) or not obj:
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        cut = data.draw(st.integers(0, 2))
        return raw[:at] + data.draw(st.sampled_from([b"", b'"', b"\\", b" ", b"0", b"a", b"A", b"\xff", b"\xc3\xa9", b"}"])) + raw[at + cut:]
    holder = obj
    if "decision" in obj and data.draw(st.booleans()) and isinstance(obj["decision"], dict):
        holder = obj["decision"]
    elif "signals" in obj and isinstance(obj["signals"], dict) and obj["signals"] and data.draw(st.booleans()):
        holder = obj["signals"]
    key = data.draw(st.sampled_from(sorted(holder)))
    if how == "value":
        holder[key] = data.draw(TAMPER_VALUES)
    elif how == "other line's value":
        other = orjson.loads(data.draw(st.sampled_from(others)))
        if key in other:
            holder[key] = other[key]
    elif how == "drop":
        del holder[key]
    elif how == "add":
        holder[data.draw(st.sampled_from(["extra", key + "x", "aaa"]))] = data.draw(TAMPER_VALUES)
    spelling = data.draw(st.sampled_from(["jcs", "sorted", "as parsed", "spaced"]))
    try:
        if spelling == "jcs":
            return canonicalize(obj)
    except ParmanaError:
        pass
    if spelling == "spaced":
        return json.dumps(obj, sort_keys=True).encode()
    return _compact(obj, sort_keys=spelling == "sorted")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_verifier_short_path_agrees_with_each_check(data):
    """Bulk verification confirms good records on a short path; on anything tampered it must reach
    exactly the verdict, codes and findings of the checks run one by one."""
    from parmana_lab.checks import check_line

    corpus = _corpus()
    i = data.draw(st.integers(0, len(corpus["lines"]) - 1))
    line, signals_line = corpus["lines"][i], corpus["signals"][i]
    target = data.draw(st.sampled_from(["near miss"] * 4 + ["line", "signals", "both", "executionId", "no signals", "untouched"]))
    if target == "near miss":
        obj = json.loads(line)
        key = data.draw(st.sampled_from(sorted(_NEAR_MISSES)))
        holder, name = (obj["decision"], "requires_override") if key == "decision" else (obj, key)
        holder[name] = data.draw(st.sampled_from(_NEAR_MISSES[key](holder[name])))
        line = _compact(obj)
    if target in ("line", "both"):
        line = _tamper(data, line, corpus["lines"])
    if target in ("signals", "both"):
        signals_line = _tamper(data, signals_line, corpus["signals"])
    if target == "executionId":  # the same odd executionId in both, so they still pair
        value = data.draw(TAMPER_VALUES)
        line = _compact({**json.loads(line), "executionId": value})
        signals_line = _compact({**json.loads(signals_line), "executionId": value})
    if target == "no signals":
        signals_line = None
    ctx = data.draw(st.sampled_from(corpus["contexts"]))
    assert check_line(1, line, signals_line, ctx) == _reference(line, signals_line, ctx)


def _compact(obj, sort_keys: bool = True) -> bytes:
    """Like the exporter's spelling where the values allow it (json, not orjson: any integer size)."""
    return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
