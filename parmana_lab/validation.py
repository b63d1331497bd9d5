"""Strict validation of execution requests and their signals (VAL-xxx).

Signals decide outcomes, so nothing is coerced: an integer is never a bool,
a float or a numeric string, a boolean is never 1 or "true". Problems are
reported in a fixed order (request shape, undeclared, missing, then types by
signal name) so the same bad input always gets the same refusal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from .canonical import MAX_SAFE_INTEGER, canonicalize, parse_json, quote
from .errors import CanonicalizationError, RequestError
from .policy import Policy

MAX_REQUEST_BYTES = 64 * 1024
MAX_EXECUTION_ID = 128
REQUEST_FIELDS = frozenset({"policyId", "policyVersion", "signals", "executionId", "requestedBy"})


class ExecutionRequest(BaseModel):
    """A request that passed the shape checks (its signals are checked against the policy later)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    policyId: str
    policyVersion: str
    signals: dict[str, Any]
    executionId: str
    requestedBy: str | None = None  # who asked: an approver with this id may not resolve it (unless the policy allows)


def _refuse(code: str, reason: str) -> RequestError:
    return RequestError(code, "validate", reason)


def new_execution_id() -> str:
    """A random (version 4) UUID string; uuid.uuid4's result, built with less overhead."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_request(raw: Any, *, new_id=new_execution_id) -> ExecutionRequest:
    """Check a request's shape and size; bytes/str are parsed as JSON first.

    ``new_id`` makes the executionId for requests that bring none.
    """
    pid, pver, signals, execution_id, _, requested_by = check_request(raw, new_id=new_id)
    return ExecutionRequest.model_construct(policyId=pid, policyVersion=pver, signals=signals, executionId=execution_id,
                                            requestedBy=requested_by)


def check_request(raw: Any, *, new_id=new_execution_id) -> tuple[str, str, dict[str, Any], str, bytes, str | None]:
    """parse_request's checks, returning (policyId, policyVersion, signals, executionId, JCS(signals), requestedBy).

    The runtime's hot path uses this form: the canonical signals are needed for
    the fingerprint and signalsHash anyway, and they also give the request size.
    """
    if isinstance(raw, (bytes, bytearray, str)):
        size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if size > MAX_REQUEST_BYTES:
            raise _refuse("VAL-005", f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES}")
        try:
            raw = parse_json(raw)
        except CanonicalizationError as exc:
            raise _refuse("VAL-001", f"request is not usable JSON: {exc.reason}") from None
    if isinstance(raw, ExecutionRequest):
        raw = raw.model_dump()
    if type(raw) is not dict:
        raise _refuse("VAL-001", f"a request is a JSON object, not {_json_type(raw)}")
    if not raw.keys() <= REQUEST_FIELDS:
        extra = sorted(raw.keys() - REQUEST_FIELDS)
        raise _refuse("VAL-002", f"unknown request field(s) {extra}; allowed: {sorted(REQUEST_FIELDS)}")
    for name in ("policyId", "policyVersion", "signals"):
        if name not in raw:
            raise _refuse("VAL-002", f"request field {name!r} is missing")
    pid, pver, signals = raw["policyId"], raw["policyVersion"], raw["signals"]
    if type(pid) is not str or not pid or type(pver) is not str or not pver:
        raise _refuse("VAL-002", "policyId and policyVersion must be non-empty strings")
    if type(signals) is not dict:
        raise _refuse("VAL-002", f"signals must be a JSON object, not {_json_type(signals)}")
    execution_id = raw.get("executionId")
    if execution_id is None:
        execution_id = str(new_id())
    elif (
        type(execution_id) is not str
        or not 0 < len(execution_id) <= MAX_EXECUTION_ID
        or not execution_id.isprintable()
    ):
        raise _refuse("VAL-002", f"executionId must be 1-{MAX_EXECUTION_ID} printable characters")
    requested_by = raw.get("requestedBy")
    if requested_by is not None and (type(requested_by) is not str or not 0 < len(requested_by) <= MAX_EXECUTION_ID
                                     or not requested_by.isprintable()):
        raise _refuse("VAL-002", f"requestedBy must be 1-{MAX_EXECUTION_ID} printable characters (who asked), or absent")
    try:
        signals_jcs = canonicalize(signals)
        # JCS of the whole request, measured without building it: the four
        # members' canonical texts plus the fixed keys and punctuation.
        size = len(signals_jcs) + len(quote(pid)) + len(quote(pver)) + len(quote(execution_id)) + _REQUEST_FRAME
        if requested_by is not None:
            size += len(quote(requested_by)) + len(b',"requestedBy":')
    except CanonicalizationError as exc:
        raise _refuse("VAL-001", f"request has no canonical JSON form: {exc.reason}") from None
    if size > MAX_REQUEST_BYTES:
        raise _refuse("VAL-005", f"request is {size} bytes canonicalized; the limit is {MAX_REQUEST_BYTES}")
    return pid, pver, signals, execution_id, signals_jcs, requested_by


_REQUEST_FRAME = len(b'{"executionId":,"policyId":,"policyVersion":,"signals":}')


def validate_signals(signals: dict[str, Any], policy: Policy) -> None:
    """Refuse signals that do not match the policy's signalsSchema exactly."""
    if type(signals) is not dict:
        raise _refuse("VAL-001", f"signals are a JSON object, not {_json_type(signals)}")
    if signals_conform(policy)(signals):
        return
    check_each_signal(signals, policy)
    raise _refuse("VAL-001", "signals do not match the policy's signalsSchema")  # unreachable while both checks agree


def check_each_signal(signals: dict[str, Any], policy: Policy) -> None:
    """The reference check, signal by signal: raises the first problem in a fixed order."""
    schema = policy.signalsSchema
    if signals.keys() != schema.keys():
        undeclared = sorted(signals.keys() - schema.keys())
        if undeclared:
            raise _refuse(
                "VAL-003",
                f"signal {undeclared[0]!r} is not declared by {policy.policyId} {policy.policyVersion} "
                f"(declared: {', '.join(sorted(schema))})",
            )
        missing = sorted(schema.keys() - signals.keys())
        raise _refuse("VAL-004", f"declared signal {missing[0]!r} is missing")
    for name, spec in policy.signal_checks:
        value = signals[name]
        kind, tv = spec.type, type(value)
        if kind == "integer":
            if tv is not int:
                hint = " (floats are refused: use a scaled integer, e.g. cents)" if tv is float else ""
                raise _refuse("VAL-007", f"signal {name!r} must be an integer, got {_json_type(value)} {_show(value)}{hint}")
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise _refuse("VAL-010", f"signal {name!r} = {value} is outside the safe integer range ±{MAX_SAFE_INTEGER}")
        elif kind == "boolean":
            if tv is not bool:
                raise _refuse("VAL-006", f"signal {name!r} must be a boolean, got {_json_type(value)} {_show(value)}")
        elif kind == "string":
            if tv is not str:
                raise _refuse("VAL-008", f"signal {name!r} must be a string, got {_json_type(value)} {_show(value)}")
        elif tv is not str:
            raise _refuse("VAL-009", f"signal {name!r} must be one of the strings {list(spec.values or ())}, got {_json_type(value)}")
        elif value not in (spec.values or ()):
            raise _refuse("VAL-011", f"signal {name!r} = {value!r} is not allowed (allowed: {', '.join(spec.values or ())})")


def signals_conform(policy: Policy) -> Callable[[dict[str, Any]], bool]:
    """One generated expression that is True exactly when validate_signals accepts the signals.

    Bulk verification and execute_many validate every record;
    check_each_signal only runs to say what is wrong. Signal names and enum values reach the code
    through constant tuples, never as source text. Cached on the policy, like
    its compiled rules; a property test holds both paths to the same verdicts.
    """
    check = policy.__dict__.get("_conforms")
    if check is None:
        names = tuple(name for name, _ in policy.signal_checks)
        allowed = tuple(frozenset(spec.values or ()) for _, spec in policy.signal_checks)
        terms = [f"len(s) == {len(names)}"]
        for i, (_, spec) in enumerate(policy.signal_checks):
            value = f"s.get(N[{i}])"
            terms.append({
                "integer": f"type({value}) is int and -M <= s[N[{i}]] <= M",
                "boolean": f"type({value}) is bool",
                "string": f"type({value}) is str",
                "enum": f"type({value}) is str and s[N[{i}]] in A[{i}]",
            }[spec.type])
        scope = {"N": names, "A": allowed, "M": MAX_SAFE_INTEGER,
                 "__builtins__": {"len": len, "type": type, "int": int, "bool": bool, "str": str}}
        check = policy.__dict__["_conforms"] = eval("lambda s: " + " and ".join(f"({t})" for t in terms), scope)  # noqa: S307
    return check


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
