"""A local witness: cosigns a log's checkpoints, but only ones consistent with the last it cosigned.

State, one file per origin in the state folder, is the last checkpoint it
cosigned (verbatim). Given a new checkpoint of that log (checked against the
log's keys) and, when the log grew, the consistency proof from the remembered
size (the c2sp.org/tlog-witness add-checkpoint body), it appends a
c2sp.org/tlog-cosignature@v1.0.0 line. It refuses a smaller size
(WITNESS_STALE) and any fork: another root at the same size, or a proof that
does not verify (WITNESS_INCONSISTENT). A witness that has seen nothing of a
log accepts its first checkpoint without a proof (tlog-witness: an old size of
0 is consistent with anything, given an empty proof).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ParmanaError
from .keys import SigningKey, TrustStore
from .logverify import check_log_checkpoint
from .notes import COSIGNATURE, Checkpoint, Verifier, cosignature, parse_checkpoint, parse_consistency_proof
from .proofs import ProofError, verify_consistency
from .timestamps import Clock, system_clock


class WitnessError(ParmanaError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, "witness", reason)


def witness_vkey(key: SigningKey, name: str) -> str:
    """The witness's C2SP verifier key ``name+keyhash+base64(0x04 || public key)``."""
    return Verifier(name, COSIGNATURE, key.public_key).vkey()


def _state_file(state: Path, origin: str) -> Path:
    return state / (hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32] + ".checkpoint")


def cosign(checkpoint: str | bytes, key: SigningKey, name: str, state: str | Path, trust_store: TrustStore, *,
           proof: str | bytes | None = None, clock: Clock = system_clock) -> Checkpoint:
    """The checkpoint with this witness's cosignature appended, if it is consistent with what it cosigned before."""
    try:
        cp = parse_checkpoint(checkpoint)
        check_log_checkpoint(cp, trust_store, (), 0)
    except ProofError as exc:
        raise WitnessError(exc.code, f"not cosigned: {exc.reason}") from None
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _state_file(state, cp.origin)
    if path.exists():
        last = parse_checkpoint(path.read_bytes())
        if cp.size < last.size:
            raise WitnessError("WITNESS_STALE", f"this witness already cosigned {cp.origin} at size {last.size}; "
                                                f"{cp.size} is older")
        if cp.size == last.size and cp.root != last.root:
            raise WitnessError("WITNESS_INCONSISTENT", f"two checkpoints of {cp.origin} at size {cp.size} with different "
                                                       "roots: the log forked; not cosigned")
        if cp.size > last.size:
            if proof is None:
                raise WitnessError("WITNESS_INCONSISTENT", f"the log grew from {last.size} to {cp.size}: a consistency proof "
                                                           f"from {last.size} is needed (`parmana-lab log prove-consistency`)")
            try:
                body = parse_consistency_proof(proof)
                if body.old_size != last.size or body.checkpoint.size != cp.size or body.checkpoint.root != cp.root:
                    raise ProofError("CONSISTENCY_PROOF_INVALID", f"the proof is for {body.old_size} -> "
                                                                  f"{body.checkpoint.size}, not {last.size} -> {cp.size}")
                verify_consistency(last.size, cp.size, list(body.hashes), last.root, cp.root)
            except ProofError as exc:
                raise WitnessError("WITNESS_INCONSISTENT", f"not cosigned: {exc.reason}") from None
    signed = cp.note.with_signature(cosignature(cp.text, name, key, int(clock().timestamp())))
    _write_atomic(path, cp.note.render().encode("utf-8"))
    return parse_checkpoint(signed.render())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
