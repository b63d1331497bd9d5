"""Signed policy bundles: a policy version folder whose author signed exactly what is in it.

``policies/{id}/{version}/`` holds ``policy.json``, ``bundle.manifest.json`` =
JCS(manifest) and ``bundle.sig`` = JCS({"signatures": [{"keyid", "sig"}]}),
each sig base64 Ed25519 over DSSE PAE(PARMANA_POLICY_BUNDLE_V1, JCS(manifest)).
verify_bundle checks it against an authority file; the runtime refuses to load
a version that does not verify (POL-030..036; rollback, POL-034/035, is checked
against the audit DB by the runtime).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Literal

import nacl.bindings
import nacl.exceptions
from pydantic import BaseModel, ConfigDict, Field

from .attestation import decode_signature, pae
from .authority import AuthorEntry, Authority
from .canonical import canonicalize, parse_json
from .errors import CanonicalizationError, PolicyError
from .keys import SigningKey
from .timestamps import Clock, format_ts, parse_ts, system_clock, time_bound

BUNDLE_TYPE = "PARMANA_POLICY_BUNDLE_V1"
MANIFEST_FILE = "bundle.manifest.json"
SIGNATURE_FILE = "bundle.sig"
MANIFEST_MEMBERS = {"policyId", "policyVersion", "schemaVersion", "bundleHash", "files", "sequence", "issuedAt", "expiresAt",
                    "signedBy"}


class BundleVerdict(BaseModel):
    model_config = ConfigDict(defer_build=True)

    policyId: str
    policyVersion: str
    status: Literal["verified", "failed"]
    code: str
    reason: str
    sequence: int | None = None
    signerKeyIds: list[str] = []
    manifestHash: str | None = None
    path: str | None = None
    manifest: str | None = Field(default=None, repr=False)  # the signed files as they were, for the audit DB and exports
    signatures: str | None = Field(default=None, repr=False)


def _file_hash(path: Path) -> str:
    """JSON files by their canonical form (so reformatting is not a change), others byte for byte."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            return hashlib.sha256(canonicalize(parse_json(data))).hexdigest()
        except CanonicalizationError:
            pass
    return hashlib.sha256(data).hexdigest()


def _content(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _file_hash(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)}


def sign_bundle(folder: str | Path, key: SigningKey, author_id: str, *, sequence: int | None = None,
                expires: str | None = None, clock: Clock = system_clock) -> dict[str, Any]:
    """Write bundle.manifest.json and bundle.sig for a policy version folder; returns the manifest.

    ``sequence`` defaults to one more than the highest among the policy's signed versions beside it, else 1.
    """
    folder = Path(folder)
    try:
        document = parse_json((folder / "policy.json").read_bytes())
    except (OSError, CanonicalizationError) as exc:
        raise PolicyError("POL-030", "policy", f"{folder} has no usable policy.json to sign: {exc}") from None
    if sequence is None:
        sequence = 1 + max((_sequence_of(v) for v in folder.parent.iterdir() if v.is_dir() and v != folder), default=0)
    manifest = {
        "policyId": document.get("policyId"), "policyVersion": document.get("policyVersion"),
        "schemaVersion": document.get("schemaVersion"),
        "bundleHash": hashlib.sha256(canonicalize(document)).hexdigest(),
        "files": _content(folder), "sequence": sequence, "issuedAt": format_ts(clock()),
        "expiresAt": time_bound(expires) if expires else None, "signedBy": author_id,
    }
    body = canonicalize(manifest)
    signature = base64.b64encode(key.sign(pae(BUNDLE_TYPE, body))).decode("ascii")
    (folder / MANIFEST_FILE).write_bytes(body)
    (folder / SIGNATURE_FILE).write_bytes(canonicalize({"signatures": [{"keyid": key.key_id, "sig": signature}]}))
    return manifest


def _sequence_of(folder: Path) -> int:
    try:
        value = parse_json((folder / MANIFEST_FILE).read_bytes()).get("sequence")
    except (OSError, CanonicalizationError, AttributeError):
        return 0
    return value if type(value) is int else 0


def verify_bundle(folder: str | Path, authority: Authority, *, runtime_keys: set[str] | frozenset[str] = frozenset(),
                  now: str | None = None) -> BundleVerdict:
    """Check a signed policy version folder against ``authority`` (as of ``now`` for revocation and expiry)."""
    folder = Path(folder)
    now = now or format_ts(system_clock())
    pid, pver = folder.parent.name, folder.name
    try:
        manifest, signers, mhash = _verify(folder, authority, runtime_keys, now, pid, pver)
        files = ((folder / MANIFEST_FILE).read_text("utf-8"), (folder / SIGNATURE_FILE).read_text("utf-8"))
    except PolicyError as exc:
        return BundleVerdict(policyId=pid, policyVersion=pver, status="failed", code=exc.code, reason=exc.reason, path=str(folder))
    return BundleVerdict(policyId=pid, policyVersion=pver, status="verified", code="VERIFIED",
                         reason=f"signed by {manifest['signedBy']}", sequence=manifest["sequence"], signerKeyIds=signers,
                         manifestHash=mhash, path=str(folder), manifest=files[0], signatures=files[1])


def _fail(code: str, reason: str) -> PolicyError:
    return PolicyError(code, "policy", reason)


def _verify(folder: Path, authority: Authority, runtime_keys, now: str, pid: str, pver: str):
    where = f"policy {pid} {pver}"
    try:
        body = (folder / MANIFEST_FILE).read_bytes()
        sig_file = parse_json((folder / SIGNATURE_FILE).read_bytes())
    except FileNotFoundError:
        raise _fail("POL-030", f"{where} is not signed: {MANIFEST_FILE} and {SIGNATURE_FILE} are needed when an "
                               "authority file is configured (`parmana-lab policies sign`)") from None
    except (OSError, CanonicalizationError) as exc:
        raise _fail("POL-030", f"{where}: unreadable bundle signature ({exc})") from None
    try:
        manifest = parse_json(body)
        if not isinstance(manifest, dict) or canonicalize(manifest) != body or set(manifest) != MANIFEST_MEMBERS:
            raise ValueError("not the JCS of a manifest with exactly its members")
        if type(manifest["sequence"]) is not int or manifest["sequence"] < 1 or not isinstance(manifest["files"], dict):
            raise ValueError("sequence must be a whole number >= 1 and files an object")
        parse_ts(manifest["issuedAt"])
        if manifest["expiresAt"] is not None:
            parse_ts(manifest["expiresAt"])
    except (CanonicalizationError, ValueError, TypeError) as exc:
        raise _fail("POL-030", f"{where}: {MANIFEST_FILE} is malformed ({exc})") from None
    signatures = sig_file.get("signatures") if isinstance(sig_file, dict) else None
    if not isinstance(signatures, list) or not signatures:
        raise _fail("POL-030", f"{where}: {SIGNATURE_FILE} holds no signatures")
    message = pae(BUNDLE_TYPE, body)
    valid: list[AuthorEntry] = []
    reasons = []
    for entry in signatures:
        keyid, sig = (entry.get("keyid"), entry.get("sig")) if isinstance(entry, dict) else (None, None)
        if keyid in runtime_keys:
            reasons.append(f"{keyid} is the runtime's own signing key, which can never author a policy")
            continue
        author = authority.author(keyid) if isinstance(keyid, str) else None
        if author is None:
            reasons.append(f"signer {keyid} is not in the authority file")
            continue
        raw = decode_signature(sig) if isinstance(sig, str) else None
        try:
            if raw is None:
                raise nacl.exceptions.BadSignatureError
            nacl.bindings.crypto_sign_open(raw + message, author.raw_public_key)
        except nacl.exceptions.BadSignatureError:
            reasons.append(f"the signature by {author.authorId} ({keyid}) does not verify")
            continue
        valid.append(author)
    if not valid:
        raise _fail("POL-031", f"{where}: no valid signature by an author: " + "; ".join(reasons))
    try:
        document = parse_json((folder / "policy.json").read_bytes())
        bundle_hash = hashlib.sha256(canonicalize(document)).hexdigest()
    except (OSError, CanonicalizationError) as exc:
        raise _fail("POL-032", f"{where}: policy.json is unusable ({exc})") from None
    if manifest["bundleHash"] != bundle_hash:
        raise _fail("POL-032", f"{where}: policy.json was changed after signing (bundleHash {bundle_hash[:16]}… is not the "
                               f"signed {str(manifest['bundleHash'])[:16]}…)")
    if (manifest["policyId"], manifest["policyVersion"]) != (pid, pver):
        raise _fail("POL-032", f"{where}: the manifest is for {manifest['policyId']} {manifest['policyVersion']}")
    content = _content(folder)
    if content != manifest["files"]:
        changed = sorted(set(content) ^ set(manifest["files"]) | {k for k in content if manifest["files"].get(k) != content[k]})
        raise _fail("POL-032", f"{where}: the folder is not what was signed ({', '.join(changed[:5])} added, removed or changed)")
    scoped = []
    for author in valid:
        if author.authorId != manifest["signedBy"]:
            reasons.append(f"{author.keyId} belongs to {author.authorId}, not to signedBy {manifest['signedBy']}")
        elif not author.may_author(pid):
            reasons.append(f"{author.authorId} may author {', '.join(author.policyIds)}, not {pid}")
        elif author.status_at(manifest["issuedAt"]) != "valid":
            reasons.append(f"{author.authorId}'s key {author.keyId} was {author.status_at(manifest['issuedAt'])} at the "
                           f"manifest's issuedAt {manifest['issuedAt']}")
        elif author.revokedAt is not None and now >= author.revokedAt:
            reasons.append(f"{author.authorId}'s key {author.keyId} is revoked since {author.revokedAt}")
        else:
            scoped.append(author)
    if not scoped:
        raise _fail("POL-033", f"{where}: not signed by an author allowed to: " + "; ".join(reasons))
    if manifest["expiresAt"] is not None and now >= manifest["expiresAt"]:
        raise _fail("POL-036", f"{where}: the bundle expired at {manifest['expiresAt']}; its author must sign it again")
    return manifest, sorted(a.keyId for a in scoped), hashlib.sha256(body).hexdigest()
