"""Child process for the override kill test: submit every vote in a file, printing each one once it has committed."""

from __future__ import annotations

import sys

from parmana_lab import Runtime
from parmana_lab.errors import OverrideError


def main(workspace: str, policies: str, authority: str, votes: str) -> None:
    with Runtime(workspace, policies=policies, authority=authority, wait=30) as rt:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for line in open(votes, "rb"):
            try:
                status = rt.submit_resolution(line)
            except OverrideError as exc:  # already counted by an earlier (killed) child, or decided
                sys.stdout.write(f"refused {exc.code}\n")
            else:
                sys.stdout.write(f"accepted {status.executionId} {status.state}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main(*sys.argv[1:5])
