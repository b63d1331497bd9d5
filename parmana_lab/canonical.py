"""RFC 8785 (JCS) canonical JSON and the SHA-256 helpers built on it.

Signatures and fingerprints are computed over these bytes, so they must be
identical to every other JCS implementation. The fast path hands the common
case (str/int/bool/None/dict/list, no floats) to orjson after a cheap type
walk; anything orjson would order or format differently from JCS (floats,
keys outside the BMP) goes through the reference encoder below. Both paths
are tested byte for byte against the ``rfc8785`` package.
"""

from __future__ import annotations

import hashlib
import math
from json.encoder import encode_basestring as _json_quote
from typing import Any

import orjson

from .errors import CanonicalizationError

MAX_SAFE_INTEGER = 2**53 - 1
_SORT = orjson.OPT_SORT_KEYS


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 bytes of a JSON-compatible Python value."""
    if _fast_path_ok(value):
        try:
            out = orjson.dumps(value, option=_SORT)
        except TypeError as exc:  # lone surrogates
            raise CanonicalizationError(f"value is not valid Unicode: {exc}") from None
        # orjson sorts keys by code point; JCS by UTF-16 unit. They differ only
        # for keys holding characters beyond the BMP.
        if out.isascii() or not _has_astral_key(value):
            return out
    try:
        return _encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError("value contains a lone surrogate, which is not valid Unicode") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_hash(value: Any) -> str:
    """sha256(JCS(value)) as lowercase hex: the kit's only hash form."""
    return hashlib.sha256(canonicalize(value)).hexdigest()


def fingerprint_payload(policy_id: str, policy_version: str, signals_jcs: bytes) -> bytes:
    """JCS({"policyId", "policyVersion", "signals"}) assembled from already canonical signals.

    The three keys already sort in this order, so concatenation is the JCS
    form; it spares canonicalizing the signals a second time on the hot path.
    """
    return b'{"policyId":%s,"policyVersion":%s,"signals":%s}' % (quote(policy_id), quote(policy_version), signals_jcs)


def quote(text: str) -> bytes:
    """JCS form of one string (orjson escapes exactly as RFC 8785 requires)."""
    try:
        return orjson.dumps(text)
    except TypeError:
        raise CanonicalizationError("value contains a lone surrogate, which is not valid Unicode") from None


def execution_fingerprint(policy_id: str, policy_version: str, signals: dict[str, Any]) -> str:
    """sha256(JCS({"policyId", "policyVersion", "signals"})): the replay key."""
    return sha256_hex(fingerprint_payload(policy_id, policy_version, canonicalize(signals)))


# -- fast path ---------------------------------------------------------------

def _fast_path_ok(o: Any) -> bool:
    """True when orjson's output is JCS as is; raises on values JSON cannot hold."""
    t = type(o)
    if t is dict:
        for k, v in o.items():
            if type(k) is not str:
                raise CanonicalizationError(f"object key {k!r} is not a string")
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if tv is int:
                if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                    continue
                _unsafe_int(v)
            if not _fast_path_ok(v):
                return False
        return True
    if t is list or t is tuple:
        for v in o:
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if not _fast_path_ok(v):
                return False
        return True
    if t is str or t is bool or o is None:
        return True
    if t is int:
        if -MAX_SAFE_INTEGER <= o <= MAX_SAFE_INTEGER:
            return True
        _unsafe_int(o)
    if t is float:
        if not math.isfinite(o):
            raise CanonicalizationError(f"{o!r} has no JSON form")
        return False
    raise CanonicalizationError(f"{t.__name__} is not a JSON type")


def _has_astral_key(o: Any) -> bool:
    if type(o) is dict:
        return any(max(k, default="\0") > "\uffff" or _has_astral_key(v) for k, v in o.items())
    if type(o) in (list, tuple):
        return any(_has_astral_key(v) for v in o)
    return False


def _unsafe_int(v: int):
    raise CanonicalizationError(
        f"integer {v} is outside the I-JSON safe range ±{MAX_SAFE_INTEGER}; encode it as a string"
    )


# -- reference encoder (floats, astral keys) ----------------------------------

def _encode(o: Any) -> str:
    t = type(o)
    if t is str:
        return _json_quote(o)
    if o is None:
        return "null"
    if t is bool:
        return "true" if o else "false"
    if t is int:
        if not -MAX_SAFE_INTEGER <= o <= MAX_SAFE_INTEGER:
            _unsafe_int(o)
        return str(o)
    if t is float:
        return es_number(o)
    if t is list or t is tuple:
        return "[" + ",".join(map(_encode, o)) + "]"
    if t is dict:
        for k in o:
            if type(k) is not str:
                raise CanonicalizationError(f"object key {k!r} is not a string")
        keys = sorted(o, key=_utf16_key)
        return "{" + ",".join(_json_quote(k) + ":" + _encode(o[k]) for k in keys) + "}"
    raise CanonicalizationError(f"{t.__name__} is not a JSON type")


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def es_number(f: float) -> str:
    """Format a double the way ECMAScript's Number.prototype.toString does."""
    if not math.isfinite(f):
        raise CanonicalizationError(f"{f!r} has no JSON form")
    if f == 0:
        return "0"  # also -0
    sign = "-" if f < 0 else ""
    mantissa, _, exp = repr(abs(f)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    n = len(whole) + int(exp or 0) - (len(whole + frac) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        e = n - 1
        body = (digits[0] + ("." + digits[1:] if k > 1 else "")) + ("e+" if e > 0 else "e-") + str(abs(e))
    return sign + body


# -- strict parsing ------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CanonicalizationError(f"duplicate object key {dup!r}: the signed bytes would be ambiguous")
    return out


def _no_constant(name: str):
    raise CanonicalizationError(f"{name} is not JSON")


def parse_json(data: bytes | str) -> Any:
    """Parse JSON text, refusing duplicate keys, NaN/Infinity and invalid UTF-8.

    Duplicate keys are refused because two parsers may keep different values,
    which makes anything signed over them ambiguous. Text already in JCS form
    (what the kit writes) is parsed by orjson alone: it equals the JCS of what
    it parses to, so it holds no duplicate key, constant or invalid UTF-8.
    """
    canonical = parse_canonical(data)
    if canonical is not None:
        return canonical[0]
    import json

    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalizationError(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise CanonicalizationError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CanonicalizationError("JSON nested too deeply") from None


def parse_canonical(data: bytes | str) -> tuple[Any, bytes] | None:
    """(value, its bytes) when ``data`` is exactly the JCS form of a JSON value, else None (not an error: the caller
    falls back to a strict parse that says what is wrong)."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        value = orjson.loads(raw)
        # Only values without floats: orjson reads an integer beyond 64 bits as a float, whose JCS looks the same.
        if _fast_path_ok(value) and orjson.dumps(value, option=_SORT) == raw and (raw.isascii() or not _has_astral_key(value)):
            return value, raw
    except (orjson.JSONDecodeError, CanonicalizationError, UnicodeEncodeError, TypeError):
        pass
    return None
