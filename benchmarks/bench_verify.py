"""Verification targets (issue: archives and bulk verification).

- single worker: verify_archive throughput >= 0.8x a bare PyNaCl loop verifying
  the same signatures over the same messages;
- workers=2 >= 1.6x the single-worker rate (2 cores).
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path

import nacl.signing
import orjson

from parmana_lab import Runtime, default_policy_dir
from parmana_lab.attestation import signing_message
from parmana_lab.verify import verify_archive

from .bench_runtime import loan_requests
from .common import Measure, interleaved

N = 20_000


def _archive(tmp: Path, n: int) -> tuple[Path, object]:
    with Runtime(tmp / "ws", policies=default_policy_dir()) as rt:
        for start in range(0, n, 10_000):
            rt.execute_many(loan_requests(min(10_000, n - start), seed=start))
        result = rt.export_archive(tmp / "archive")
        return Path(result.path), rt.trust_store()


def _rate(path: Path, store, workers: int, n: int) -> float:
    start = time.perf_counter()
    report = verify_archive(path, store, workers=workers, progress=False)
    rate = n / (time.perf_counter() - start)
    assert report.summary.verified == n
    return rate


def bench_verify() -> list[Measure]:
    with tempfile.TemporaryDirectory() as tmp:
        path, store = _archive(Path(tmp), N)
        keys = {k.keyId: nacl.signing.VerifyKey(k.raw_public_key) for k in store.keys}
        pairs = []
        for line in (path / "attestations.jsonl").read_bytes().splitlines():
            att = orjson.loads(line)
            signature = base64.b64decode(att.pop("signature"))
            pairs.append((keys[att["signerKeyId"]], signing_message(att), signature))

        def bare() -> int:
            for vk, message, signature in pairs:
                vk.verify(message, signature)
            return len(pairs)

        best = 0.0

        def kit() -> int:
            nonlocal best
            best = max(best, _rate(path, store, 1, N))
            return N

        _, b = interleaved(kit, bare, rounds=7)
    return [Measure("verify_archive 1 worker vs bare PyNaCl verify loop", best, b, "att/s", 0.8)]


def bench_workers(n: int = 100_000) -> list[Measure]:
    """Workers pay off on bulk archives; starting them costs a fraction of a second."""
    with tempfile.TemporaryDirectory() as tmp:
        path, store = _archive(Path(tmp), n)
        rates = {1: 0.0, 2: 0.0}
        for _ in range(2):
            for workers in (1, 2):
                rates[workers] = max(rates[workers], _rate(path, store, workers, n))
    return [Measure(f"verify_archive 2 workers vs 1 worker ({n:,} attestations)", rates[2], rates[1], "att/s", 1.6)]


BENCHES = (bench_verify, bench_workers)
