import base64
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from parmana_lab import ATTESTATION_TYPE, ExecutionAttestation, canonicalize, to_dsse, verify_signature
from parmana_lab.attestation import FIELDS

from .conftest import claims_request


@pytest.fixture
def signed(runtime):
    return runtime.execute(claims_request())


def _tweak(value):
    if isinstance(value, bool):
        return not value
    return value[:-1] + ("0" if value[-1] != "0" else "1")


def test_fields_are_exactly_the_v1_set(signed):
    assert tuple(signed.model_dump()) == FIELDS
    assert set(signed.decision.model_dump()) == {"action", "requires_override", "reason", "ruleId"}


def test_signature_verifies_with_pem_raw_and_verify_key(runtime, signed):
    pem = runtime.trust_store().get(signed.signerKeyId).publicKey
    assert verify_signature(signed, pem)
    assert verify_signature(signed.model_dump(), pem.encode())
    assert verify_signature(signed, runtime._key.verify_key)


@pytest.mark.parametrize("field", [f for f in FIELDS if f not in ("decision", "signature")])
def test_changing_any_top_level_field_breaks_the_signature(runtime, signed, field):
    data = signed.model_dump()
    data[field] = _tweak(data[field])
    assert not verify_signature(data, runtime._key.verify_key)


@pytest.mark.parametrize("field", ["action", "requires_override", "reason", "ruleId"])
def test_changing_any_decision_field_breaks_the_signature(runtime, signed, field):
    data = signed.model_dump()
    data["decision"][field] = _tweak(data["decision"][field])
    assert not verify_signature(data, runtime._key.verify_key)


def test_extra_field_or_bad_signature_encoding_fails(runtime, signed):
    vk = runtime._key.verify_key
    assert not verify_signature({**signed.model_dump(), "note": "x"}, vk)
    sig = signed.signature
    assert not verify_signature({**signed.model_dump(), "signature": sig.rstrip("=")}, vk)  # unpadded
    assert not verify_signature({**signed.model_dump(), "signature": "!" + sig[1:]}, vk)
    flipped = bytearray(base64.b64decode(sig))
    flipped[0] ^= 1
    assert not verify_signature({**signed.model_dump(), "signature": base64.b64encode(flipped).decode()}, vk)
    assert not verify_signature(signed, bytes(32))  # another key


def test_dsse_envelope_checks_with_an_independent_pae(runtime, signed):
    env = to_dsse(signed)
    assert env["payloadType"] == ATTESTATION_TYPE == "PARMANA_ATTESTATION_V1"
    payload = base64.b64decode(env["payload"])
    assert payload == canonicalize(signed.body())
    t = env["payloadType"].encode()
    pae = b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload
    key = Ed25519PublicKey.from_public_bytes(runtime._key.public_key)
    key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae)  # raises if wrong
    assert env["signatures"][0]["keyid"] == signed.signerKeyId


def test_openssl_verifies_the_signature_from_the_workspace_pem_files(runtime, signed, tmp_path):
    pub = tmp_path / "pub.pem"
    pub.write_text(runtime.trust_store().get(signed.signerKeyId).publicKey)
    msg = tmp_path / "msg.bin"
    msg.write_bytes(signed.signing_message())
    sig = tmp_path / "sig.bin"
    sig.write_bytes(base64.b64decode(signed.signature))
    ok = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", str(msg), "-sigfile", str(sig)],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout
    private = runtime.keyring.private_key_path(signed.signerKeyId)
    assert subprocess.run(["openssl", "pkey", "-in", str(private), "-noout"], capture_output=True).returncode == 0
    assert load_pem_private_key(private.read_bytes(), None).public_key().public_bytes_raw() == runtime._key.public_key


def test_model_is_strict_about_types(signed):
    data = signed.model_dump()
    data["decision"]["requires_override"] = "false"
    with pytest.raises(ValueError):
        ExecutionAttestation.model_validate(data)
    data = signed.model_dump()
    data["issuedAt"] = "2026-01-15 09:30:00"
    with pytest.raises(ValueError):
        ExecutionAttestation.model_validate(data)
    data["issuedAt"] = signed.issuedAt.replace("2", "\u0662", 1)  # a digit, but not an ASCII one
    with pytest.raises(ValueError, match="issuedAt"):
        ExecutionAttestation.model_validate(data)
    assert ExecutionAttestation.model_validate(signed.model_dump()) == signed


def test_html_repr_shows_the_decision(signed):
    html = signed._repr_html_()
    assert "approve" in html and signed.executionId in html and signed.signature not in html
