"""Lessons that come out the same every run: a clock that moves only when told, numbered ids, keys derived from names.

Committed notebook outputs and a class following along on their own machines need the same fingerprints,
signatures and timestamps each time. Every key here is derived from a public name, so anyone can rebuild
it: that is the point in a classroom and the reason never to use one for real decisions.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .authority import ApproverEntry, AuthorEntry, Authority
from .bundles import sign_bundle
from .keys import Keyring, SigningKey, new_key_file
from .policy import version_order
from .runtime import Runtime
from .workspace import Workspace, default_policy_dir

LESSON_START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
AUTHORITY_SINCE = "2026-01-01T00:00:00.000Z"
# who decides what in the lessons: approverId -> roles (carol also asks for payments, so she may not approve them)
APPROVERS = {"alice": ["finance"], "bob": ["finance"], "carol": ["finance"], "uma": ["underwriter"], "sam": ["security"]}


def lesson_key(name: str) -> SigningKey:
    """The Ed25519 key for ``name`` in the lessons: sha256 of a public label. Never a real key."""
    return SigningKey(hashlib.sha256(f"parmana-lab classroom key: {name}".encode()).digest())


class LessonClock:
    """A clock that stands still until ``advance`` moves it (to watch a request expire)."""

    def __init__(self, start: datetime = LESSON_START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def __repr__(self) -> str:
        return f"LessonClock({self.now.isoformat()})"


class LessonIds:
    """executionIds that are version 4 UUIDs in form, numbered by the lesson's name instead of random."""

    def __init__(self, lesson: str) -> None:
        self.lesson, self.count = lesson, 0

    def __call__(self) -> str:
        self.count += 1
        digest = hashlib.sha256(f"{self.lesson}:{self.count}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


@dataclass
class Classroom:
    """One lesson's workspace folder, clock and ids; ``runtime()`` opens runtimes that share them.

    ``Classroom("01")`` empties ``<tmp>/parmana-lesson-01`` first, so a rerun starts from nothing and a
    student's own ``./.parmana/`` is never touched. ``close()`` closes what it opened and removes the folder.
    One lesson runs in one kernel at a time: a second Classroom of the same lesson empties the first one's folder
    (pass ``root`` to run two side by side).
    """

    lesson: str
    root: Path | None = None
    clock: LessonClock = field(default_factory=LessonClock)
    _open: list[Runtime] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else Path(tempfile.gettempdir()) / f"parmana-lesson-{self.lesson}"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.ids = LessonIds(self.lesson)

    def runtime(self, name: str = "runtime", **options: Any) -> Runtime:
        """A runtime in ``root/name`` that signs with the lesson's key for ``name``."""
        workspace = Workspace(self.root / name)
        keyring = Keyring(workspace.keys_dir, clock=self.clock)
        if keyring.active_key_id() is None:
            keyring.rotate(lesson_key(f"{self.lesson}/{name}"))
        options.setdefault("clock", self.clock)
        options.setdefault("new_id", self.ids)
        rt = Runtime(workspace.root, **options)
        self._open.append(rt)
        return rt

    def key_file(self, person: str) -> Path:
        """``person``'s own key file (0600) under ``root/people``, made on first use."""
        path = self.root / "people" / f"{person}.pem"
        if not path.exists():
            new_key_file(path, lesson_key(person))
        return path

    def desk(self, approvers: dict[str, list[str]] | None = None, policies: Path | None = None) -> Path:
        """An authority file with one author ("author", every policy) and the approvers, and the sample
        policies copied to ``root/policies`` and signed by that author. Returns the authority file's path."""
        approvers = APPROVERS if approvers is None else approvers
        target = self.root / "policies"
        shutil.copytree(policies or default_policy_dir(), target)
        author = lesson_key("author")
        self.key_file("author")
        authority = Authority(
            authors=[AuthorEntry(authorId="author", keyId=author.key_id, publicKey=author.public_key_pem(), policyIds=["*"],
                                 notBefore=AUTHORITY_SINCE)],
            approvers=[ApproverEntry(approverId=name, roles=roles, keyId=lesson_key(name).key_id,
                                     publicKey=lesson_key(name).public_key_pem(), notBefore=AUTHORITY_SINCE)
                       for name, roles in approvers.items()],
        )
        for name in approvers:
            self.key_file(name)
        path = self.root / "authority.json"
        authority.save(path)
        signed_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
        for folder in _in_version_order(target.glob("*/*")):
            sign_bundle(folder, author, "author", clock=lambda: signed_at)
        return path

    @property
    def policies(self) -> Path:
        """Where ``desk()`` put the signed policies."""
        return self.root / "policies"

    def close(self) -> None:
        for rt in self._open:
            rt.close()
        self._open.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Classroom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_version_order(folders: Iterable[Path]) -> list[Path]:
    """policy folders by policyId, then by numeric version (an author signs 1.2.0 after 1.10.0 otherwise)."""
    return sorted((f for f in folders if f.is_dir()), key=lambda f: (f.parent.name, version_order(f.name)))
