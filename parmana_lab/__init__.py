"""parmana_lab: run, verify and audit signed policy executions from Python and Jupyter.

Data flows canonical -> policy -> evaluate -> runtime -> audit -> archive -> verify;
everything a notebook user needs is importable from here. Names load on first
use, so worker processes and the CLI do not pay for DuckDB and pandas they do
not touch; for the same reason every model is built on first use (pydantic's
``defer_build``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported eagerly: the name is also a submodule's, and importing the submodule
# would otherwise shadow the function with the module object.
from .evaluate import evaluate  # noqa: E402

_EXPORTS = {
    "ATTESTATION_TYPE": ".attestation",
    "ArchiveError": ".archive",
    "ArchiveManifest": ".archive",
    "ArchiveReport": ".verify",
    "AuditDB": ".audit",
    "AuditStoreError": ".errors",
    "CanonicalizationError": ".errors",
    "DEFAULT_WORKSPACE": ".workspace",
    "Decision": ".evaluate",
    "EvaluationError": ".errors",
    "ExecutionAttestation": ".attestation",
    "ExecutionRequest": ".validation",
    "ExportResult": ".archive",
    "ImportRefused": ".imports",
    "ImportResult": ".imports",
    "KeyStoreError": ".errors",
    "Keyring": ".keys",
    "ParmanaError": ".errors",
    "Policy": ".policy",
    "PolicyError": ".errors",
    "PolicyStore": ".policy",
    "RUNTIME_VERSION": ".provenance",
    "ReplayError": ".errors",
    "RequestError": ".errors",
    "Runtime": ".runtime",
    "RuntimeInfo": ".provenance",
    "RuntimeManifest": ".provenance",
    "SigningKey": ".keys",
    "TrustStore": ".keys",
    "TrustedKey": ".keys",
    "VerificationResult": ".verify",
    "Checkpoint": ".notes",
    "LogError": ".translog",
    "LogVerdict": ".logverify",
    "ProofError": ".proofs",
    "TransparencyLog": ".translog",
    "WitnessError": ".witness",
    "cosign": ".witness",
    "verify_checkpoint": ".logverify",
    "verify_consistency": ".logverify",
    "verify_inclusion": ".logverify",
    "verify_log_file": ".logverify",
    "witness_vkey": ".witness",
    "Workspace": ".workspace",
    "canonical_hash": ".canonical",
    "canonicalize": ".canonical",
    "default_policy_dir": ".workspace",
    "default_requests_dir": ".workspace",
    "evaluator_artifact_hash": ".provenance",
    "export_archive": ".archive",
    "find_replays": ".replays",
    "reproduce": ".reproducibility",
    "ReproReport": ".reproducibility",
    "ReplayReport": ".replays",
    "import_archive": ".imports",
    "load_policy_file": ".policy",
    "open_archive": ".archive",
    "pae": ".attestation",
    "parse_json": ".canonical",
    "parse_policy": ".policy",
    "parse_request": ".validation",
    "runtime_hash": ".provenance",
    "runtime_info": ".provenance",
    "runtime_manifest": ".provenance",
    "signing_message": ".attestation",
    "to_dsse": ".attestation",
    "validate_signals": ".validation",
    "verify_archive": ".verify",
    "verify_attestation": ".verify",
    "reason_codes": ".verify",
    "REPLAY_STATES": ".audit",
    "verify_signature": ".attestation",
    "Authority": ".authority",
    "AuthorEntry": ".authority",
    "ApproverEntry": ".authority",
    "sign_bundle": ".bundles",
    "verify_bundle": ".bundles",
    "BundleVerdict": ".bundles",
    "OverrideError": ".errors",
    "OverrideRule": ".policy",
    "OverrideRecord": ".overrides",
    "OverrideStatus": ".overrides",
    "OverrideTrail": ".overrides",
    "sign_resolution": ".overrides",
    "load_request": ".overrides",
    "describe_request": ".overrides",
    "verify_archives": ".batch",
    "iter_verify_archives": ".batch",
    "BatchReport": ".batch",
    "Classroom": ".classroom",
    "LessonClock": ".classroom",
    "lesson_key": ".classroom",
    "FlowDiagram": ".diagram",
    "flow_diagram": ".diagram",
}
__all__ = [
    "ATTESTATION_TYPE",
    "ArchiveError",
    "ArchiveManifest",
    "ArchiveReport",
    "AuditDB",
    "AuditStoreError",
    "CanonicalizationError",
    "DEFAULT_WORKSPACE",
    "Decision",
    "EvaluationError",
    "ExecutionAttestation",
    "ExecutionRequest",
    "ExportResult",
    "ImportRefused",
    "ImportResult",
    "KeyStoreError",
    "Keyring",
    "ParmanaError",
    "Policy",
    "PolicyError",
    "PolicyStore",
    "RUNTIME_VERSION",
    "ReplayError",
    "RequestError",
    "Runtime",
    "RuntimeInfo",
    "RuntimeManifest",
    "SigningKey",
    "TrustStore",
    "TrustedKey",
    "VerificationResult",
    "Checkpoint",
    "LogError",
    "LogVerdict",
    "ProofError",
    "TransparencyLog",
    "WitnessError",
    "cosign",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_log_file",
    "witness_vkey",
    "Workspace",
    "canonical_hash",
    "canonicalize",
    "default_policy_dir",
    "default_requests_dir",
    "evaluate",
    "evaluator_artifact_hash",
    "export_archive",
    "find_replays",
    "reproduce",
    "ReproReport",
    "ReplayReport",
    "import_archive",
    "load_policy_file",
    "open_archive",
    "pae",
    "parse_json",
    "parse_policy",
    "parse_request",
    "runtime_hash",
    "runtime_info",
    "runtime_manifest",
    "signing_message",
    "to_dsse",
    "validate_signals",
    "verify_archive",
    "verify_attestation",
    "reason_codes",
    "REPLAY_STATES",
    "verify_signature",
    "Authority",
    "AuthorEntry",
    "ApproverEntry",
    "sign_bundle",
    "verify_bundle",
    "BundleVerdict",
    "OverrideError",
    "OverrideRule",
    "OverrideRecord",
    "OverrideStatus",
    "OverrideTrail",
    "sign_resolution",
    "load_request",
    "describe_request",
    "verify_archives",
    "iter_verify_archives",
    "BatchReport",
    "Classroom",
    "LessonClock",
    "lesson_key",
    "FlowDiagram",
    "flow_diagram",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from .archive import ArchiveError, ArchiveManifest, ExportResult, export_archive, open_archive
    from .attestation import ATTESTATION_TYPE, ExecutionAttestation, pae, signing_message, to_dsse, verify_signature
    from .audit import REPLAY_STATES, AuditDB
    from .authority import ApproverEntry, AuthorEntry, Authority
    from .batch import BatchReport, iter_verify_archives, verify_archives
    from .bundles import BundleVerdict, sign_bundle, verify_bundle
    from .canonical import canonical_hash, canonicalize, parse_json
    from .classroom import Classroom, LessonClock, lesson_key
    from .diagram import FlowDiagram, flow_diagram
    from .errors import (
        AuditStoreError,
        CanonicalizationError,
        EvaluationError,
        KeyStoreError,
        OverrideError,
        ParmanaError,
        PolicyError,
        ReplayError,
        RequestError,
    )
    from .evaluate import Decision, evaluate
    from .imports import ImportRefused, ImportResult, import_archive
    from .keys import Keyring, SigningKey, TrustedKey, TrustStore
    from .logverify import LogVerdict, verify_checkpoint, verify_consistency, verify_inclusion, verify_log_file
    from .notes import Checkpoint
    from .overrides import OverrideRecord, OverrideStatus, OverrideTrail, describe_request, load_request, sign_resolution
    from .policy import OverrideRule, Policy, PolicyStore, load_policy_file, parse_policy
    from .proofs import ProofError
    from .provenance import (
        RUNTIME_VERSION,
        RuntimeInfo,
        RuntimeManifest,
        evaluator_artifact_hash,
        runtime_hash,
        runtime_info,
        runtime_manifest,
    )
    from .replays import ReplayReport, find_replays
    from .reproducibility import ReproReport, reproduce
    from .runtime import Runtime
    from .translog import LogError, TransparencyLog
    from .validation import ExecutionRequest, parse_request, validate_signals
    from .verify import ArchiveReport, VerificationResult, reason_codes, verify_archive, verify_attestation
    from .witness import WitnessError, cosign, witness_vkey
    from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir, default_requests_dir
