"""Where things live: a workspace folder and the sample data shipped with the kit."""

from __future__ import annotations

from pathlib import Path

DEFAULT_WORKSPACE = Path(".parmana")
_PACKAGE = Path(__file__).parent


class Workspace:
    """``audit.duckdb``, ``keys/`` (private keys 0600 + trust.json) and ``exports/``."""

    def __init__(self, root: str | Path = DEFAULT_WORKSPACE) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.duckdb"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"


def _sample_dir(kind: str) -> Path:
    """``./sample_<kind>`` when present, else the copy inside the installed package."""
    local = Path(f"sample_{kind}")
    if local.is_dir():
        return local
    bundled = _PACKAGE / "_samples" / kind
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent / f"sample_{kind}"  # editable install: the source checkout


def default_policy_dir() -> Path:
    return _sample_dir("policies")


def default_requests_dir() -> Path:
    return _sample_dir("requests")
