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

    def copy(self) -> MerkleBuilder:
        twin = MerkleBuilder()
        twin._stack, twin.count = list(self._stack), self.count
        return twin

    def subtrees(self) -> list[tuple[int, bytes]]:
        """The complete subtrees built so far, (leaf count, hash), largest first."""
        return list(self._stack)

    def add_subtrees(self, subtrees: list[tuple[int, bytes]]) -> None:
        """Append another builder's ``subtrees()`` (a worker's run of lines).

        Each must start at a multiple of its own size, as in the tree a single
        pass would build: the caller hands out runs whose start is a multiple
        of a power of two at least as large as the run.
        """
        stack = self._stack
        for size, node in subtrees:
            if self.count % size:
                raise ValueError(f"a subtree of {size} leaves cannot start at leaf {self.count}")
            self.count += size
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                node, size = node_hash(left, node), left_size + size
            stack.append((size, node))

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

    def add_leaf_hash(self, digest: bytes) -> list[tuple[int, bytes]]:
        """Append one leaf by its hash; returns the subtrees it completed, (leaf count, hash), smallest first."""
        size, node = 1, digest
        stack = self._stack
        completed = [(1, node)]
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            node, size = node_hash(left, node), left_size + size
            completed.append((size, node))
        stack.append((size, node))
        self.count += 1
        return completed

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

