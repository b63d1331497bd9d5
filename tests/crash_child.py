"""The process the crash harness kills: it executes batches until SIGKILL.

Run as ``python -m tests.crash_child WORKSPACE POLICIES CYCLE SEED``. It prints
``ready`` once the runtime is open, then one line per result *after* the call
that produced it has returned (so after its transaction committed):
``A <canonical attestation>`` or ``R <code>``.
"""

from __future__ import annotations

import random
import sys

REPLAY_POOL = 5  # the first requests of each cycle are the ones later cycles replay


def request_for(cycle: int, index: int) -> dict:
    """A request unique to (cycle, index): the harness can map any fingerprint back to its request."""
    return {
        "policyId": "claims-approval",
        "policyVersion": "1.0.0",
        "signals": {"insurance_active": index % 3 != 0, "risk_score": index % 97, "vip_customer": index % 7 == 0,
                    "claim_amount": cycle * 1_000_000 + index},
    }


def main(workspace: str, policies: str, cycle: int, seed: int) -> None:
    from parmana_lab import ParmanaError, Runtime

    rng = random.Random(seed)
    out = sys.stdout
    with Runtime(workspace, policies=policies) as rt:
        out.write("ready\n")
        out.flush()
        index = 0
        while True:
            n = rng.choice((1, 1, 2, 5, 20, 60))
            batch = [request_for(cycle, index + k) for k in range(n)]
            index += n
            if cycle and rng.random() < 0.3:  # an earlier cycle's request again: must never be confirmed twice
                batch.insert(rng.randrange(len(batch) + 1), request_for(rng.randrange(cycle), rng.randrange(REPLAY_POOL)))
            if n == 1:
                try:
                    results = [rt.execute(batch[0])]
                except ParmanaError as exc:
                    results = [exc]
                results += rt.execute_many(batch[1:])
            else:
                results = rt.execute_many(batch)
            out.write("".join(f"R {r.code}\n" if isinstance(r, ParmanaError) else f"A {r.canonical().decode()}\n" for r in results))
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
