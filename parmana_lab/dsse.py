"""DSSE JSON envelopes (github.com/secure-systems-lab/dsse), one Ed25519 signature each.

``{"payloadType", "payload": base64(JCS(body)), "signatures": [{"keyid", "sig"}]}``,
sig = base64 Ed25519 over PAE(payloadType, payload bytes): what any stock DSSE
library verifies. The kit's envelopes carry JCS payloads, so a record's bytes
(and its hash, sha256 of JCS(envelope)) are the same wherever it is made.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import nacl.bindings
import nacl.exceptions

from .attestation import pae
from .canonical import canonicalize, parse_canonical, parse_json, sha256_hex
from .errors import CanonicalizationError
from .keys import SigningKey

ENVELOPE_MEMBERS = {"payloadType", "payload", "signatures"}


class EnvelopeError(ValueError):
    """An envelope that is not one well-formed, singly signed DSSE envelope with a JCS payload (the reason says why)."""


def seal_envelope(payload_type: str, body: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    return parse_json(seal_payload(payload_type, canonicalize(body), key))


def seal_payload(payload_type: str, payload: bytes, key: SigningKey) -> bytes:
    """JCS of the signed envelope of a payload already in JCS form, written directly: every member is ASCII
    without escapes (base64, the kit's payload types, hex keyids), so this is its canonical form (a test holds it
    to canonicalize(parse(...)), with non-ASCII payloads)."""
    sig = base64.b64encode(key.sign(pae(payload_type, payload)))
    return b'{"payload":"%s","payloadType":"%s","signatures":[{"keyid":"%s","sig":"%s"}]}' % (
        base64.b64encode(payload), payload_type.encode("ascii"), key.key_id.encode("ascii"), sig)


def envelope_hash(envelope: dict[str, Any]) -> str:
    """How other records name an envelope: sha256 hex of JCS(envelope)."""
    return sha256_hex(canonicalize(envelope))


def read_envelope(data: Any) -> tuple[dict[str, Any], str]:
    """(envelope, envelope_hash) from JSON text/bytes or a dict; text already in JCS form is hashed as it is."""
    canonical = parse_canonical(data) if isinstance(data, (str, bytes, bytearray)) else None
    if canonical is not None:
        return parse_envelope(canonical[0]), sha256_hex(canonical[1])
    envelope = parse_envelope(data)
    return envelope, envelope_hash(envelope)


def parse_envelope(data: Any) -> dict[str, Any]:
    """An envelope from JSON text/bytes or a dict, its shape checked (the signature is not: see open_envelope)."""
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = parse_json(data)
        except CanonicalizationError as exc:
            raise EnvelopeError(f"not JSON: {exc.reason}") from None
    if not isinstance(data, dict) or set(data) != ENVELOPE_MEMBERS:
        raise EnvelopeError(f"a DSSE envelope is exactly {{{', '.join(sorted(ENVELOPE_MEMBERS))}}}")
    sigs = data["signatures"]
    if not isinstance(data["payloadType"], str) or not isinstance(data["payload"], str):
        raise EnvelopeError("payloadType and payload are strings")
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict) or set(sigs[0]) != {"keyid", "sig"} \
            or not all(isinstance(v, str) for v in sigs[0].values()):
        raise EnvelopeError("the kit's envelopes carry exactly one signature {keyid, sig}")
    return data


def open_envelope(envelope: dict[str, Any], payload_type: str) -> tuple[dict[str, Any], bytes]:
    """(body, payload bytes) of a parsed envelope of ``payload_type`` whose payload is JCS of a JSON object."""
    if envelope["payloadType"] != payload_type:
        raise EnvelopeError(f"payloadType is {envelope['payloadType']!r}, not {payload_type!r}")
    try:
        payload = binascii.a2b_base64(envelope["payload"], strict_mode=True)  # b64decode(validate=True), without its regex
    except (binascii.Error, ValueError):
        raise EnvelopeError("the payload is not base64 of JSON") from None
    canonical = parse_canonical(payload)
    if canonical is not None and isinstance(canonical[0], dict):
        return canonical[0], payload
    try:
        body = parse_json(payload)
    except CanonicalizationError:
        raise EnvelopeError("the payload is not base64 of JSON") from None
    if not isinstance(body, dict) or canonicalize(body) != payload:
        raise EnvelopeError("the payload is not the canonical (RFC 8785) form of a JSON object")
    return body, payload


def signature_valid(envelope: dict[str, Any], payload: bytes, raw_public_key: bytes) -> bool:
    try:
        sig = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
        if len(sig) != 64:
            return False
        nacl.bindings.crypto_sign_open(sig + pae(envelope["payloadType"], payload), raw_public_key)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
        return False
    return True


def signer(envelope: dict[str, Any]) -> str:
    return envelope["signatures"][0]["keyid"]
