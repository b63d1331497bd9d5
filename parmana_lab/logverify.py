"""Offline verification of the log's artifacts: checkpoints, inclusion proofs, consistency proofs.

Needs no workspace: the producer's trust store (its keys, under the log's
origin ``parmana-lab/<first keyId>``), optionally witness verifier keys and a
minimum number of cosignatures. Each call returns a verdict with a code and a
reason, like the archive verifier; nothing raises for bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .errors import ParmanaError
from .keys import TrustStore, origin_for
from .merkle import leaf_hash
from .notes import (
    ED25519,
    PROOF_HEADER,
    Checkpoint,
    Verifier,
    parse_checkpoint,
    parse_consistency_proof,
    parse_inclusion_proof,
    verify_checkpoint_note,
)
from .proofs import ProofError
from .proofs import verify_consistency as _verify_consistency
from .proofs import verify_inclusion as _verify_inclusion

Kind = Literal["checkpoint", "inclusion", "consistency"]


class LogVerdict(BaseModel):
    model_config = ConfigDict(defer_build=True)

    kind: Kind
    valid: bool
    code: str
    reason: str
    origin: str | None = None
    size: int | None = None
    root: str | None = None
    index: int | None = None
    executionId: str | None = None
    old_size: int | None = None
    witnesses: int = 0


def _log_keys(trust_store: TrustStore, origin: str) -> list[Verifier]:
    """The trusted keys that may sign checkpoints of ``origin``: a log is named after its first key, and every
    key of the same trust store (later rotations) signs under that name."""
    if not trust_store.keys:
        raise ProofError("CHECKPOINT_KEY_UNKNOWN", "the trust store holds no keys")
    if origin not in {origin_for(k.keyId) for k in trust_store.keys}:
        raise ProofError("ORIGIN_MISMATCH", f"checkpoint origin {origin!r} is not the log of any key in the trust store "
                                            f"(expected parmana-lab/<keyId>, e.g. {origin_for(trust_store.keys[0].keyId)})")
    return [Verifier(origin, ED25519, k.raw_public_key) for k in trust_store.keys]


def _witnesses(vkeys: Iterable[str | Verifier]) -> list[Verifier]:
    out = []
    for v in vkeys:
        try:
            out.append(v if isinstance(v, Verifier) else Verifier.parse(v))
        except ValueError as exc:
            raise ProofError("CHECKPOINT_KEY_UNKNOWN", f"witness key: {exc}") from None
    return out


def check_log_checkpoint(checkpoint: Checkpoint, trust_store: TrustStore, witnesses=(), min_witnesses: int = 0) -> int:
    """How many witnesses cosigned a checkpoint of this log; ProofError unless a trusted log key signed it."""
    origin = checkpoint.origin
    keys = _log_keys(trust_store, origin)
    last: ProofError | None = None
    for key in keys:  # one signature by any trusted key of this log (keys rotate, the origin stays)
        try:
            return len(verify_checkpoint_note(checkpoint, key, origin, _witnesses(witnesses), min_witnesses))
        except ProofError as exc:
            if exc.code != "CHECKPOINT_KEY_UNKNOWN":
                raise
            last = exc
    raise last or ProofError("CHECKPOINT_KEY_UNKNOWN", "no trusted key signed the checkpoint")


def _verdict(kind: Kind, run) -> LogVerdict:
    try:
        return run()
    except ParmanaError as exc:
        return LogVerdict(kind=kind, valid=False, code=exc.code, reason=exc.reason)


def _read(source: str | bytes | Path) -> str | bytes:
    if isinstance(source, Path):
        return source.read_bytes()
    return source


def verify_checkpoint(checkpoint: str | bytes | Path | Checkpoint, trust_store: TrustStore, *,
                      witnesses: Iterable[str | Verifier] = (), min_witnesses: int = 0) -> LogVerdict:
    """A checkpoint signed by a trusted key of the log, with at least ``min_witnesses`` valid cosignatures."""
    def run() -> LogVerdict:
        cp = checkpoint if isinstance(checkpoint, Checkpoint) else parse_checkpoint(_read(checkpoint))
        n = check_log_checkpoint(cp, trust_store, witnesses, min_witnesses)
        return LogVerdict(kind="checkpoint", valid=True, code="VALID", reason=f"checkpoint of {cp.size} leaves signed by the log"
                          + (f", cosigned by {n} witness(es)" if n else ""), origin=cp.origin, size=cp.size,
                          root=cp.root.hex(), witnesses=n)
    return _verdict("checkpoint", run)


def verify_inclusion(proof: str | bytes | Path, trust_store: TrustStore, *, attestation: bytes | None = None,
                     witnesses: Iterable[str | Verifier] = (), min_witnesses: int = 0,
                     known_runtimes: Iterable[str] | None = None) -> LogVerdict:
    """A c2sp.org/tlog-proof@v1: its checkpoint, that the carried attestation line is the proven leaf, and the
    attestation itself (signature, key) against the same trust store. ``attestation``: a line it must match."""
    from .verify import verify_attestation

    def run() -> LogVerdict:
        p = parse_inclusion_proof(_read(proof))
        n = check_log_checkpoint(p.checkpoint, trust_store, witnesses, min_witnesses)
        if p.extra is None:
            raise ProofError("PROOF_MALFORMED", "the proof carries no attestation line (its `extra` line)")
        if attestation is not None and attestation.rstrip(b"\n") != p.extra:
            raise ProofError("LEAF_MISMATCH", "the attestation given is not the one this proof carries")
        _verify_inclusion(p.index, p.checkpoint.size, leaf_hash(p.extra), list(p.hashes), p.checkpoint.root)
        result = verify_attestation(p.extra, trust_store, known_runtimes=known_runtimes)
        if result.status == "failed":
            raise ProofError("LEAF_MISMATCH" if result.code == "MALFORMED" else result.code,
                             f"the logged attestation does not verify: {result.hint}")
        return LogVerdict(kind="inclusion", valid=True, code="VALID",
                          reason=f"attestation {result.executionId} is leaf {p.index} of the log at size {p.checkpoint.size}",
                          origin=p.checkpoint.origin, size=p.checkpoint.size, root=p.checkpoint.root.hex(), index=p.index,
                          executionId=result.executionId, witnesses=n)
    return _verdict("inclusion", run)


def verify_consistency(proof: str | bytes | Path, old: str | bytes | Path | Checkpoint, trust_store: TrustStore, *,
                       witnesses: Iterable[str | Verifier] = (), min_witnesses: int = 0) -> LogVerdict:
    """An add-checkpoint body: the older checkpoint ``old`` is a prefix of the newer one it carries."""
    def run() -> LogVerdict:
        body = parse_consistency_proof(_read(proof))
        old_cp = old if isinstance(old, Checkpoint) else parse_checkpoint(_read(old))
        check_log_checkpoint(old_cp, trust_store, (), 0)
        n = check_log_checkpoint(body.checkpoint, trust_store, witnesses, min_witnesses)
        if body.old_size != old_cp.size:
            raise ProofError("CONSISTENCY_PROOF_INVALID", f"the proof starts at size {body.old_size}, the old checkpoint is "
                                                          f"of size {old_cp.size}")
        _verify_consistency(old_cp.size, body.checkpoint.size, list(body.hashes), old_cp.root, body.checkpoint.root)
        return LogVerdict(kind="consistency", valid=True, code="VALID",
                          reason=f"the log at {old_cp.size} is a prefix of the log at {body.checkpoint.size}",
                          origin=old_cp.origin, size=body.checkpoint.size, root=body.checkpoint.root.hex(),
                          old_size=old_cp.size, witnesses=n)
    return _verdict("consistency", run)


def verify_log_file(data: str | bytes | Path, trust_store: TrustStore, *, old: str | bytes | Path | None = None,
                    **options) -> LogVerdict:
    """Whichever the file is: an inclusion proof, a consistency proof (needs ``old``), or a checkpoint."""
    raw = _read(data)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if text.startswith(PROOF_HEADER + "\n"):
        return verify_inclusion(raw, trust_store, **options)
    if text.startswith("old "):
        if old is None:
            return LogVerdict(kind="consistency", valid=False, code="PROOF_MALFORMED",
                              reason="a consistency proof is checked against the older checkpoint: pass --old CHECKPOINT")
        options.pop("attestation", None)
        return verify_consistency(raw, old, trust_store, **options)
    options.pop("attestation", None)
    options.pop("known_runtimes", None)
    return verify_checkpoint(raw, trust_store, **options)
