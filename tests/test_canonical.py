import json
import math
import random
import struct

import pytest
import rfc8785

from parmana_lab import CanonicalizationError, canonicalize, parse_json, runtime_hash, runtime_manifest
from parmana_lab.canonical import es_number

from .conftest import JCS_VECTORS

VECTOR_NAMES = sorted(p.stem for p in (JCS_VECTORS / "input").glob("*.json"))


def test_vector_set_is_present():
    assert {"arrays", "french", "structures", "unicode", "values", "weird"} <= set(VECTOR_NAMES)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_rfc8785_vectors_byte_for_byte(name):
    value = json.loads((JCS_VECTORS / "input" / f"{name}.json").read_text(encoding="utf-8"))
    expected = (JCS_VECTORS / "output" / f"{name}.json").read_bytes()
    hexed = bytes.fromhex((JCS_VECTORS / "outhex" / f"{name}.txt").read_text())
    assert canonicalize(value) == expected == hexed


def test_runtime_hash_published_vector():
    manifest = runtime_manifest(
        runtime_version="1.0.0",
        supported_schema_versions=("1.0.0",),
        capabilities=("deterministic-evaluation", "attestation-signing", "replay-protection", "bundle-verification"),
    )
    assert runtime_hash(manifest) == "f55711983deddba4b6ad3d9d63017980641d242142e8e6e0602f77e0f54c4eb0"


def _random_string(rng: random.Random) -> str:
    pools = [
        "abcXYZ019 _-",
        "\"\\/\b\f\n\r\t\x00\x01\x1f\x7f",
        "éüß€\u2028\u2029\u0080\u00ff",
        "\ue000\uf8ff\ufb33\uffef",
        "😂𝄞\U0010ffff\U00010000",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 8)))


def _random_number(rng: random.Random):
    kind = rng.randint(0, 5)
    if kind == 0:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if kind == 1:
        return rng.randint(-1000, 1000)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return float(f"{rng.randint(1, 9)}e{rng.randint(-330, 307)}") * rng.choice((1, -1))
    if kind == 4:
        return rng.choice([0.0, -0.0, 1e21, 1e-7, 1e-6, 123e20, 5e-324, 1.7976931348623157e308, 0.1, 100.0])
    return struct_double(rng)


def struct_double(rng: random.Random) -> float:
    while True:
        (value,) = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))
        if math.isfinite(value):
            return value


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return _random_string(rng)
    if kind in (2, 3):
        return _random_number(rng)
    if kind == 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_string(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_differential_against_rfc8785_on_10000_generated_values():
    rng = random.Random(8785)
    for n in range(10_000):
        value = _random_value(rng)
        assert canonicalize(value) == rfc8785.dumps(value), f"case {n}: {value!r}"


def test_attestation_shaped_values_take_the_fast_path_and_match():
    value = {
        "executionId": "3f1c9a2e",
        "decision": {"action": "approve", "requires_override": False, "reason": "ok", "ruleId": "r1"},
        "signals": {"n": 2**53 - 1, "m": -(2**53) + 1, "s": "\u00e9\U0001f602"},
    }
    assert canonicalize(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (-0.0, "0"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (1e-7, "1e-7"), (1e-6, "0.000001"),
     (123456789.125, "123456789.125"), (-1.5, "-1.5"), (5e-324, "5e-324"), (2**60 * 1.0, "1152921504606847000")],
)
def test_ecmascript_number_form(value, text):
    assert es_number(value) == text
    assert rfc8785.dumps(value).decode() == text


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), {"a": float("-inf")}, 2**53, -(2**53), {"k": [2**64]}, {1: "x"}, {"s": "\ud800"}, b"bytes", {1, 2}],
)
def test_values_without_a_canonical_form_are_refused(bad):
    with pytest.raises(CanonicalizationError) as info:
        canonicalize(bad)
    assert info.value.code == "CAN-001" and info.value.stage == "canonicalize"


def test_parse_json_refuses_duplicate_keys_and_constants():
    with pytest.raises(CanonicalizationError, match="duplicate object key 'a'"):
        parse_json('{"a": 1, "b": {"a": 2}, "a": 3}')
    with pytest.raises(CanonicalizationError, match="NaN is not JSON"):
        parse_json('{"a": NaN}')
    with pytest.raises(CanonicalizationError, match="not valid UTF-8"):
        parse_json(b'{"a": "\xff"}')
    assert parse_json('{"a": {"a": 1}}') == {"a": {"a": 1}}


def _strict_stdlib(text: str):
    """The reference strict parse (what parse_json did before its JCS fast path)."""
    def pairs(items):
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate")
        return dict(items)

    def constant(name):
        raise ValueError(name)

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)


def test_parse_json_fast_path_agrees_with_the_strict_stdlib_parse():
    rng = random.Random(7)
    texts = []
    for _ in range(3_000):
        value = _random_value(rng)
        jcs = canonicalize(value).decode()
        texts += [jcs, json.dumps(value), jcs.replace(":", ": ", 1)]
        if jcs.startswith("{") and len(jcs) > 2:  # the same key twice: canonical-looking but ambiguous
            texts.append(jcs[:-1] + "," + jcs[1:])
    texts += ['{"a":1,"a":1}', '{"a":NaN}', '[1e400]', '{"a":"\\ud800"}', '"\\u00e9"', '[9007199254740993]', '{"b":1,"a":2}']
    for text in texts:
        try:
            expected = _strict_stdlib(text)
        except ValueError:
            with pytest.raises(CanonicalizationError):
                parse_json(text)
            continue
        got = parse_json(text)
        assert got == expected and json.dumps(got) == json.dumps(expected), text
