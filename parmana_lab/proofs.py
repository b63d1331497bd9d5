"""RFC 6962 / RFC 9162 Merkle proofs: which subtrees a proof is made of, and verifying one.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency)
in the compact form of transparency-dev/merkle ``proof/verify.go``, plus the
edge rules the RFC leaves open: every hash (leaf, proof, roots) exactly 32
bytes, index < size, a proof of exactly the expected length, equal sizes need
an empty proof and equal roots, and a consistency proof from size 0 is refused
(a witness with no prior state handles size 0 itself, see witness.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import ParmanaError

HASH_SIZE = 32
Range = tuple[int, int]  # leaves [start, end) whose RFC 6962 hash is one proof element


class ProofError(ParmanaError):
    """A proof, checkpoint or leaf that does not verify; ``code`` says which (INCLUSION_PROOF_INVALID, …)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, "verify", reason)


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- which subtrees a proof consists of (for producing proofs from stored subtree hashes) ---------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1 as leaf ranges, leaf to root."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of {size} leaves")
    out: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    return out[::-1]


def consistency_ranges(old: int, new: int) -> list[Range]:
    """PROOF(old, D[0:new]) of RFC 9162 §2.1.4.1 as leaf ranges, in proof order (0 < old <= new)."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new} leaves")
    out: list[Range] = []
    start, end, m, complete = 0, new, old, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                out.append((start, end))
            break
        k = _split(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start, m, complete = start + k, m - k, False
    return out[::-1]


def aligned_parts(start: int, end: int) -> list[Range]:
    """A proof range as complete subtrees aligned to their size, left to right (what the log stores)."""
    parts, at = [], start
    while at < end:
        size = 1 << ((end - at).bit_length() - 1)
        while at % size:
            size >>= 1
        parts.append((at, at + size))
        at += size
    return parts


def range_hash(parts: Sequence[bytes]) -> bytes:
    """The RFC 6962 hash of a proof range from its aligned parts' hashes (folded from the right)."""
    node = parts[-1]
    for left in reversed(parts[:-1]):
        node = _node(left, node)
    return node


# -- verification ------------------------------------------------------------------------------


def _check_hash(value: bytes, what: str, code: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(code, f"{what} is {len(value) if isinstance(value, bytes | bytearray) else 'not'} bytes, "
                               f"not {HASH_SIZE}")


def _decomp(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    return inner, bin(index >> inner).count("1")


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = _node(seed, h) if not (index >> i) & 1 else _node(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = _node(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = _node(h, seed)
    return seed


def root_from_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof implies; ProofError if the proof cannot be one for (index, size)."""
    bad = "INCLUSION_PROOF_INVALID"
    if type(index) is not int or type(size) is not int or index < 0 or size < 0:
        raise ProofError(bad, f"index {index!r} and size {size!r} must be whole numbers")
    if index >= size:
        raise ProofError(bad, f"index {index} is not below the tree size {size}")
    _check_hash(leaf_hash, "the leaf hash", bad)
    for i, h in enumerate(proof):
        _check_hash(h, f"proof hash {i + 1}", bad)
    inner, border = _decomp(index, size)
    if len(proof) != inner + border:
        raise ProofError(bad, f"an inclusion proof for index {index} in a tree of {size} has {inner + border} hashes, "
                              f"not {len(proof)}")
    return _chain_border_right(_chain_inner(leaf_hash, proof[:inner], index), proof[inner:])


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """ProofError(INCLUSION_PROOF_INVALID) unless ``proof`` shows leaf ``index`` is in the tree with ``root``."""
    _check_hash(root, "the root", "INCLUSION_PROOF_INVALID")
    if root_from_inclusion(index, size, leaf_hash, proof) != root:
        raise ProofError("INCLUSION_PROOF_INVALID", f"the proof for index {index} leads to another root than the tree of "
                                                    f"size {size}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """ProofError(CONSISTENCY_PROOF_INVALID) unless the tree (size1, root1) is a prefix of (size2, root2)."""
    bad = "CONSISTENCY_PROOF_INVALID"
    if type(size1) is not int or type(size2) is not int or size1 < 0 or size2 < 0:
        raise ProofError(bad, f"sizes {size1!r} and {size2!r} must be whole numbers")
    _check_hash(root1, "the old root", bad)
    _check_hash(root2, "the new root", bad)
    for i, h in enumerate(proof):
        _check_hash(h, f"proof hash {i + 1}", bad)
    if size2 < size1:
        raise ProofError(bad, f"the new size {size2} is smaller than the old size {size1}: a log only grows")
    if size1 == size2:
        if proof:
            raise ProofError(bad, "equal sizes need an empty proof")
        if root1 != root2:
            raise ProofError(bad, f"two different roots for the same size {size1}: the log forked")
        return
    if size1 == 0:
        raise ProofError(bad, "a consistency proof from size 0 proves nothing and is refused")
    if not proof:
        raise ProofError(bad, f"an empty proof cannot show {size1} -> {size2}")
    inner, border = _decomp(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    seed, start = (root1, 0) if size1 == 1 << shift else (proof[0], 1)
    if len(proof) != start + inner + border:
        raise ProofError(bad, f"a consistency proof {size1} -> {size2} has {start + inner + border} hashes, not {len(proof)}")
    rest = proof[start:]
    mask = (size1 - 1) >> shift
    if _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:]) != root1:
        raise ProofError(bad, f"the proof does not lead to the old root at size {size1}")
    if _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:]) != root2:
        raise ProofError(bad, f"the proof does not lead to the new root at size {size2}")
