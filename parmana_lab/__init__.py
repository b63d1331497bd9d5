"""parmana_lab: run, verify and audit signed policy executions from Python and Jupyter.

Data flows canonical -> policy -> evaluate -> runtime -> audit; everything a
notebook user needs is importable from here.
"""

from .attestation import (
    ATTESTATION_TYPE,
    ExecutionAttestation,
    pae,
    signing_message,
    to_dsse,
    verify_signature,
)
from .audit import AuditDB
from .canonical import canonical_hash, canonicalize, parse_json
from .errors import (
    AuditStoreError,
    CanonicalizationError,
    EvaluationError,
    KeyStoreError,
    ParmanaError,
    PolicyError,
    ReplayError,
    RequestError,
)
from .evaluate import Decision, evaluate
from .keys import Keyring, SigningKey, TrustedKey, TrustStore
from .policy import Policy, PolicyStore, load_policy_file, parse_policy
from .provenance import (
    RUNTIME_VERSION,
    RuntimeInfo,
    RuntimeManifest,
    evaluator_artifact_hash,
    runtime_hash,
    runtime_info,
    runtime_manifest,
)
from .runtime import Runtime
from .validation import ExecutionRequest, parse_request, validate_signals
from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir, default_requests_dir

__version__ = RUNTIME_VERSION

__all__ = [
    "ATTESTATION_TYPE",
    "AuditDB",
    "AuditStoreError",
    "CanonicalizationError",
    "DEFAULT_WORKSPACE",
    "Decision",
    "EvaluationError",
    "ExecutionAttestation",
    "ExecutionRequest",
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
    "Workspace",
    "canonical_hash",
    "canonicalize",
    "default_policy_dir",
    "default_requests_dir",
    "evaluate",
    "evaluator_artifact_hash",
    "load_policy_file",
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
    "verify_signature",
]
