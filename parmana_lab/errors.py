"""One small hierarchy for every refusal the kit makes.

Every error carries a stable ``code`` (what went wrong), the ``stage`` of the
flow that refused (where), and a ``reason`` a person can act on. ``str()`` is
the documented wire form ``[CODE@stage] reason``.
"""

from __future__ import annotations

from typing import Any

STAGES = (
    "canonicalize",
    "validate",
    "policy",
    "execute",
    "replay",
    "sign",
    "audit",
    "keys",
    "verify",
    "archive",
    "log",
    "witness",
    "override",
)


class ParmanaError(Exception):
    """Base of every structured refusal."""

    def __init__(self, code: str, stage: str, reason: str, **details: Any) -> None:
        self.code = code
        self.stage = stage
        self.reason = reason
        self.details = details
        super().__init__(f"[{code}@{stage}] {reason}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "stage": self.stage, "reason": self.reason}

    def __reduce__(self):  # keep pickling (multiprocessing) lossless
        return (_rebuild, (type(self), self.code, self.stage, self.reason, self.details))


def _rebuild(cls, code, stage, reason, details):
    """Subclasses take their own constructor arguments (ArchiveError(code, reason), …): rebuild past them."""
    exc = cls.__new__(cls)
    ParmanaError.__init__(exc, code, stage, reason, **details)
    return exc


class CanonicalizationError(ParmanaError):
    """A value has no RFC 8785 form (NaN, lone surrogate, unsafe integer...)."""

    def __init__(self, reason: str, code: str = "CAN-001", stage: str = "canonicalize", **details: Any) -> None:
        super().__init__(code, stage, reason, **details)


class RequestError(ParmanaError):
    """A request or its signals failed strict validation (VAL-xxx)."""


class PolicyError(ParmanaError):
    """A policy could not be found, parsed or compiled (POL-xxx)."""


class EvaluationError(ParmanaError):
    """Evaluation refused to decide (SYS-xxx), e.g. no rule matched."""


class ReplayError(ParmanaError):
    """Replay protection refused the execution (INV-xxx)."""


class KeyStoreError(ParmanaError):
    """Signing keys or the trust store are missing, unreadable or unsafe (KEY-xxx)."""


class AuditStoreError(ParmanaError):
    """The audit database is unavailable, locked or damaged (AUD-xxx)."""


class OverrideError(ParmanaError):
    """A resolution of a pending_override execution was refused (SYS-021..025, OVR-001..006)."""

    def __init__(self, code: str, reason: str, **details: Any) -> None:
        super().__init__(code, "override", reason, **details)
