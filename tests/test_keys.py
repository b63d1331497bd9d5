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
