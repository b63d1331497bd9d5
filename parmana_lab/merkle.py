"""RFC 6962 Merkle tree hash over archive lines, computed in one streaming pass.

leaf = sha256(0x00 || line), node = sha256(0x01 || left || right), and a tree
of n leaves splits at the largest power of two below n. Merging equal-sized
subtrees as leaves arrive, then folding what is left from the right, gives
exactly that tree with O(log n) memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
_LEAF = hashlib.sha256(b"\x00")
sha256 = hashlib.sha256


def leaf_hash(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleBuilder:
    """Feed lines in order with ``add``; ``root()`` is the RFC 6962 tree hash (hex)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes strictly decreasing
        self.count = 0

    def add(self, line: bytes) -> None:
        self.add_leaf_hash(leaf_hash(line))

    def add_leaf_hashes(self, leaves: bytes) -> None:
        """Leaf hashes computed elsewhere (workers), 32 bytes each, in order."""
        for at in range(0, len(leaves), 32):
            self.add_leaf_hash(leaves[at:at + 32])

    def add_many(self, lines: list[bytes]) -> None:
        """``add`` for a block of lines, with the per-leaf work kept in one loop."""
        stack, new = self._stack, _LEAF.copy
        for line in lines:
            h = new()
            h.update(line)
            size, node = 1, h.digest()
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                node, size = sha256(b"\x01" + left + node).digest(), left_size + size
            stack.append((size, node))
        self.count += len(lines)

    def add_leaf_hash(self, digest: bytes) -> None:
        size, node = 1, digest
        stack = self._stack
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            node, size = node_hash(left, node), left_size + size
        stack.append((size, node))
        self.count += 1

    def root(self) -> str:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node.hex()


def merkle_root(lines: Iterable[bytes]) -> str:
    builder = MerkleBuilder()
    for line in lines:
        builder.add(line)
    return builder.root()

