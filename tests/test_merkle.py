import hashlib

import pytest

from parmana_lab.merkle import EMPTY_ROOT, leaf_hash, merkle_root, node_hash


def reference_root(items: list[bytes]) -> str:
    """RFC 6962 section 2.1, written recursively as the RFC states it."""

    def mth(d: list[bytes]) -> bytes:
        if not d:
            return hashlib.sha256(b"").digest()
        if len(d) == 1:
            return hashlib.sha256(b"\x00" + d[0]).digest()
        k = 1
        while k * 2 < len(d):
            k *= 2
        return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()

    return mth(items).hex()


@pytest.mark.parametrize("n", [*range(0, 40), 63, 64, 65, 127, 128, 129, 1000])
def test_streaming_root_equals_the_rfc_definition(n):
    lines = [f"line {i}".encode() for i in range(n)]
    assert merkle_root(lines) == reference_root(lines)


def test_small_trees_by_hand():
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root([a]) == leaf_hash(a).hex()
    assert merkle_root([a, b]) == node_hash(leaf_hash(a), leaf_hash(b)).hex()
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c)).hex()


def test_order_insertion_and_deletion_change_the_root():
    lines = [str(i).encode() for i in range(10)]
    root = merkle_root(lines)
    assert merkle_root(lines[:5] + lines[6:]) != root
    assert merkle_root([lines[1], lines[0], *lines[2:]]) != root
    assert merkle_root([*lines, lines[3]]) != root


def test_joining_aligned_subtrees_gives_the_single_pass_root():
    from parmana_lab.merkle import MerkleBuilder

    lines = [f"line {i}".encode() for i in range(300)]
    for size in (1, 2, 8, 64):
        for n in (0, 1, size, size + 1, 3 * size - 1, 300):
            joined = MerkleBuilder()
            for at in range(0, n, size):  # runs start at multiples of their (power of two) size
                part = MerkleBuilder()
                part.add_many(lines[at:min(at + size, n)])
                joined.add_subtrees(part.subtrees())
            assert joined.root() == merkle_root(lines[:n]) and joined.count == n
    misaligned = MerkleBuilder()
    misaligned.add(b"x")
    with pytest.raises(ValueError, match="cannot start at leaf 1"):
        misaligned.add_subtrees([(2, node_hash(leaf_hash(b"a"), leaf_hash(b"b")))])
