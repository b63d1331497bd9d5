"""The bulk verifier's direct libsodium call agrees with PyNaCl's own verify."""

import os

import nacl.exceptions
import nacl.signing

from parmana_lab.checks import _Verifier


def _pynacl_ok(vk: nacl.signing.VerifyKey, message: bytes, signature: bytes) -> bool:
    try:
        vk.verify(message, signature)
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def test_direct_verification_agrees_with_pynacl():
    verifier = _Verifier()
    keys = [nacl.signing.SigningKey.generate() for _ in range(3)]
    seen = {True: 0, False: 0}
    for n in range(300):
        key = keys[n % 3]
        message = os.urandom(n * 17 % 5000)  # sizes across the reused buffer's growth
        signature = key.sign(message).signature
        cases = [
            (message, signature, key.verify_key),
            (message + b"x", signature, key.verify_key),
            (message, bytes([signature[0] ^ 1]) + signature[1:], key.verify_key),
            (message, signature, keys[(n + 1) % 3].verify_key),
        ]
        for msg, sig, vk in cases:
            expected = _pynacl_ok(vk, msg, sig)
            assert verifier.verify(sig + msg, bytes(vk)) is expected
            seen[expected] += 1
    assert seen[True] == 300 and seen[False] == 900
    assert verifier.verify(b"short", bytes(keys[0].verify_key)) is False
    assert verifier.verify(bytes(64), b"not a key") is False
