import os
import stat

import pytest

from parmana_lab import Keyring, KeyStoreError, Runtime, SigningKey, TrustStore, verify_signature

from .conftest import claims_request, loan_request


def test_first_use_makes_a_0600_key_and_a_trust_store(runtime):
    ring = runtime.keyring
    path = ring.private_key_path(runtime.signer_key_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring.dir.stat().st_mode) == 0o700
    store = ring.trust_store()
    assert [k.keyId for k in store.keys] == [runtime.signer_key_id]
    assert store.keys[0].notAfter is None and store.keys[0].notBefore == "2026-01-15T09:30:00.000Z"


def test_private_key_never_shows_in_reprs_or_the_trust_store(runtime):
    pem = runtime.keyring.private_key_path(runtime.signer_key_id).read_text()
    secret_line = pem.splitlines()[1]
    texts = [repr(runtime), repr(runtime._key), str(runtime._key), runtime.trust_store().to_json(), repr(runtime.keyring)]
    assert all(secret_line not in t and "PRIVATE" not in t for t in texts)
    assert repr(runtime._key) == f"SigningKey(keyId={runtime.signer_key_id!r})"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(runtime._key)


def test_rotation_keeps_old_attestations_verifiable(runtime, clock):
    old = runtime.execute(claims_request())
    clock.advance(60)
    new_id = runtime.rotate_key()
    clock.advance(1)
    new = runtime.execute(loan_request())
    assert new.signerKeyId == new_id != old.signerKeyId
    store = runtime.trust_store()
    retired, active = store.get(old.signerKeyId), store.get(new_id)
    assert retired.notAfter == "2026-01-15T09:31:00.000Z" and active.notAfter is None
    assert retired.status_at(old.issuedAt) == "valid" and retired.status_at(new.issuedAt) == "expired"
    assert verify_signature(old, retired.publicKey) and verify_signature(new, active.publicKey)
    assert not verify_signature(old, active.publicKey)


def test_revocation_window(tmp_path, clock):
    ring = Keyring(tmp_path / "keys", clock=clock)
    key = ring.signing_key()
    revoked = ring.revoke(key.key_id, "2026-02-01T00:00:00.000Z")
    assert revoked.status_at("2026-01-31T23:59:59.999Z") == "valid"
    assert revoked.status_at("2026-02-01T00:00:00.000Z") == "revoked"
    with pytest.raises(KeyStoreError) as info:
        ring.revoke("0000000000000000")
    assert info.value.code == "KEY-005"
    before = ring.trust_path.read_bytes()
    with pytest.raises(KeyStoreError) as info:
        ring.revoke(key.key_id, "tomorrow")
    assert info.value.code == "KEY-007" and "'tomorrow'" in info.value.reason
    assert ring.trust_path.read_bytes() == before


def test_trust_store_json_round_trip_and_validation(runtime):
    text = runtime.trust_store().to_json()
    assert TrustStore.from_json(text) == runtime.trust_store()
    with pytest.raises(KeyStoreError) as info:
        TrustStore.from_json(text.replace(runtime.signer_key_id, "ffffffffffffffff"))
    assert info.value.code == "KEY-004" and "not the id of its publicKey" in info.value.reason
    with pytest.raises(KeyStoreError):
        TrustStore.from_json('{"keys": [{"keyId": "x"}]}')


def test_deleted_or_exposed_key_file_is_a_clear_refusal(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        path = rt.keyring.private_key_path(rt.signer_key_id)
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError) as info:
        Runtime(tmp_path / "ws", policies=policy_dir, clock=clock)
    assert info.value.code == "KEY-003" and "chmod 600" in info.value.reason
    path.unlink()
    with pytest.raises(KeyStoreError) as info:
        Runtime(tmp_path / "ws", policies=policy_dir, clock=clock)
    assert info.value.code == "KEY-001" and "keys rotate" in info.value.reason


def test_signing_key_pem_round_trip():
    key = SigningKey.generate()
    again = SigningKey.from_pem(key._pem())
    assert again.key_id == key.key_id and again.sign(b"m") == key.sign(b"m")
    with pytest.raises(KeyStoreError) as info:
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert info.value.code == "KEY-002"


def _cryptography_public(data: bytes):
    """What cryptography answers for this PEM: the raw key, or None if it refuses it or it is not Ed25519."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key.public_bytes_raw() if isinstance(key, Ed25519PublicKey) else None


def test_public_key_pem_is_what_cryptography_writes_and_reads():
    """The kit writes and reads the one-line Ed25519 SPKI PEM itself (a quick start); cryptography is the reference."""
    import random

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from parmana_lab.keys import public_key_from_pem, public_key_to_pem

    rng = random.Random(7)
    for _ in range(200):
        private = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        raw = private.public_key().public_bytes_raw()
        theirs = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        assert public_key_to_pem(raw) == theirs
        assert public_key_from_pem(theirs) == raw == public_key_from_pem(theirs.encode())
        # every single-byte change, and a few reshapings: the kit accepts exactly what cryptography accepts, as the same key
        data = theirs.encode()
        variants = [data[:i] + bytes([c]) + data[i + 1:] for i in rng.sample(range(len(data)), 12)
                    for c in (data[i] ^ 1, ord("="), ord("\n"), ord(" "))]
        variants += [data.rstrip(b"\n"), data + b"\n", data.replace(b"\n", b"\r\n"), b"  " + data, data.replace(b"PUBLIC", b"PRIVATE")]
        for v in variants:
            expected = _cryptography_public(v)
            try:
                got = public_key_from_pem(v)
            except ValueError:
                got = None
            assert got == expected, v
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not Ed25519"):
        public_key_from_pem(p256)
    with pytest.raises(ValueError, match="32 bytes"):
        public_key_to_pem(b"short")
    unknown_oid = data.replace(b"MCowBQYDK2Vw", b"MCowBQYDK2Vx")  # 1.3.101.113 (Ed448's OID) where Ed25519's was
    with pytest.raises(ValueError):
        public_key_from_pem(unknown_oid)  # a refusal, never cryptography's UnsupportedAlgorithm
