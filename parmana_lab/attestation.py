"""ExecutionAttestation v1: the signed record of one execution.

The signature covers DSSE PAE(type, JCS(body)), where body is every field
but ``signature``. PAE binds the payload to its type, so these bytes can
never be confused with another kind of signed document.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import nacl.exceptions
import nacl.signing
import orjson
from pydantic import BaseModel, ConfigDict, model_validator

from .canonical import canonicalize
from .errors import ParmanaError
from .evaluate import Decision
from .keys import SigningKey, public_key_from_pem

ATTESTATION_TYPE = "PARMANA_ATTESTATION_V1"
FIELDS = (
    "executionId",
    "execution_fingerprint",
    "policyId",
    "policyVersion",
    "schemaVersion",
    "runtimeVersion",
    "runtimeHash",
    "evaluatorArtifactHash",
    "signalsHash",
    "bundleHash",
    "decision",
    "execution_state",
    "issuedAt",
    "signerKeyId",
    "signature",
)


_JSTR = rb'"(?:[^"\\\x00-\x1f]++|\\["\\bfnrt]|\\u00(?:0[0-7bef]|1[0-9a-f]))*+"'
_JHEX = rb'"[0-9a-f]{64}"'
# A canonical (RFC 8785) v1 attestation line: members in sorted order, no
# whitespace, only the escapes JCS emits, and the value rules of
# attestation_problem. With a successful UTF-8 JSON parse, a match means the
# line is exactly JCS of what it parses to (a property test holds this).
_CANONICAL_LINE = re.compile(
    rb'\{"bundleHash":' + _JHEX + rb',"decision":\{"action":' + _JSTR + rb',"reason":' + _JSTR
    + rb',"requires_override":(?:true|false),"ruleId":' + _JSTR + rb'\},"evaluatorArtifactHash":' + _JHEX
    + rb',"executionId":' + _JSTR + rb',"execution_fingerprint":' + _JHEX
    + rb',"execution_state":"(?:completed|pending_override)","issuedAt":"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])'
    + rb'T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z","policyId":' + _JSTR + rb',"policyVersion":' + _JSTR
    + rb',"runtimeHash":' + _JHEX + rb',"runtimeVersion":' + _JSTR + rb',"schemaVersion":' + _JSTR
    + rb',"signalsHash":' + _JHEX + rb',"signature":"[A-Za-z0-9+/]{85}[AQgw]==","signerKeyId":"[0-9a-f]{16}"\}'
)


def parse_attestation_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(attestation, None) for a well-formed canonical line, else (None, why)."""
    if _CANONICAL_LINE.fullmatch(line):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return None, f"not valid JSON text ({exc})"
        if (obj["execution_state"] == "pending_override") is obj["decision"]["requires_override"]:
            return obj, None
        return None, "execution_state contradicts decision.requires_override"
    # the slow path only explains what is wrong
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({exc})"
    problem = attestation_problem(obj)
    if problem is not None:
        return None, problem
    return None, "not in canonical (RFC 8785) form: reordered, re-spaced, re-escaped or duplicated members"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


_PAE_PREFIX = b"DSSEv1 %d %s " % (len(ATTESTATION_TYPE), ATTESTATION_TYPE.encode())


def signing_message(body: dict[str, Any]) -> bytes:
    """The exact bytes signed for an attestation body (every field but signature)."""
    payload = canonicalize(body)
    return _PAE_PREFIX + b"%d " % len(payload) + payload


class ExecutionAttestation(BaseModel):
    """One signed execution. Field names are the wire names, mixed case and all."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)
    executionId: str
    execution_fingerprint: str
    policyId: str
    policyVersion: str
    schemaVersion: str
    runtimeVersion: str
    runtimeHash: str
    evaluatorArtifactHash: str
    signalsHash: str
    bundleHash: str
    decision: Decision
    execution_state: Literal["completed", "pending_override"]
    issuedAt: str
    signerKeyId: str
    signature: str

    @model_validator(mode="before")
    @classmethod
    def _wire_rules(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problem = attestation_problem(data, partial=True)
            if problem:
                raise ValueError(problem)
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def body(self) -> dict[str, Any]:
        data = self.model_dump()
        del data["signature"]
        return data

    def canonical(self) -> bytes:
        """The archived form: JCS of every field, signature included."""
        return canonicalize(self.model_dump())

    def signing_message(self) -> bytes:
        return signing_message(self.body())

    def _repr_html_(self) -> str:
        from ._html import attestation_html

        return attestation_html(self)

    @classmethod
    def _trusted(cls, body: dict[str, Any], decision: Decision) -> ExecutionAttestation:
        """Wrap (and take over) a signed body the runtime itself just built, skipping validation.

        What pydantic's model_construct does, minus its per-field bookkeeping,
        which costs more than signing on the execute_many hot path. Tests check
        the result equals a fully validated model.
        """
        m = cls.__new__(cls)
        body["decision"] = decision
        object.__setattr__(m, "__dict__", body)
        object.__setattr__(m, "__pydantic_fields_set__", set(_FIELD_SET))
        object.__setattr__(m, "__pydantic_extra__", None)
        object.__setattr__(m, "__pydantic_private__", None)
        return m


_FIELD_SET = frozenset(FIELDS)
_BODY_KEYS = _FIELD_SET - {"signature"}
_DECISION_KEYS = frozenset({"action", "requires_override", "reason", "ruleId"})
_STRING_FIELDS = tuple(f for f in FIELDS if f != "decision")
_HASH_FIELDS = ("execution_fingerprint", "runtimeHash", "evaluatorArtifactHash", "signalsHash", "bundleHash")
_HEX = re.compile(r"[0-9a-f]*")
# ASCII digits only: a str pattern's \d would also accept other scripts' digits
_ISSUED_AT = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z", re.ASCII)
# 64 bytes in padded base64: 85 free characters, one whose low bits are zero, then "=="
_BASE64_SIG = re.compile(r"[A-Za-z0-9+/]{85}[AQgw]==")
_STATES = ("completed", "pending_override")


def attestation_problem(obj: Any, *, partial: bool = False) -> str | None:
    """Why ``obj`` is not a well-formed v1 attestation, or None. The one place the wire rules live.

    With ``partial`` a wrong member set is left for the caller to report
    (pydantic names missing and extra members itself). Written for bulk
    verification: the common case runs in C-level loops.
    """
    if type(obj) is not dict:
        return "an attestation is a JSON object"
    if obj.keys() != _FIELD_SET:
        if partial:
            return None
        missing, extra = sorted(_FIELD_SET - obj.keys()), sorted(obj.keys() - _FIELD_SET)
        if missing and extra:
            return f"members missing {missing} / unexpected {extra}"
        return f"missing member(s) {missing}" if missing else f"unexpected member(s) {extra}"
    values = tuple(map(obj.__getitem__, _STRING_FIELDS))
    if set(map(type, values)) != {str}:
        return next(f"{n} must be a string" for n, v in zip(_STRING_FIELDS, values) if type(v) is not str)
    d = obj["decision"]
    if type(d) is not dict or d.keys() != _DECISION_KEYS:
        return "decision must be exactly {action, requires_override, reason, ruleId}"
    if type(d["action"]) is not str or type(d["reason"]) is not str or type(d["ruleId"]) is not str:
        return "decision action, reason and ruleId must be strings"
    if type(d["requires_override"]) is not bool:
        return "decision.requires_override must be a boolean"
    hashes = tuple(map(obj.__getitem__, _HASH_FIELDS))
    if set(map(len, hashes)) != {64} or not _HEX.fullmatch("".join(hashes)):
        bad = next(n for n, v in zip(_HASH_FIELDS, hashes) if len(v) != 64 or not _HEX.fullmatch(v))
        return f"{bad} must be 64 lowercase hex characters (sha256)"
    key_id = obj["signerKeyId"]
    if len(key_id) != 16 or not _HEX.fullmatch(key_id):
        return "signerKeyId must be 16 lowercase hex characters"
    if not _ISSUED_AT.fullmatch(obj["issuedAt"]):
        return "issuedAt must be a UTC timestamp like 2026-01-31T12:00:00.000Z"
    state = obj["execution_state"]
    if state not in _STATES:
        return "execution_state must be completed or pending_override"
    if (state == "pending_override") is not d["requires_override"]:
        return "execution_state contradicts decision.requires_override"
    if not _BASE64_SIG.fullmatch(obj["signature"]):
        return "signature must be 88 characters of canonical padded base64 (64 bytes)"
    return None


def sign_body(body: dict[str, Any], key: SigningKey) -> str:
    """Base64 (standard, padded) Ed25519 signature over the body's PAE."""
    return seal(body, key)[0]


def seal(body: dict[str, Any], key: SigningKey) -> tuple[str, bytes]:
    """Sign a body; return (signature, JCS bytes of the whole signed attestation).

    "signature" sorts right before "signerKeyId", the body's last key, so the
    signed attestation's canonical form is the payload with one member spliced
    in; a ``,"`` never occurs inside a JCS string, so the cut point is exact.
    """
    payload = canonicalize(body)
    signature = base64.b64encode(key.sign(_PAE_PREFIX + b"%d " % len(payload) + payload)).decode("ascii")
    if body.keys() != _BODY_KEYS:
        return signature, canonicalize({**body, "signature": signature})
    cut = payload.rindex(b',"signerKeyId":')
    return signature, b'%s,"signature":"%s"%s' % (payload[:cut], signature.encode("ascii"), payload[cut:])


def _verify_key(public_key: Any) -> nacl.signing.VerifyKey:
    if isinstance(public_key, nacl.signing.VerifyKey):
        return public_key
    if isinstance(public_key, SigningKey):
        return public_key.verify_key
    if isinstance(public_key, str) or (isinstance(public_key, bytes) and public_key.startswith(b"-----")):
        return nacl.signing.VerifyKey(public_key_from_pem(public_key))
    return nacl.signing.VerifyKey(bytes(public_key))


def decode_signature(signature: str) -> bytes | None:
    """The 64 signature bytes, or None unless it is canonical, padded standard base64."""
    if type(signature) is not str or not _BASE64_SIG.fullmatch(signature):
        return None
    return binascii.a2b_base64(signature)


def verify_signature(attestation: ExecutionAttestation | dict[str, Any], public_key: Any) -> bool:
    """Basic check: does ``signature`` verify under ``public_key`` over the PAE of the body?

    ``public_key`` may be an SPKI PEM, 32 raw bytes, a nacl VerifyKey or a SigningKey.
    Returns False for any mismatch or malformed signature; the full verifier says why.
    """
    data = attestation.model_dump() if isinstance(attestation, ExecutionAttestation) else dict(attestation)
    signature = data.pop("signature", None)
    raw = decode_signature(signature) if isinstance(signature, str) else None
    if raw is None:
        return False
    try:
        _verify_key(public_key).verify(signing_message(data), raw)
    except (nacl.exceptions.BadSignatureError, ParmanaError, ValueError, TypeError):
        return False
    return True


def to_dsse(attestation: ExecutionAttestation) -> dict[str, Any]:
    """A standard DSSE envelope, checkable by stock DSSE tooling."""
    return {
        "payloadType": ATTESTATION_TYPE,
        "payload": base64.b64encode(canonicalize(attestation.body())).decode("ascii"),
        "signatures": [{"keyid": attestation.signerKeyId, "sig": attestation.signature}],
    }
