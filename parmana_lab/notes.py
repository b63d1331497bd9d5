"""C2SP text formats, used as specified: signed notes, checkpoints, cosignatures, proofs.

- c2sp.org/signed-note@v1.0.0: text ending in a newline, a blank line, then
  lines ``— <name> base64(keyID || signature)``; Ed25519 is type 0x01.
- c2sp.org/tlog-checkpoint@v1.0.0: note text ``origin\\nsize\\nbase64(root)\\n``.
- c2sp.org/tlog-cosignature@v1.0.0: type 0x04, signature over
  ``cosignature/v1\\ntime <t>\\n`` + checkpoint text, carrying the 8-byte time.
- c2sp.org/tlog-proof@v1: ``c2sp.org/tlog-proof@v1``, optional ``extra``,
  ``index N``, proof hashes, blank line, the checkpoint verbatim.
- the body of c2sp.org/tlog-witness ``add-checkpoint`` (``old N``, proof
  hashes, blank line, the checkpoint) carries consistency proofs.

Parsing is strict (fails closed with PROOF_MALFORMED / CHECKPOINT_MALFORMED);
verification ignores signatures from unknown keys, as the spec requires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions

from .proofs import HASH_SIZE, ProofError

ED25519, COSIGNATURE = 0x01, 0x04
MAX_SIGNATURES = 100
PROOF_HEADER = "c2sp.org/tlog-proof@v1"
COSIGNATURE_HEADER = "cosignature/v1"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}", re.ASCII)


def b64decode(text: str) -> bytes:
    """Strict standard base64 (padding required, canonical): ValueError otherwise."""
    if not _B64.fullmatch(text) or len(text) % 4:
        raise ValueError(f"{text[:20]!r} is not base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{text[:20]!r} is not canonical base64")
    return raw


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def key_id(name: str, kind: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4], the note key ID."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + public_key).digest()[:4]


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


@dataclass(frozen=True)
class Verifier:
    """A note verifier key: name, type (0x01 Ed25519, 0x04 cosignature) and the 32-byte public key."""

    name: str
    kind: int
    public_key: bytes = field(repr=False)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.kind, self.public_key)

    def vkey(self) -> str:
        """The C2SP verifier key string ``name+hex(keyID)+base64(type || public key)``."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.kind]) + self.public_key)}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)  # base64 may hold "+", a name never does
        if len(parts) != 3 or not _valid_name(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise ValueError(f"{vkey!r} is not a verifier key (name+keyhash+base64 key)")
        try:
            raw = b64decode(parts[2])
        except ValueError:
            raise ValueError(f"{vkey!r}: the key is not base64") from None
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE):
            raise ValueError(f"{vkey!r} is not an Ed25519 (0x01) or cosignature (0x04) key")
        verifier = cls(parts[0], raw[0], raw[1:])
        if verifier.key_id.hex() != parts[1]:
            raise ValueError(f"{vkey!r}: the key hash does not match the key")
        return verifier


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    data: bytes  # what follows the key ID: an Ed25519 signature, or time (8 bytes) + signature for a cosignature

    def line(self) -> str:
        return f"\u2014 {self.name} {b64(self.key_id + self.data)}\n"


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, signature: Signature) -> Note:
        return Note(self.text, (*self.signatures, signature))


def parse_note(data: str | bytes, code: str = "CHECKPOINT_MALFORMED") -> Note:
    """A signed note, strictly: UTF-8, no control characters but newline, a text, a blank line, signature lines."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProofError(code, "the note is not UTF-8") from None
    if any(ord(ch) < 0x20 and ch != "\n" for ch in data):
        raise ProofError(code, "the note holds a control character")
    if not data.endswith("\n"):
        raise ProofError(code, "the note does not end with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise ProofError(code, "the note has no blank line before its signatures")
    text, block = data[:split + 1], data[split + 2:]
    if not block:
        raise ProofError(code, "the note has no signature")
    signatures = []
    for line in block[:-1].split("\n"):
        match = re.fullmatch(r"\u2014 (\S+) (\S+)", line)
        if not match or not _valid_name(match.group(1)):
            raise ProofError(code, f"not a signature line: {line[:60]!r}")
        try:
            raw = b64decode(match.group(2))
        except ValueError:
            raise ProofError(code, f"signature of {match.group(1)} is not base64") from None
        if len(raw) < 5:
            raise ProofError(code, f"signature of {match.group(1)} is too short")
        signatures.append(Signature(match.group(1), raw[:4], raw[4:]))
    if len(signatures) > MAX_SIGNATURES:
        raise ProofError(code, f"more than {MAX_SIGNATURES} signatures")
    return Note(text, tuple(signatures))


def sign_note(text: str, name: str, key) -> Note:
    """``text`` signed as an Ed25519 (type 0x01) note by ``key`` (a SigningKey) under ``name``."""
    return Note(text, (Signature(name, key_id(name, ED25519, key.public_key), key.sign(text.encode("utf-8"))),))


def cosignature(checkpoint_text: str, name: str, key, timestamp: int) -> Signature:
    """A c2sp.org/tlog-cosignature@v1.0.0 line's content by a witness ``key`` at ``timestamp`` (seconds)."""
    sig = key.sign(cosigned_message(checkpoint_text, timestamp))
    return Signature(name, key_id(name, COSIGNATURE, key.public_key), struct.pack(">Q", timestamp) + sig)


def _ed25519_ok(signature: bytes, message: bytes, public_key: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{checkpoint_text}".encode()


def verified_by(note: Note, verifiers: list[Verifier], code: str = "CHECKPOINT_SIGNATURE_INVALID") -> list[Verifier]:
    """The verifiers whose signatures on ``note`` verify; a known key whose signature fails rejects the note."""
    known = {(v.name, v.key_id): v for v in verifiers}
    good = []
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # unknown keys are ignored, even if name or ID alone match
        if verifier.kind == ED25519:
            ok = _ed25519_ok(sig.data, note.text.encode("utf-8"), verifier.public_key)
        else:
            ok = len(sig.data) == 72 and _ed25519_ok(
                sig.data[8:], cosigned_message(note.text, struct.unpack(">Q", sig.data[:8])[0]), verifier.public_key)
        if not ok:
            raise ProofError(code, f"the signature of {sig.name} ({sig.key_id.hex()}) does not verify")
        good.append(verifier)
    return good


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: Note

    @property
    def text(self) -> str:
        return self.note.text

    def render(self) -> str:
        return self.note.render()


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{b64(root)}\n"


def parse_checkpoint(data: str | bytes) -> Checkpoint:
    note = parse_note(data, "CHECKPOINT_MALFORMED")
    lines = note.text.split("\n")[:-1]
    if len(lines) < 3 or not lines[0] or any(not line for line in lines[3:]):
        raise ProofError("CHECKPOINT_MALFORMED", "a checkpoint's text is origin, size and root hash lines")
    if not _DECIMAL.fullmatch(lines[1]) or int(lines[1]) >= 1 << 64:
        raise ProofError("CHECKPOINT_MALFORMED", f"tree size {lines[1][:24]!r} is not a decimal without leading zeros")
    try:
        root = b64decode(lines[2])
    except ValueError:
        raise ProofError("CHECKPOINT_MALFORMED", "the root hash is not base64") from None
    if len(root) != HASH_SIZE:
        raise ProofError("CHECKPOINT_MALFORMED", f"the root hash is {len(root)} bytes, not {HASH_SIZE}")
    return Checkpoint(lines[0], int(lines[1]), root, note)


def verify_checkpoint_note(checkpoint: Checkpoint, log: Verifier, origin: str | None = None,
                           witnesses: list[Verifier] = (), min_witnesses: int = 0) -> list[Verifier]:
    """Check a checkpoint's origin, the log's signature and at least ``min_witnesses`` witness cosignatures."""
    if checkpoint.origin != (origin or log.name):
        raise ProofError("ORIGIN_MISMATCH", f"checkpoint origin {checkpoint.origin!r} is not {origin or log.name!r}")
    signed = verified_by(checkpoint.note, [log], "CHECKPOINT_SIGNATURE_INVALID")
    if not signed:
        raise ProofError("CHECKPOINT_KEY_UNKNOWN", f"no signature by {log.name} ({log.key_id.hex()}) on the checkpoint")
    cosigned = verified_by(checkpoint.note, list(witnesses), "CHECKPOINT_SIGNATURE_INVALID")
    if len(cosigned) < min_witnesses:
        raise ProofError("CHECKPOINT_SIGNATURE_INVALID",
                         f"{len(cosigned)} valid witness cosignature(s), {min_witnesses} required")
    return cosigned


# -- proofs as text -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProofText:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: Checkpoint
    extra: bytes | None = None

    def render(self) -> str:
        extra = f"extra {b64(self.extra)}\n" if self.extra is not None else ""
        body = "".join(b64(h) + "\n" for h in self.hashes)
        return f"{PROOF_HEADER}\n{extra}index {self.index}\n{body}\n{self.checkpoint.render()}"


def _proof_hashes(lines: list[str], code: str) -> tuple[bytes, ...]:
    hashes = []
    for line in lines:
        try:
            raw = b64decode(line)
        except ValueError:
            raise ProofError(code, f"proof line {line[:24]!r} is not base64") from None
        if len(raw) != HASH_SIZE:
            raise ProofError(code, f"a proof hash is {len(raw)} bytes, not {HASH_SIZE}")
        hashes.append(raw)
    return tuple(hashes)


def _proof_and_checkpoint(data: str | bytes) -> tuple[list[str], Checkpoint]:
    """The lines before the first blank line, and the checkpoint after it (both proof formats end so)."""
    head, sep, note = _text(data, "PROOF_MALFORMED").partition("\n\n")
    if not sep:
        raise ProofError("PROOF_MALFORMED", "no blank line between the proof and its checkpoint")
    return head.split("\n"), parse_checkpoint(note)


def parse_inclusion_proof(data: str | bytes) -> InclusionProofText:
    lines, checkpoint = _proof_and_checkpoint(data)
    if lines[0] != PROOF_HEADER:
        raise ProofError("PROOF_MALFORMED", f"the first line is not {PROOF_HEADER}")
    extra = None
    rest = lines[1:]
    if rest and rest[0].startswith("extra "):
        try:
            extra = b64decode(rest[0][6:])
        except ValueError:
            raise ProofError("PROOF_MALFORMED", "the extra line is not base64") from None
        rest = rest[1:]
    if not rest or not rest[0].startswith("index ") or not _DECIMAL.fullmatch(rest[0][6:]):
        raise ProofError("PROOF_MALFORMED", "no `index N` line (a decimal without leading zeros)")
    return InclusionProofText(int(rest[0][6:]), _proof_hashes(rest[1:], "PROOF_MALFORMED"), checkpoint, extra)


@dataclass(frozen=True)
class ConsistencyProofText:
    old_size: int
    hashes: tuple[bytes, ...]
    checkpoint: Checkpoint

    def render(self) -> str:
        body = "".join(b64(h) + "\n" for h in self.hashes)
        return f"old {self.old_size}\n{body}\n{self.checkpoint.render()}"


def parse_consistency_proof(data: str | bytes) -> ConsistencyProofText:
    lines, checkpoint = _proof_and_checkpoint(data)
    if not lines[0].startswith("old ") or not _DECIMAL.fullmatch(lines[0][4:]):
        raise ProofError("PROOF_MALFORMED", "the first line is not `old N`")
    return ConsistencyProofText(int(lines[0][4:]), _proof_hashes(lines[1:], "PROOF_MALFORMED"), checkpoint)


def _text(data: str | bytes, code: str) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProofError(code, "not UTF-8 text") from None
    return data
