"""ExecutionAttestation v1: the signed record of one execution.

The signature covers DSSE PAE(type, JCS(body)), where body is every field
but ``signature``. PAE binds the payload to its type, so these bytes can
never be confused with another kind of signed document.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import nacl.exceptions
import nacl.signing
from pydantic import BaseModel, ConfigDict, field_validator

from .canonical import canonicalize
from .errors import ParmanaError
from .evaluate import Decision
from .keys import SigningKey, public_key_from_pem
from .timestamps import parse_ts

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

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
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

    @field_validator("execution_fingerprint", "runtimeHash", "evaluatorArtifactHash", "signalsHash", "bundleHash")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if len(value) != 64 or value.strip("0123456789abcdef"):
            raise ValueError("must be 64 lowercase hex characters (sha256)")
        return value

    @field_validator("signerKeyId")
    @classmethod
    def _key_id(cls, value: str) -> str:
        if len(value) != 16 or value.strip("0123456789abcdef"):
            raise ValueError("must be 16 lowercase hex characters")
        return value

    @field_validator("issuedAt")
    @classmethod
    def _issued_at(cls, value: str) -> str:
        parse_ts(value)
        return value

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
    """The 64 signature bytes, or None unless it is strict, padded standard base64."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != signature:
        return None
    return raw


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
