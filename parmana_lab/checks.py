"""Per-line checks of an archived attestation: the bulk verifier's hot path.

Kept free of heavy imports (no DuckDB, no pandas) so worker processes start
fast; everything here is a pure function of (line, signals line, Context).
"""

from __future__ import annotations

import binascii
import pickle
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import orjson
from nacl._sodium import ffi, lib  # libsodium as PyNaCl ships it; see _Verifier

from ._gc import cyclic_gc_paused
from .attestation import _HEX, _ISSUED_AT, _PAE_PREFIX, parse_attestation_line
from .canonical import canonicalize, fingerprint_payload, parse_json
from .errors import CanonicalizationError, ParmanaError
from .evaluate import rule_matcher
from .keys import TrustedKey, TrustStore
from .merkle import MerkleBuilder
from .policy import Policy, parse_policy
from .provenance import runtime_hash, runtime_manifest
from .validation import signals_conform, validate_signals

# authorship and override are set after the per-line pass, when the verifier has an authority file
# (verify._check_authorship, override_check.check_overrides)
CHECKS = ("schema", "key", "signature", "fingerprint", "signals_hash", "policy", "decision", "runtime", "duplicate", "authorship",
          "override")
LATE_CHECKS = 2  # the last ones, not_checkable until their post-pass
CheckStatus = Literal["verified", "failed", "unknown", "not_checkable"]
STATUS_NAMES = ("verified", "failed", "unknown", "not_checkable")
VERIFIED, FAILED, UNKNOWN, NOT_CHECKABLE = range(4)
CHECK_INDEX = {name: i for i, name in enumerate(CHECKS)}

CODE_ORDER = (
    "MALFORMED",
    "KEY_UNKNOWN",
    "SIGNATURE_INVALID",
    "KEY_REVOKED",
    "KEY_NOT_VALID_AT_ISSUE",
    "FINGERPRINT_MISMATCH",
    "SIGNALS_HASH_MISMATCH",
    "POLICY_MISSING",
    "BUNDLE_HASH_MISMATCH",
    "POLICY_UNSIGNED",
    "POLICY_SIGNATURE_INVALID",
    "POLICY_AUTHOR_UNAUTHORIZED",
    "DECISION_MISMATCH",
    "DUPLICATE_FINGERPRINT",
    "OVERRIDE_SIGNATURE_INVALID",
    "OVERRIDE_LINEAGE_MISMATCH",
    "OVERRIDE_CONFLICT",
    "OVERRIDE_UNAUTHORIZED",
    "OVERRIDE_SELF_APPROVED",
    "OVERRIDE_THRESHOLD_NOT_MET",
    "RUNTIME_UNKNOWN",
)
CODE_RANK = {code: i for i, code in enumerate(CODE_ORDER)}
HINTS = {
    "VERIFIED": "every check that could run passed",
    "MALFORMED": "the record is not a well-formed canonical v1 attestation: the archive was edited or damaged",
    "KEY_UNKNOWN": "signed by a key your trust store does not hold: get the signer's public key, or distrust the record",
    "SIGNATURE_INVALID": "the signature does not match the content: the record was altered after signing, or forged",
    "KEY_REVOKED": "the signing key was revoked at or before the moment this was issued (revokedAt <= issuedAt): treat the "
                   "record as untrusted",
    "KEY_NOT_VALID_AT_ISSUE": "issued outside the signing key's validity window (before notBefore or after notAfter)",
    "FINGERPRINT_MISMATCH": "the archived signals do not give the attested execution_fingerprint",
    "SIGNALS_HASH_MISMATCH": "the archived signals do not hash to the attested signalsHash: signals were edited",
    "POLICY_MISSING": "the archive does not hold the policy version this attestation names",
    "BUNDLE_HASH_MISMATCH": "the archived policy file is not the policy that was applied (edited under the same version)",
    "POLICY_UNSIGNED": "the archived policy carries no signed bundle: nobody in your authority file is shown to have written it",
    "POLICY_SIGNATURE_INVALID": "the archived policy's bundle signature does not verify, or does not cover this policy file",
    "POLICY_AUTHOR_UNAUTHORIZED": "the policy was signed, but not by an author your authority file allowed for it at the time "
                                  "of this decision",
    "DECISION_MISMATCH": "re-evaluating the archived policy on the archived signals gives another decision",
    "DUPLICATE_FINGERPRINT": "this execution_fingerprint was already consumed earlier in the archive: a replay",
    "OVERRIDE_SIGNATURE_INVALID": "an override record of this execution does not verify (request or outcome against your "
                                  "trust store, a vote against the approver's key): altered or forged",
    "OVERRIDE_LINEAGE_MISMATCH": "an override record is not bound to this attestation (another execution's, another "
                                 "request's, or missing its request)",
    "OVERRIDE_UNAUTHORIZED": "a vote was cast by a key your authority file does not hold, out of its validity, with a role "
                             "the policy does not allow or the approver does not hold, or outside the request's window",
    "OVERRIDE_SELF_APPROVED": "the person who requested this execution voted on it, and its policy does not allow that",
    "OVERRIDE_THRESHOLD_NOT_MET": "the outcome counts fewer valid, distinct votes than the policy's threshold requires",
    "OVERRIDE_CONFLICT": "contradictory override records: two outcomes, an outcome for a completed execution, a vote after "
                         "the outcome, or a new request while one was open",
    "RUNTIME_UNKNOWN": "produced by a runtime release this verifier does not know: not tampering, but check provenance",
}
# One attestation checked on its own (verify_attestation, the inspector): no archive is involved, the signals and
# the policy are the ones handed to the check.
SINGLE_HINTS = {
    **HINTS,
    "MALFORMED": "the record is not a well-formed canonical v1 attestation: it was edited or damaged after it was made",
    "FINGERPRINT_MISMATCH": "the signals given do not give the attested execution_fingerprint",
    "SIGNALS_HASH_MISMATCH": "the signals given do not hash to the attested signalsHash: they are not what was decided on",
    "POLICY_MISSING": "the policy given is not the policy version this attestation names",
    "BUNDLE_HASH_MISMATCH": "the policy given is not the policy that was applied (edited under the same version)",
    "POLICY_UNSIGNED": "the policy given carries no signed bundle: nobody in your authority file is shown to have written it",
    "POLICY_SIGNATURE_INVALID": "the policy's bundle signature does not verify, or does not cover this policy file",
    "DECISION_MISMATCH": "re-evaluating the given policy on the given signals gives another decision",
}
_KEY_CODES = {"revoked": "KEY_REVOKED", "not_yet_valid": "KEY_NOT_VALID_AT_ISSUE", "expired": "KEY_NOT_VALID_AT_ISSUE"}


@dataclass
class PolicyEntry:
    """An archived policy file: its bundleHash, and the policy when it validates."""

    bundle_hash: str | None
    policy: Policy | None
    problem: str | None
    outcomes: list[tuple[str, bool, str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy is not None and not self.outcomes:
            # per rule: (action, requires_override, reason, ruleId, execution_state)
            self.outcomes = [
                (r.outcome.action, r.outcome.requires_override, r.outcome.reason, r.id,
                 "pending_override" if r.outcome.requires_override else "completed")
                for r in self.policy.rules
            ]


_OPEN_END = "\uffff"  # sorts after any issuedAt text


def _is_hex(value: Any, length: int) -> bool:
    return type(value) is str and len(value) == length and _HEX.fullmatch(value) is not None


@dataclass
class Context:
    """Everything per-line checks need; small and picklable, so workers get a copy."""

    keys: dict[str, TrustedKey]
    known_runtimes: frozenset[str]
    policies: dict[tuple[str, str], PolicyEntry] = field(default_factory=dict)
    signals_available: bool = True
    _raw_keys: dict[str, bytes] = field(default_factory=dict)
    _fp_prefixes: dict[tuple[str, str], bytes] = field(default_factory=dict)
    _windows: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _verifier: _Verifier | None = None
    # per (policyId, policyVersion): (bundleHash, fingerprint prefix, signals check, rule matcher, decisions, states), or ()
    _fast: dict[tuple[str, str], tuple] = field(default_factory=dict)
    _runtimes_ok: frozenset[str] | None = None
    _artifacts_ok: set[str] = field(default_factory=set)

    def __getstate__(self) -> dict[str, Any]:
        # C buffers and generated functions stay in their process
        return {**self.__dict__, "_verifier": None, "_fast": {}}

    def prepare(self, pid: str, pver: str, key_id: str) -> None:
        """What _confirm needs for lines of this policy version and key; () when the policy is unusable."""
        if key_id in self.keys:
            self.window(key_id)
        if (pid, pver) in self._fast:
            return
        entry = self.policies.get((pid, pver))
        if entry is None or entry.policy is None or entry.bundle_hash is None:
            self._fast[(pid, pver)] = ()
            return
        policy = entry.policy
        decisions = [{"action": a, "reason": r, "requires_override": o, "ruleId": i} for a, o, r, i, _ in entry.outcomes]
        self._fast[(pid, pver)] = (entry.bundle_hash, self.fingerprint_prefix(pid, pver), signals_conform(policy),
                                   rule_matcher(policy), decisions, [state for *_, state in entry.outcomes])

    def fingerprint_prefix(self, pid: str, pver: str) -> bytes:
        """JCS({"policyId", "policyVersion", "signals": …}) up to the signals, per policy version."""
        prefix = self._fp_prefixes.get((pid, pver))
        if prefix is None:
            prefix = self._fp_prefixes[(pid, pver)] = fingerprint_payload(pid, pver, b"")[:-1]
        return prefix

    @property
    def fast_runtimes(self) -> frozenset[str]:
        """The known runtimeHashes that are well-formed (a caller may pass anything)."""
        if self._runtimes_ok is None:
            self._runtimes_ok = frozenset(r for r in self.known_runtimes if _is_hex(r, 64))
        return self._runtimes_ok

    def artifact_ok(self, artifact: str) -> bool:
        """Whether an evaluatorArtifactHash is well-formed, remembered (an archive holds a handful)."""
        if artifact in self._artifacts_ok:
            return True
        if _is_hex(artifact, 64):
            self._artifacts_ok.add(artifact)
            return True
        return False

    @classmethod
    def build(cls, trust_store: TrustStore, known_runtimes: Iterable[str] | None, **kw: Any) -> Context:
        known = frozenset(known_runtimes) if known_runtimes is not None else frozenset({runtime_hash(runtime_manifest())})
        return cls(keys={k.keyId: k for k in trust_store.keys}, known_runtimes=known, **kw)

    @property
    def verifier(self) -> _Verifier:
        if self._verifier is None:
            self._verifier = _Verifier()
        return self._verifier

    def window(self, key_id: str) -> tuple[str, str, str]:
        """(notBefore, notAfter, revokedAt) as text, open ends as a string after every timestamp."""
        bounds = self._windows.get(key_id)
        if bounds is None:
            k = self.keys[key_id]
            bounds = self._windows[key_id] = (k.notBefore, k.notAfter or _OPEN_END, k.revokedAt or _OPEN_END)
        return bounds

    def raw_key(self, key_id: str) -> bytes:
        raw = self._raw_keys.get(key_id)
        if raw is None:
            raw = self._raw_keys[key_id] = self.keys[key_id].raw_public_key
        return raw


def policy_entry(data: bytes | str, key: tuple[str, str], source: str | None = None) -> PolicyEntry:
    """A stored policy document: its bundleHash, and the Policy when it validates and names ``key``."""
    try:
        document = parse_json(data)
        bundle_hash = sha256(canonicalize(document)).hexdigest()
    except CanonicalizationError as exc:
        return PolicyEntry(None, None, f"policy file unusable: {exc}")
    try:
        policy = parse_policy(document, source=source)
    except ParmanaError as exc:
        return PolicyEntry(bundle_hash, None, str(exc))
    if policy.key != key:
        return PolicyEntry(bundle_hash, None, f"policy file names {policy.policyId} {policy.policyVersion}")
    return PolicyEntry(bundle_hash, policy, None)


def load_archive_policies(root: Path) -> dict[tuple[str, str], PolicyEntry]:
    out: dict[tuple[str, str], PolicyEntry] = {}
    folder = root / "policies"
    for path in sorted(folder.glob("*/*/policy.json")) if folder.is_dir() else ():
        key = (path.parent.parent.name, path.parent.name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            out[key] = PolicyEntry(None, None, f"policy file unusable: {exc}")
            continue
        out[key] = policy_entry(data, key, source=f"policies/{key[0]}/{key[1]}/policy.json")
    return out


class _Verifier:
    """Ed25519 verification straight through libsodium's crypto_sign_open.

    PyNaCl's VerifyKey.verify allocates and copies the whole message twice per
    call; on ~1 KB attestations that costs about a tenth of the verification.
    This calls the same libsodium function PyNaCl wraps, into a reused buffer.
    A test checks it agrees with VerifyKey.verify on good and bad signatures.
    """

    def __init__(self) -> None:
        self._size = 0
        self._out = None
        self._out_len = ffi.new("unsigned long long *")

    def verify(self, signed_message: bytes, public_key: bytes) -> bool:
        """signed_message = 64-byte signature || message."""
        if len(public_key) != 32 or len(signed_message) < 64:
            return False
        if len(signed_message) > self._size:
            self._size = max(len(signed_message), 4096)
            self._out = ffi.new("unsigned char[]", self._size)
        return lib.crypto_sign_open(self._out, self._out_len, signed_message, len(signed_message), public_key) == 0


Row = tuple  # (line, executionId, policyId, policyVersion, action, fingerprint, statuses bytes, findings tuple)
_SIG_MARK = b',"signature":"'


def check_line(number: int, line: bytes, signals_line: bytes | None, ctx: Context) -> Row:
    """Every check of one archive line that does not need other lines.

    ``signals_line`` is the signals.jsonl line paired with it (None when the
    archive has no signals).
    """
    return check_lines(number, [line], [signals_line], ctx)[0]


SIGNATURE_BATCH = 256


def check_lines(start: int, lines: list[bytes], signals: Iterable[bytes | None], ctx: Context) -> list[Row]:
    """check_line for a run of lines numbered from ``start``: the bulk verifier's hot loop.

    The signatures of each batch of lines are verified back to back after the
    batch's other checks. Measured here: Ed25519 verifications interleaved with
    the ~14 µs of Python checks each took ~10 µs longer than in a tight loop
    (the interpreter evicts libsodium's working set), about 13% of the total.
    """
    rows: list[Row] = []
    pending: list[tuple[int, bytes, str]] = []  # (row, signature || signed message, signerKeyId)
    for i, (line, signals_line) in enumerate(zip(lines, signals)):
        rows.append(_check(start + i, line, signals_line, ctx, pending, i))
        if len(pending) >= SIGNATURE_BATCH:
            _verify_signatures(rows, pending, ctx)
    if pending:
        _verify_signatures(rows, pending, ctx)
    return rows


def _verify_signatures(rows: list[Row], pending: list[tuple[int, bytes, str]], ctx: Context) -> None:
    verify, raw_key = ctx.verifier.verify, ctx.raw_key
    for i, message, key_id in pending:
        if not verify(message, raw_key(key_id)):
            number, eid, pid, pver, action, fp, statuses, findings = rows[i]
            failed = bytearray(statuses)
            failed[CHECK_INDEX["signature"]] = FAILED
            finding = ("SIGNATURE_INVALID", "signature", f"an Ed25519 signature by {key_id} over the record",
                       "the signature does not verify")
            rows[i] = (number, eid, pid, pver, action, fp, bytes(failed), (finding, *findings))
    pending.clear()


def _check(number: int, line: bytes, signals_line: bytes | None, ctx: Context,
           pending: list[tuple[int, bytes, str]], index: int) -> Row:
    """Every check but the signature, which is queued on ``pending`` (the line's ``index`` with its message).

    The common case, a record whose every check passes, takes a short path that
    only confirms it; anything else goes through _check_each, which works out
    and explains each finding (a property test holds both to the same verdicts).
    """
    try:
        row = _confirm(number, line, signals_line, ctx, pending, index)
    except (KeyError, TypeError, ValueError):  # a member missing or of another type (binascii.Error is a ValueError)
        row = None
    return row if row is not None else _check_each(number, line, signals_line, ctx, pending, index)


def _confirm(number: int, line: bytes, signals_line: bytes | None, ctx: Context,
             pending: list[tuple[int, bytes, str]], index: int) -> Row | None:
    """The row of a line that passes every check, or None when anything is off.

    Canonical form without the full-line pattern: a line with no escapes is JCS
    exactly when it re-serializes to itself with sorted keys. Values the other
    checks compare with computed ones (hashes, decision, keys, policy) need no
    format check of their own; the rest are checked here.
    """
    if signals_line is None or b"\\" in line:
        return None
    obj = orjson.loads(line)
    if type(obj) is not dict or len(obj) != 15 or orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) != line:
        return None
    pid, pver, key_id, issued, eid = obj["policyId"], obj["policyVersion"], obj["signerKeyId"], obj["issuedAt"], obj["executionId"]
    if type(pid) is not str or type(pver) is not str or type(key_id) is not str or type(eid) is not str:
        return None
    fast = ctx._fast.get((pid, pver))
    bounds = ctx._windows.get(key_id)
    if fast is None or bounds is None:
        ctx.prepare(pid, pver, key_id)
        return None
    if not fast:
        return None
    bundle_hash, fp_prefix, conforms, first_match, decisions, states = fast
    decision, signature = obj["decision"], obj["signature"]
    prefix = b'{"executionId":%s,"signals":' % orjson.dumps(eid)
    if not (
        bounds[0] <= issued < bounds[1]
        and issued < bounds[2]
        and _ISSUED_AT.fullmatch(issued)
        and obj["runtimeHash"] in ctx.fast_runtimes
        and ctx.artifact_ok(obj["evaluatorArtifactHash"])
        and type(obj["runtimeVersion"]) is str
        and type(obj["schemaVersion"]) is str
        and bundle_hash == obj["bundleHash"]
        and len(signature) == 88 and signature[85] in "AQgw" and signature[86:] == "=="
        and signals_line.startswith(prefix)
        and signals_line[-1:] == b"}"
    ):
        return None
    signals_jcs = signals_line[len(prefix):-1]
    if (
        sha256(signals_jcs).hexdigest() != obj["signalsHash"]
        or sha256(fp_prefix + signals_jcs + b"}").hexdigest() != obj["execution_fingerprint"]
    ):
        return None
    signals = orjson.loads(signals_jcs)
    if type(signals) is not dict or not conforms(signals):
        return None
    rule = first_match(signals)
    if rule < 0 or decisions[rule] != decision or states[rule] != obj["execution_state"]:
        return None
    if decision["requires_override"] is not (states[rule] == "pending_override"):
        return None  # 1 == True in the comparison above; the wire wants a JSON boolean
    pending.append((index, _signed_message(line, signature), key_id))
    return (number, eid, pid, pver, decision["action"], obj["execution_fingerprint"], _ALL_VERIFIED, ())


def _signed_message(line: bytes, signature: str) -> bytes:
    """signature || PAE(line without its signature member), the bytes crypto_sign_open takes.

    The signed payload is the canonical line minus ``,"signature":"…"``, which
    sorts right before the last member; strict base64 refuses a signature that
    only decodes under a lax reader.
    """
    cut = line.rfind(_SIG_MARK)
    view = memoryview(line)
    head, tail = view[:cut], view[cut + _SIG_CUT:]
    return b"".join((binascii.a2b_base64(signature, strict_mode=True), _PAE_PREFIX, b"%d " % (len(head) + len(tail)), head, tail))


def _check_each(number: int, line: bytes, signals_line: bytes | None, ctx: Context,
                pending: list[tuple[int, bytes, str]], index: int) -> Row:
    obj, problem = parse_attestation_line(line)
    if obj is None:
        return (number, _guess_id(line), None, None, None, None, _MALFORMED_STATUSES,
                (("MALFORMED", "schema", "a canonical v1 attestation", problem),))
    findings: list[tuple[str, str, str, str]] | None = None
    key = sig = fp = sh = pol = dec = run = VERIFIED
    eid, pid, pver, decision = obj["executionId"], obj["policyId"], obj["policyVersion"], obj["decision"]

    # key and signature; the signed payload is the canonical line minus its signature member
    key_id, issued = obj["signerKeyId"], obj["issuedAt"]
    trusted = ctx.keys.get(key_id)
    if trusted is None:
        key, sig = FAILED, NOT_CHECKABLE
        findings = [("KEY_UNKNOWN", "key", "a key in the trust store", f"signerKeyId {key_id}")]
    else:
        pending.append((index, _signed_message(line, obj["signature"]), key_id))
        not_before, not_after, revoked = ctx.window(key_id)
        if not (not_before <= issued < not_after and issued < revoked):
            window = trusted.status_at(issued)  # which bound, for the finding
            key = FAILED
            bounds = f"notBefore {trusted.notBefore}, notAfter {trusted.notAfter or '-'}, revokedAt {trusted.revokedAt or '-'}"
            findings = (findings or []) + [(_KEY_CODES[window], "key", f"issued while {key_id} was valid ({bounds})", f"issuedAt {issued}")]

    if obj["runtimeHash"] not in ctx.known_runtimes:
        run = UNKNOWN
        findings = (findings or []) + [("RUNTIME_UNKNOWN", "runtime", "a runtimeHash this verifier knows", obj["runtimeHash"])]

    entry = ctx.policies.get((pid, pver))
    if entry is None or entry.bundle_hash is None:
        pol = FAILED
        findings = (findings or []) + [("POLICY_MISSING", "policy", f"policies/{pid}/{pver}/policy.json",
                                        "absent" if entry is None else entry.problem or "unusable")]
        entry = None
    elif entry.bundle_hash != obj["bundleHash"]:
        pol = FAILED
        findings = (findings or []) + [("BUNDLE_HASH_MISMATCH", "policy", obj["bundleHash"], entry.bundle_hash)]
        entry = None

    # signals: the exporter writes them canonically, so if their bytes hash right they are the attested ones
    signals = signals_jcs = None
    if signals_line is None:
        fp = sh = dec = NOT_CHECKABLE
    else:
        prefix = b'{"executionId":%s,"signals":' % orjson.dumps(eid)
        if signals_line.startswith(prefix) and signals_line[-1:] == b"}":
            candidate = signals_line[len(prefix):-1]
            if candidate == b"null":
                fp = sh = dec = NOT_CHECKABLE
            elif sha256(candidate).hexdigest() == obj["signalsHash"]:
                signals_jcs = candidate
        if signals_jcs is None and fp == VERIFIED:
            # not the exporter's form, or the hash differs: parse, re-canonicalize, and say exactly what
            signals, signals_jcs, problem = _signals_slow(signals_line, eid)
            if problem is not None:
                fp = sh = dec = FAILED
                findings = (findings or []) + [("SIGNALS_HASH_MISMATCH", "signals_hash", f"the signals of {eid}", problem)]
            else:
                observed = sha256(signals_jcs).hexdigest()
                if observed != obj["signalsHash"]:
                    sh = FAILED
                    findings = (findings or []) + [("SIGNALS_HASH_MISMATCH", "signals_hash", obj["signalsHash"], observed)]
        if signals_jcs is not None:
            observed = sha256(ctx.fingerprint_prefix(pid, pver) + signals_jcs + b"}").hexdigest()
            if observed != obj["execution_fingerprint"]:
                fp = FAILED
                findings = (findings or []) + [("FINGERPRINT_MISMATCH", "fingerprint", obj["execution_fingerprint"], observed)]

    if dec == VERIFIED:
        if entry is None or entry.policy is None or signals_jcs is None:
            dec = NOT_CHECKABLE
        else:
            mismatch = _decision_mismatch(entry, signals if signals is not None else orjson.loads(signals_jcs), decision,
                                          obj["execution_state"])
            if mismatch:
                dec = FAILED
                findings = (findings or []) + [("DECISION_MISMATCH", "decision", *mismatch)]
    statuses = bytes((VERIFIED, key, sig, fp, sh, pol, dec, run, VERIFIED, NOT_CHECKABLE, NOT_CHECKABLE))
    return (number, eid, pid, pver, decision["action"], obj["execution_fingerprint"], statuses,
            tuple(findings) if findings else ())


_MALFORMED_STATUSES = bytes((FAILED, *[NOT_CHECKABLE] * (len(CHECKS) - 1)))
_ALL_VERIFIED = bytes(len(CHECKS) - LATE_CHECKS) + bytes((NOT_CHECKABLE,) * LATE_CHECKS)  # decided after the per-line pass
_SIG_CUT = len(b',"signature":"') + 88 + 1


def _signals_slow(signals_line: bytes, eid: str) -> tuple[dict[str, Any] | None, bytes | None, str | None]:
    """Parse a signals line that is not in the exporter's canonical form: (signals, JCS, problem).

    Strictly: a duplicate key would let two readers see different signals behind one hash.
    """
    try:
        item = parse_json(signals_line)
    except CanonicalizationError as exc:
        return None, None, f"unusable signals line ({exc.reason})"
    if type(item) is not dict or item.get("executionId") != eid:
        found = item.get("executionId") if type(item) is dict else None
        return None, None, f"the signals line paired with it is for executionId {found!r}"
    signals = item.get("signals")
    if type(signals) is not dict:
        return None, None, "signals is not an object"
    try:
        return signals, canonicalize(signals), None
    except ParmanaError as exc:
        return None, None, f"signals have no canonical form ({exc.reason})"


def _decision_mismatch(entry: PolicyEntry, signals: dict[str, Any], attested: dict[str, Any], state: str) -> tuple[str, str] | None:
    policy = entry.policy
    try:
        validate_signals(signals, policy)
        index = rule_matcher(policy)(signals)
    except ParmanaError as exc:
        return (f"{attested['action']} by rule {attested['ruleId']}", f"refused: {exc}")
    claimed = (attested["action"], attested["requires_override"], attested["reason"], attested["ruleId"], state)
    got = entry.outcomes[index] if index >= 0 else None
    if got == claimed:
        return None
    if got is None:
        return (f"{attested['action']} by rule {attested['ruleId']} ({state})", "no rule matches (SYS-006)")
    return (f"{attested['action']} by rule {attested['ruleId']} ({state})", f"{got[0]} by rule {got[3]} ({got[4]})")


class SignalsAligner:
    """Pairs each attestation line with its signals line.

    The exporter writes both files in the same order, so pairing is positional
    and costs a prefix comparison; once a line is out of step (lines deleted,
    inserted or reordered) the rest is matched by executionId instead.
    """

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._parked: dict[bytes, bytes] | None = None

    @property
    def in_step(self) -> bool:
        """Still pairing line by line (nothing was out of step so far)."""
        return self._parked is None

    def for_line(self, line: bytes) -> bytes | None:
        at = line.find(b',"executionId":"')
        if at < 0:
            return next(self._lines, None) if self._parked is None else None
        # the JSON string as written, quotes included (`,"` never occurs inside a JSON string)
        key = line[at + 15:line.find(b',"execution_fingerprint":', at)]
        if self._parked is None:
            candidate = next(self._lines, None)
            if candidate is None or candidate.startswith(b'{"executionId":' + key + b","):
                return candidate
            self._parked = {}
            self._park(candidate)
        found = self._parked.pop(key, None)
        while found is None:
            candidate = next(self._lines, None)
            if candidate is None:
                return None
            if candidate.startswith(b'{"executionId":' + key + b","):
                return candidate
            self._park(candidate)
        return found

    def _park(self, candidate: bytes) -> None:
        end = candidate.find(b',"signals":')
        if candidate.startswith(b'{"executionId":"') and end > 0:
            self._parked.setdefault(candidate[15:end], candidate)


def _guess_id(line: bytes) -> str | None:
    at = line.find(b'"executionId":"')
    if at < 0:
        return None
    end = line.find(b'"', at + 15)
    return line[at + 15:end].decode("utf-8", "replace") if end > 0 else None


# -- worker side -----------------------------------------------------------------------
# Each chunk carries its context as pickled bytes (a few KB); a worker
# unpickles a given context once.

_WORKER_CTX: tuple[bytes, Context] | None = None


NO_FINGERPRINT = bytes(32)
# (executionIds joined, their end offsets as array('Q') bytes, the distinct (policyId, policyVersion, action),
#  each row's index into those as array('I') bytes, statuses joined, fingerprints joined, {row: findings})
PackedRows = tuple[bytes, bytes, list[tuple[str | None, str | None, str | None]], bytes, bytes, bytes, dict[int, tuple]]


def pack_rows(rows: list[Row]) -> PackedRows:
    """Rows as a few flat buffers: what the verifier keeps, and what a worker sends back.

    Millions of small tuples would dominate both memory and the parent's
    unpickling time; these buffers cost the parent a few array extends per chunk.
    """
    ids, ends, kind_of, statuses, fps = bytearray(), array("Q"), array("I"), bytearray(), bytearray()
    kinds: dict[tuple[str | None, str | None, str | None], int] = {}
    findings: dict[int, tuple] = {}
    end = 0
    for offset, (_, eid, pid, pver, action, fp, status, found) in enumerate(rows):
        encoded = (eid or "").encode("utf-8", "surrogatepass")
        ids += encoded
        end += len(encoded)
        ends.append(end)
        key = (pid, pver, action)
        kind = kinds.get(key)
        if kind is None:
            kind = kinds[key] = len(kinds)
        kind_of.append(kind)
        statuses += status
        fps += bytes.fromhex(fp) if fp else NO_FINGERPRINT
        if found:
            findings[offset] = found
    return bytes(ids), ends.tobytes(), list(kinds), kind_of.tobytes(), bytes(statuses), bytes(fps), findings


def check_chunk(ctx_blob: bytes, chunk: tuple[int, bytes, bytes | list[bytes | None] | None]
                ) -> tuple[PackedRows, list[tuple[int, bytes]], int]:
    """A worker's share: the packed rows of a run of lines, its Merkle subtrees, and how many lines."""
    global _WORKER_CTX
    if _WORKER_CTX is None or _WORKER_CTX[0] != ctx_blob:
        _WORKER_CTX = (ctx_blob, pickle.loads(ctx_blob))
    ctx = _WORKER_CTX[1]
    start, joined, sigs = chunk
    lines = joined.split(b"\n")
    signals = sigs.split(b"\n") if isinstance(sigs, bytes) else sigs or repeat(None)
    with cyclic_gc_paused():
        rows = pack_rows(check_lines(start, lines, signals, ctx))
    tree = MerkleBuilder()
    tree.add_many(lines)
    return rows, tree.subtrees(), len(lines)
