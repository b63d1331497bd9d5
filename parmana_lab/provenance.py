"""What produced an attestation: the runtime manifest and the evaluator's code.

runtimeHash names the runtime release (its declared capabilities); the
evaluatorArtifactHash names the exact code that decides outcomes, so a change
to that code is visible in every attestation it signs.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .canonical import canonical_hash

RUNTIME_VERSION = "0.1.0"
SCHEMA_VERSIONS = ("1.0.0",)
CAPABILITIES = ("deterministic-evaluation", "attestation-signing", "replay-protection", "bundle-verification")
# Modules whose source decides outcomes; their bytes make the evaluatorArtifactHash.
DECIDING_MODULES = ("canonical.py", "policy.py", "validation.py", "evaluate.py")


class RuntimeManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    capabilities: tuple[str, ...]
    runtimeVersion: str
    supportedSchemaVersions: tuple[str, ...]

    @property
    def runtime_hash(self) -> str:
        return runtime_hash(self)


class RuntimeInfo(BaseModel):
    """``parmana-lab runtime --json``: the manifest and both provenance hashes."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    manifest: RuntimeManifest
    runtimeHash: str
    evaluatorArtifactHash: str


def runtime_manifest(
    runtime_version: str = RUNTIME_VERSION,
    capabilities: tuple[str, ...] = CAPABILITIES,
    supported_schema_versions: tuple[str, ...] = SCHEMA_VERSIONS,
) -> RuntimeManifest:
    return RuntimeManifest(
        capabilities=tuple(capabilities),
        runtimeVersion=runtime_version,
        supportedSchemaVersions=tuple(supported_schema_versions),
    )


def runtime_hash(manifest: RuntimeManifest) -> str:
    """sha256(JCS({capabilities, runtimeVersion, supportedSchemaVersions})), arrays in declared order."""
    return canonical_hash(manifest.model_dump(mode="json"))


@cache
def evaluator_artifact_hash(package_dir: str | None = None) -> str:
    """sha256(JCS({"<module file>": sha256(source bytes), ...})) over DECIDING_MODULES."""
    root = Path(package_dir) if package_dir else Path(__file__).parent
    return canonical_hash({name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in DECIDING_MODULES})


def runtime_info() -> RuntimeInfo:
    manifest = runtime_manifest()
    return RuntimeInfo(manifest=manifest, runtimeHash=runtime_hash(manifest), evaluatorArtifactHash=evaluator_artifact_hash())
