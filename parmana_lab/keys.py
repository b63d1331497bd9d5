"""Ed25519 keys: private keys on disk (PEM, 0600), and the trust store.

The trust store is what a verifier believes: every public key the workspace
ever signed with, with the window it was valid in. Rotation closes the old
key's window instead of deleting it, so old attestations stay verifiable.
Private keys never leave their file: no repr, no export, no pickling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import nacl.bindings
import nacl.signing
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import KeyStoreError
from .timestamps import Clock, format_ts, parse_ts, system_clock

TRUST_FILE = "trust.json"
KeyStatus = Literal["valid", "revoked", "not_yet_valid", "expired"]


def key_id_for(raw_public_key: bytes) -> str:
    """First 16 hex characters of sha256(raw 32-byte public key)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def read_key_file(path: str | Path, code: str, what: str) -> bytes:
    """The bytes of a trust store or authority file, or the kit's refusal saying which file could not be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyStoreError(code, "keys", f"cannot read {what} {path}: {exc.strerror}") from None


def invalid_file(exc: ValidationError, source: str, code: str, what: str) -> KeyStoreError:
    """The refusal for a key file (trust store, authority file) that does not validate: where, and why."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    return KeyStoreError(code, "keys", f"{source} is not a valid {what} ({where}: {first['msg']})")


def origin_for(first_key_id: str) -> str:
    """The name of a runtime's transparency log (and its note key): stable across rotations, it names the first key."""
    return f"parmana-lab/{first_key_id}"


# An Ed25519 SubjectPublicKeyInfo is this 12-byte DER prefix and the 32-byte key (RFC 8410 section 4), and its PEM
# is one base64 line: written and read here directly, since importing cryptography costs a verify's start-up ~25 ms.
# Anything else goes to cryptography, which knows every other form; tests/test_keys.py holds both to the same answers.
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")
_PEM_LINE = re.compile(rb"-----BEGIN PUBLIC KEY-----\n([A-Za-z0-9+/]{59}=)\n-----END PUBLIC KEY-----\n?")


def public_key_to_pem(raw: bytes) -> str:
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(_SPKI_ED25519 + raw).decode('ascii')}\n-----END PUBLIC KEY-----\n"


def public_key_from_pem(pem: str | bytes) -> bytes:
    """Raw 32 bytes of an SPKI PEM Ed25519 public key; ValueError otherwise."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    line = _PEM_LINE.fullmatch(data)
    if line:
        try:
            der = base64.b64decode(line[1], validate=True)
        except binascii.Error:
            der = b""
        if len(der) == 44 and der.startswith(_SPKI_ED25519) and base64.b64encode(der) == line[1]:
            return der[12:]
    return _public_key_from_any_pem(data)


def _public_key_from_any_pem(data: bytes) -> bytes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # an unknown algorithm OID is not a key we can use
        raise ValueError(f"not an SPKI PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not Ed25519")
    return key.public_bytes_raw()


class SigningKey:
    """An Ed25519 signing key. Its repr shows the keyId and nothing secret."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.key_id = key_id_for(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyStoreError("KEY-002", "keys", f"private key is not an unencrypted PKCS#8 PEM: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError("KEY-002", "keys", "private key is not Ed25519")
        return cls(key.private_bytes_raw())

    def _pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(bytes(self._key)).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        # the binding SigningKey.sign wraps, minus its SignedMessage object
        return nacl.bindings.crypto_sign(message, self._key._signing_key)[:64]

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self._key.verify_key

    def public_key_pem(self) -> str:
        return public_key_to_pem(self.public_key)

    def __repr__(self) -> str:
        return f"SigningKey(keyId={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("signing keys are not serialisable; load them from their file")


class TrustedKey(BaseModel):
    """A public key and the window in which it may have signed."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    keyId: str
    publicKey: str
    notBefore: str
    notAfter: str | None = None
    revokedAt: str | None = None

    @field_validator("notBefore", "notAfter", "revokedAt")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ts(value)
        return value

    @model_validator(mode="after")
    def _key_matches_id(self) -> TrustedKey:
        if key_id_for(public_key_from_pem(self.publicKey)) != self.keyId:
            raise ValueError(f"keyId {self.keyId} is not the id of its publicKey")
        return self

    @property
    def raw_public_key(self) -> bytes:
        return public_key_from_pem(self.publicKey)

    def status_at(self, issued_at: str) -> KeyStatus:
        """Was this key allowed to sign at ``issued_at``? (timestamps compare as text)."""
        if self.revokedAt is not None and issued_at >= self.revokedAt:
            return "revoked"
        if issued_at < self.notBefore:
            return "not_yet_valid"
        if self.notAfter is not None and issued_at >= self.notAfter:
            return "expired"
        return "valid"


class TrustStore(BaseModel):
    """The keys a verifier trusts; the JSON form is what ``parmana-lab keys --json`` prints."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    keys: list[TrustedKey] = []
    _verify_keys: dict[str, nacl.signing.VerifyKey] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_ids(self) -> TrustStore:
        ids = [k.keyId for k in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("a keyId appears twice")
        return self

    def get(self, key_id: str) -> TrustedKey | None:
        return next((k for k in self.keys if k.keyId == key_id), None)

    def verify_key(self, key_id: str) -> nacl.signing.VerifyKey | None:
        vk = self._verify_keys.get(key_id)
        if vk is None:
            trusted = self.get(key_id)
            if trusted is None:
                return None
            vk = self._verify_keys[key_id] = nacl.signing.VerifyKey(trusted.raw_public_key)
        return vk

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "trust store") -> TrustStore:
        try:
            store = cls.model_validate_json(text)
        except ValidationError as exc:
            raise invalid_file(exc, source, "KEY-004", "trust store") from None
        if "keys" not in store.model_fields_set:  # `{}` is not a trust store that happens to trust nobody
            raise KeyStoreError("KEY-004", "keys", f"{source} is not a valid trust store (no keys member)")
        return store

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        return cls.from_json(read_key_file(path, "KEY-004", "trust store"), source=str(path))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def merged(self, others: Iterable[TrustedKey]) -> TrustStore:
        known = {k.keyId for k in self.keys}
        return TrustStore(keys=[*self.keys, *(k for k in others if k.keyId not in known)])


def _write_private(path: Path, key: SigningKey) -> None:
    """A new 0600 PKCS#8 file, never over an existing one, never left half-written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(fd, key._pem())
        finally:
            os.close(fd)
    except OSError:
        path.unlink(missing_ok=True)
        raise


def new_key_file(path: str | Path, key: SigningKey | None = None) -> SigningKey:
    """A personal Ed25519 key (a witness's, an author's, an approver's) in a file of its own, mode 0600.

    ``key`` stores a key made elsewhere (the classroom's derived keys); by default a fresh random one.
    """
    path = Path(path)
    if path.exists():
        raise KeyStoreError("KEY-006", "keys", f"{path} already exists; keys are never overwritten")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = key or SigningKey.generate()
        _write_private(path, key)
    except OSError as exc:
        raise KeyStoreError("KEY-006", "keys", f"cannot write {path}: {exc.strerror}") from None
    return key


def load_key_file(path: str | Path) -> SigningKey:
    """A personal private key file; refused if others can read it (KEY-003) or it is not Ed25519 (KEY-002)."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError("KEY-002", "keys", f"cannot read key file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyStoreError("KEY-003", "keys", f"private key file {path} is readable by others "
                                               f"(mode {st.st_mode & 0o777:o}); run chmod 600 on it")
    return SigningKey.from_pem(data)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk, a size limit): loop, then make it durable."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a sibling temporary file, then rename it over ``path``: readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _unwritable(directory: Path, exc: OSError) -> KeyStoreError:
    return KeyStoreError("KEY-006", "keys", f"cannot write key files in {directory}: {exc.strerror or exc} "
                         "(is the workspace read-only or the disk full?); nothing was changed")


class Keyring:
    """A workspace's keys directory: private key files and its trust store."""

    def __init__(self, directory: str | Path, *, clock: Clock = system_clock) -> None:
        self.dir = Path(directory)
        self.trust_path = self.dir / TRUST_FILE
        self._clock = clock

    def __repr__(self) -> str:
        return f"Keyring({str(self.dir)!r})"

    def private_key_path(self, key_id: str) -> Path:
        return self.dir / f"{key_id}.key.pem"

    def trust_store(self) -> TrustStore:
        return TrustStore.load(self.trust_path) if self.trust_path.exists() else TrustStore()

    def active_key_id(self) -> str | None:
        live = [k for k in self.trust_store().keys if k.notAfter is None and k.revokedAt is None]
        return live[-1].keyId if live else None

    def signing_key(self, *, create: bool = True) -> SigningKey:
        """The active signing key; a first key is made on first use when ``create``."""
        key_id = self.active_key_id()
        if key_id is None:
            if not create:
                raise KeyStoreError("KEY-001", "keys", f"no active signing key in {self.dir}; run `parmana-lab keys rotate`")
            return self.rotate()
        return self._load_private(key_id)

    def _load_private(self, key_id: str) -> SigningKey:
        path = self.private_key_path(key_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyStoreError(
                "KEY-001", "keys", f"the active signing key file {path} is missing; run `parmana-lab keys rotate` to make a new key"
            ) from None
        if st.st_mode & 0o077:
            raise KeyStoreError(
                "KEY-003", "keys", f"private key file {path} is readable by others (mode {st.st_mode & 0o777:o}); run chmod 600 on it"
            )
        try:
            key = SigningKey.from_pem(path.read_bytes())
        except OSError as exc:
            raise KeyStoreError("KEY-002", "keys", f"cannot read private key file {path}: {exc.strerror}") from None
        if key.key_id != key_id:
            raise KeyStoreError("KEY-002", "keys", f"private key file {path} does not hold key {key_id}")
        return key

    def rotate(self, key: SigningKey | None = None) -> SigningKey:
        """Make a new signing key (or install ``key``); the previous one stays trusted for what it signed."""
        now = format_ts(self._clock())
        key = key or SigningKey.generate()
        if self.trust_store().get(key.key_id) is not None:
            raise KeyStoreError("KEY-006", "keys", f"key {key.key_id} is already in {self.trust_path}; keys are never reused")
        path = self.private_key_path(key.key_id)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, self.dir.stat().st_mode & 0o700)  # private to the owner; never loosened
            _write_private(path, key)
        except OSError as exc:
            raise _unwritable(self.dir, exc) from None
        store = self.trust_store()
        keys = [k.model_copy(update={"notAfter": now}) if k.notAfter is None else k for k in store.keys]
        keys.append(TrustedKey(keyId=key.key_id, publicKey=key.public_key_pem(), notBefore=now))
        try:
            self._save(TrustStore(keys=keys))
        except KeyStoreError:
            path.unlink(missing_ok=True)  # the old trust store stands; the new key never existed
            raise
        return key

    def revoke(self, key_id: str, at: str | None = None) -> TrustedKey:
        """Mark a key compromised from ``at`` on: what it signed from then is refused."""
        store = self.trust_store()
        if store.get(key_id) is None:
            raise KeyStoreError("KEY-005", "keys", f"no key {key_id!r} in {self.trust_path}")
        at = at or format_ts(self._clock())
        try:
            parse_ts(at)
        except ValueError as exc:
            raise KeyStoreError("KEY-007", "keys", f"revocation time {exc}; nothing was changed") from None
        keys = [k.model_copy(update={"revokedAt": at}) if k.keyId == key_id else k for k in store.keys]
        self._save(TrustStore(keys=keys))
        return next(k for k in keys if k.keyId == key_id)

    def _save(self, store: TrustStore) -> None:
        try:
            _write_atomic(self.trust_path, store.to_json().encode(), 0o644)
        except OSError as exc:
            raise _unwritable(self.dir, exc) from None

