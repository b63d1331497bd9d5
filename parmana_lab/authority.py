"""The authority file: who may author policies and who may approve overrides, pinned by the user.

Like the trust store it is never taken from an archive unless asked. Each
entry is one key with the trust store's rules (keyId = first 16 hex of
sha256(raw key), validity window, revocation); a person with two keys has two
entries. ``policyIds`` are exact ids or ``prefix*`` patterns.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .keys import TrustedKey, invalid_file, read_key_file

AUTHORITY_FILE = "authority.json"


class AuthorEntry(TrustedKey):
    """A policy author's key and the policies it may sign."""

    authorId: str
    policyIds: list[str]

    @field_validator("policyIds")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if not value or any(not p or "*" in p[:-1] for p in value):
            raise ValueError("policyIds: a non-empty list of exact ids or prefix* patterns")
        return value

    def may_author(self, policy_id: str) -> bool:
        return any(policy_id.startswith(p[:-1]) if p.endswith("*") else policy_id == p for p in self.policyIds)


class ApproverEntry(TrustedKey):
    """An override approver's key and roles: a policy's override block names the roles that may resolve it."""

    approverId: str
    roles: list[str]

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        if not value or any(not r for r in value):
            raise ValueError("roles: a non-empty list of role names")
        return value


class Authority(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    authors: list[AuthorEntry] = []
    approvers: list[ApproverEntry] = []

    @classmethod
    def load(cls, path: str | Path) -> Authority:
        data = read_key_file(path, "KEY-008", "authority file")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise invalid_file(exc, str(path), "KEY-008", "authority file") from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".authority-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def author(self, key_id: str) -> AuthorEntry | None:
        return next((a for a in self.authors if a.keyId == key_id), None)

    def approver(self, key_id: str) -> ApproverEntry | None:
        return next((a for a in self.approvers if a.keyId == key_id), None)

    def revoked(self, key_id: str, at: str) -> tuple[Authority, AuthorEntry | ApproverEntry | None]:
        """A copy with this author or approver key revoked from ``at`` (and the entry revoked, None if unknown)."""
        for name in ("authors", "approvers"):
            entries = getattr(self, name)
            for i, entry in enumerate(entries):
                if entry.keyId == key_id:
                    changed = entry.model_copy(update={"revokedAt": at})
                    return self.model_copy(update={name: [*entries[:i], changed, *entries[i + 1:]]}), changed
        return self, None
