"""Policy documents: strict loading, validation (POL-xxx) and discovery.

A policy is data written by people; the runtime only enforces it. Everything
that can be wrong with one is caught here, at load time, with a code and the
place in the document, so evaluation itself never meets a surprise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .canonical import canonical_hash, parse_json
from .errors import CanonicalizationError, PolicyError

# 1.1.0 adds the optional top-level ``override`` block (who may resolve pending_override executions)
SUPPORTED_SCHEMA_VERSIONS = ("1.0.0", "1.1.0")
OVERRIDE_SCHEMA_VERSION = "1.1.0"
SIGNAL_TYPES = ("integer", "boolean", "string", "enum")
COMPARISONS = ("greater_than", "greater_than_or_equal", "less_than", "less_than_or_equal")
OPERATORS = ("equals", "not_equals", *COMPARISONS, "in")
COMBINATORS = ("all", "any", "not")
REQUIRED_FIELDS = ("policyId", "policyVersion", "schemaVersion", "signalsSchema", "rules")
OPTIONAL_FIELDS = ("description", "override")
DEFAULT_PENDING_TTL = 7 * 24 * 3600
MAX_PENDING_TTL = 90 * 24 * 3600
OVERRIDE_FIELDS = ("roles", "threshold", "rejectThreshold", "pendingTtlSeconds", "allowSelfApproval")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POLICY_FILE = "policy.json"


class SignalSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    type: Literal["integer", "boolean", "string", "enum"]
    values: tuple[str, ...] | None = None


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    action: str
    requires_override: bool
    reason: str


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    id: str
    condition: dict[str, Any]
    outcome: Outcome


class OverrideRule(BaseModel):
    """Who may resolve this policy's pending_override executions: part of the signed document, so the
    runtime's operator cannot lower the bar. ``to_wire()`` is the block with every default filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    roles: tuple[str, ...]
    threshold: int = 1
    rejectThreshold: int = 1
    pendingTtlSeconds: int = DEFAULT_PENDING_TTL
    allowSelfApproval: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"allowSelfApproval": self.allowSelfApproval, "pendingTtlSeconds": self.pendingTtlSeconds,
                "rejectThreshold": self.rejectThreshold, "roles": list(self.roles), "threshold": self.threshold}


class PolicyIssue(BaseModel):
    """A load-time finding that does not stop the policy from loading."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    code: str
    reason: str


class Policy(BaseModel):
    """A validated policy. ``document`` is the exact JSON the bundleHash covers."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    policyId: str
    policyVersion: str
    schemaVersion: str
    signalsSchema: dict[str, SignalSpec]
    rules: tuple[Rule, ...]
    bundleHash: str
    document: dict[str, Any] = Field(repr=False)
    override: OverrideRule | None = None
    warnings: tuple[PolicyIssue, ...] = ()
    source: str | None = None

    @cached_property
    def key(self) -> tuple[str, str]:
        return (self.policyId, self.policyVersion)

    @cached_property
    def signal_checks(self) -> tuple[tuple[str, SignalSpec], ...]:
        """Signals in name order: the order validation reports problems in."""
        return tuple(sorted(self.signalsSchema.items()))

    def _repr_html_(self) -> str:
        from ._html import policy_html

        return policy_html(self)


# -- validation ----------------------------------------------------------------

def _fail(code: str, reason: str, where: str | None) -> PolicyError:
    prefix = f"{where}: " if where else ""
    return PolicyError(code, "policy", prefix + reason)


def parse_policy(document: Any, *, source: str | None = None) -> Policy:
    """Validate a policy document (already parsed JSON) and return a Policy."""
    where = source
    if not isinstance(document, dict):
        raise _fail("POL-002", "a policy must be a JSON object", where)
    for name in REQUIRED_FIELDS:
        if name not in document:
            raise _fail("POL-003", f"required field {name!r} is missing", where)
    for name in document:
        if name not in REQUIRED_FIELDS and name not in OPTIONAL_FIELDS:
            raise _fail("POL-008", f"unknown top-level field {name!r}", where)
    if "override" in document and document["schemaVersion"] != OVERRIDE_SCHEMA_VERSION:
        raise _fail("POL-008", f"an override block needs schemaVersion {OVERRIDE_SCHEMA_VERSION!r} "
                               f"(this document says {document['schemaVersion']!r})", where)
    pid, pver, schema_version = document["policyId"], document["policyVersion"], document["schemaVersion"]
    if not isinstance(pid, str) or not IDENTIFIER.match(pid):
        raise _fail("POL-007", f"policyId {pid!r} must be 1-128 characters of letters, digits, '.', '_' or '-'", where)
    if not isinstance(pver, str) or not SEMVER.match(pver):
        raise _fail("POL-007", f"policyVersion {pver!r} is not a semantic version like 1.0.0", where)
    if schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise _fail(
            "POL-004", f"schemaVersion {schema_version!r} is not supported (supported: {', '.join(SUPPORTED_SCHEMA_VERSIONS)})", where
        )
    if "description" in document and not isinstance(document["description"], str):
        raise _fail("POL-008", "description must be a string", where)
    schema = _parse_signals_schema(document["signalsSchema"], where)
    rules, warnings = _parse_rules(document["rules"], schema, where)
    override = _parse_override(document["override"], where) if "override" in document else None
    if override is None and schema_version == OVERRIDE_SCHEMA_VERSION and any(r.outcome.requires_override for r in rules):
        warnings = (*warnings, PolicyIssue(code="POL-025", reason="rules can end pending_override but there is no override "
                                                                   "block: nobody may resolve those executions"))
    try:
        bundle_hash = canonical_hash(document)
    except CanonicalizationError as exc:
        raise _fail("POL-002", f"policy has no canonical form: {exc.reason}", where) from None
    return Policy(
        policyId=pid,
        policyVersion=pver,
        schemaVersion=schema_version,
        signalsSchema=schema,
        rules=rules,
        bundleHash=bundle_hash,
        document=document,
        override=override,
        warnings=warnings,
        source=source,
    )


def _parse_override(raw: Any, where: str | None) -> OverrideRule:
    """POL-024 for an override block that is not exactly what OverrideRule says (no coercion, no extras)."""
    def bad(reason: str) -> PolicyError:
        return _fail("POL-024", f"override: {reason}", where)

    if not isinstance(raw, dict):
        raise bad("must be an object")
    extra = sorted(set(raw) - set(OVERRIDE_FIELDS))
    if extra:
        raise bad(f"unknown field(s) {extra} (known: {', '.join(OVERRIDE_FIELDS)})")
    roles = raw.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and IDENTIFIER.match(r) for r in roles) \
            or len(set(roles)) != len(roles):
        raise bad("roles must be a non-empty list of distinct role names")
    for name, low, high in (("threshold", 1, 100), ("rejectThreshold", 1, 100), ("pendingTtlSeconds", 1, MAX_PENDING_TTL)):
        value = raw.get(name, 1)
        if type(value) is not int or not low <= value <= high:
            raise bad(f"{name} must be an integer from {low} to {high}, not {value!r}")
    if type(raw.get("allowSelfApproval", False)) is not bool:
        raise bad("allowSelfApproval must be true or false")
    return OverrideRule(**{k: tuple(v) if k == "roles" else v for k, v in raw.items()})


def _parse_signals_schema(raw: Any, where: str | None) -> dict[str, SignalSpec]:
    if not isinstance(raw, dict) or not raw:
        raise _fail("POL-008", "signalsSchema must be a non-empty object of signal name -> {type}", where)
    schema: dict[str, SignalSpec] = {}
    for name, spec in raw.items():
        at = f"signalsSchema.{name}"
        if not IDENTIFIER.match(name):
            raise _fail("POL-008", f"{at}: signal names are letters, digits, '.', '_' or '-'", where)
        if not isinstance(spec, dict) or "type" not in spec:
            raise _fail("POL-009", f"{at} must be an object with a 'type'", where)
        extra = set(spec) - {"type", "values"}
        if extra:
            raise _fail("POL-008", f"{at}: unknown field(s) {sorted(extra)}", where)
        kind = spec["type"]
        if kind not in SIGNAL_TYPES:
            raise _fail("POL-009", f"{at}: type {kind!r} is not one of {', '.join(SIGNAL_TYPES)}", where)
        values = spec.get("values")
        if kind == "enum":
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str) for v in values)
                or len(set(values)) != len(values)
            ):
                raise _fail("POL-010", f"{at}: an enum needs 'values', a non-empty list of distinct strings", where)
            schema[name] = SignalSpec(type="enum", values=tuple(values))
        else:
            if values is not None:
                raise _fail("POL-008", f"{at}: only enum signals take 'values'", where)
            schema[name] = SignalSpec(type=kind)
    return schema


def _parse_rules(raw: Any, schema: dict[str, SignalSpec], where: str | None):
    if not isinstance(raw, list) or not raw:
        raise _fail("POL-016", "rules must be a non-empty list", where)
    rules: list[Rule] = []
    seen: set[str] = set()
    catch_all = False
    for i, rule in enumerate(raw):
        at = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise _fail("POL-008", f"{at} must be an object", where)
        for name in ("id", "condition", "outcome"):
            if name not in rule:
                raise _fail("POL-003", f"{at}: required field {name!r} is missing", where)
        extra = set(rule) - {"id", "condition", "outcome"}
        if extra:
            raise _fail("POL-008", f"{at}: unknown field(s) {sorted(extra)}", where)
        rid = rule["id"]
        if not isinstance(rid, str) or not IDENTIFIER.match(rid):
            raise _fail("POL-008", f"{at}: id must be a non-empty identifier string", where)
        if rid in seen:
            raise _fail("POL-020", f"rule id {rid!r} is used twice; rule ids must be unique", where)
        seen.add(rid)
        check_condition(rule["condition"], schema, f"{at}.condition", where)
        if rule["condition"] == {"all": []}:
            catch_all = True
        rules.append(Rule(id=rid, condition=rule["condition"], outcome=_parse_outcome(rule["outcome"], f"{at}.outcome", where)))
    warnings = () if catch_all else (
        PolicyIssue(code="POL-021", reason="no catch-all rule {\"all\": []}: inputs no rule matches are refused (SYS-006)"),
    )
    return tuple(rules), warnings


def _parse_outcome(raw: Any, at: str, where: str | None) -> Outcome:
    if not isinstance(raw, dict) or set(raw) != {"action", "requires_override", "reason"}:
        raise _fail("POL-015", f"{at} must be exactly {{action, requires_override, reason}}", where)
    action, override, reason = raw["action"], raw["requires_override"], raw["reason"]
    if not isinstance(action, str) or not action or not isinstance(reason, str) or type(override) is not bool:
        raise _fail("POL-015", f"{at}: action and reason are non-empty strings, requires_override a boolean", where)
    return Outcome(action=action, requires_override=override, reason=reason)


MAX_CONDITION_DEPTH = 32


def check_condition(cond: Any, schema: dict[str, SignalSpec], at: str, where: str | None, depth: int = 0) -> None:
    """Refuse any condition evaluation could not decide exactly."""
    if depth > MAX_CONDITION_DEPTH:
        raise _fail("POL-011", f"{at}: conditions nest deeper than {MAX_CONDITION_DEPTH} levels", where)
    if not isinstance(cond, dict) or not cond:
        raise _fail("POL-011", f"{at} must be a non-empty object", where)
    if "signal" not in cond:
        if len(cond) != 1:
            raise _fail("POL-011", f"{at}: a combinator has exactly one key of all / any / not", where)
        (op, arg), = cond.items()
        if op in ("all", "any"):
            if not isinstance(arg, list):
                raise _fail("POL-011", f"{at}.{op} must be a list of conditions", where)
            for j, sub in enumerate(arg):
                check_condition(sub, schema, f"{at}.{op}[{j}]", where, depth + 1)
        elif op == "not":
            check_condition(arg, schema, f"{at}.not", where, depth + 1)
        else:
            raise _fail("POL-013", f"{at}: unknown combinator {op!r} (use all, any, not, or a signal leaf)", where)
        return
    name = cond["signal"]
    if not isinstance(name, str) or name not in schema:
        raise _fail("POL-012", f"{at}: signal {name!r} is not declared in signalsSchema", where)
    ops = [k for k in cond if k != "signal"]
    if len(ops) != 1:
        raise _fail("POL-011", f"{at}: a leaf has 'signal' and exactly one operator", where)
    op = ops[0]
    if op not in OPERATORS:
        raise _fail("POL-013", f"{at}: unknown operator {op!r} (known: {', '.join(OPERATORS)})", where)
    spec, literal = schema[name], cond[op]
    if op == "in":
        if not isinstance(literal, list) or not literal:
            raise _fail("POL-014", f"{at}: 'in' takes a non-empty list", where)
        for item in literal:
            _check_literal(item, spec, name, at, where)
        return
    if op in COMPARISONS and spec.type != "integer":
        raise _fail("POL-014", f"{at}: {op} needs an integer signal, {name!r} is {spec.type}", where)
    _check_literal(literal, spec, name, at, where)


def _check_literal(value: Any, spec: SignalSpec, name: str, at: str, where: str | None) -> None:
    ok = {
        "integer": type(value) is int,
        "boolean": type(value) is bool,
        "string": type(value) is str,
        "enum": type(value) is str and value in (spec.values or ()),
    }[spec.type]
    if not ok:
        expected = f"one of {list(spec.values or ())}" if spec.type == "enum" else f"a {spec.type}"
        raise _fail("POL-014", f"{at}: literal {value!r} does not fit signal {name!r}, which takes {expected}", where)


# -- files and discovery ---------------------------------------------------------

def load_policy_file(path: str | Path, *, check_location: bool = True) -> Policy:
    """Load ``.../{policyId}/{policyVersion}/policy.json`` and check it matches its folder."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail("POL-001", f"cannot read policy file: {exc.strerror}", str(path)) from None
    try:
        document = parse_json(data)
    except CanonicalizationError as exc:
        raise _fail("POL-002", exc.reason, str(path)) from None
    policy = parse_policy(document, source=str(path))
    if check_location:
        if policy.policyId != path.parent.parent.name:
            raise _fail("POL-005", f"policyId {policy.policyId!r} does not match its folder {path.parent.parent.name!r}", str(path))
        if policy.policyVersion != path.parent.name:
            raise _fail("POL-006", f"policyVersion {policy.policyVersion!r} does not match its folder {path.parent.name!r}", str(path))
    return policy


def version_order(version: str) -> tuple:
    """Sort key in semver precedence for the release part (1.10.0 after 1.9.0); odd names sort last, by text."""
    core = version.split("+", 1)[0].split("-", 1)
    numbers = core[0].split(".")
    if not all(n.isdigit() for n in numbers):
        return (1, (), version)
    return (0, tuple(map(int, numbers)), len(core) == 1, version)  # a pre-release sorts before its release


class PolicyStore:
    """Policies under ``root/{policyId}/{policyVersion}/policy.json``, loaded once each."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():  # a mistyped folder would otherwise look like one holding no policies
            raise PolicyError("POL-001", "policy", f"no policy folder at {self.root}")
        self._cache: dict[tuple[str, str], Policy] = {}

    def __repr__(self) -> str:
        return f"PolicyStore({str(self.root)!r})"

    def get(self, policy_id: str, policy_version: str) -> Policy:
        key = (policy_id, policy_version)
        policy = self._cache.get(key)
        if policy is None:
            if not (IDENTIFIER.match(policy_id) and SEMVER.match(policy_version)):
                raise PolicyError("POL-001", "policy", f"no policy {policy_id!r} version {policy_version!r}")
            path = self.root / policy_id / policy_version / POLICY_FILE
            if not path.is_file():
                known = ", ".join(self.versions(policy_id)) or "none"
                raise PolicyError(
                    "POL-001", "policy", f"no policy {policy_id!r} version {policy_version!r} in {self.root} (versions found: {known})"
                )
            policy = self._cache[key] = load_policy_file(path)
        return policy

    def versions(self, policy_id: str) -> list[str]:
        folder = self.root / policy_id
        return sorted((p.parent.name for p in folder.glob(f"*/{POLICY_FILE}")), key=version_order) if folder.is_dir() else []

    def paths(self) -> Iterator[Path]:
        yield from sorted(self.root.glob(f"*/*/{POLICY_FILE}"))

    def scan(self) -> list[Policy | PolicyError]:
        """Every policy file found, loaded or with the error that stops it."""
        out: list[Policy | PolicyError] = []
        for path in self.paths():
            try:
                policy = load_policy_file(path)
                self._cache.setdefault(policy.key, policy)
                out.append(policy)
            except PolicyError as exc:
                out.append(exc)
        return out
