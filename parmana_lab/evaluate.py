"""Deterministic evaluation: the ordered rules of a policy, first match wins.

Pure functions only: no clock, no randomness, no I/O. A policy's rules are
compiled once into a single Python function, so evaluating is one call and a
handful of comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import EvaluationError
from .policy import Policy
from .validation import validate_signals


class Decision(BaseModel):
    """The matched rule's outcome plus its ruleId."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)
    action: str
    requires_override: bool
    reason: str
    ruleId: str

    @property
    def execution_state(self) -> str:
        return "pending_override" if self.requires_override else "completed"


def evaluate(policy: Policy, signals: dict[str, Any]) -> Decision:
    """Check the signals against the policy's signalsSchema (VAL-xxx), then decide; SYS-006 when no rule matches.

    Unchecked signals would reach the rules as KeyErrors or as comparisons of
    the wrong types (True >= 700 is False, not a refusal).
    """
    validate_signals(signals, policy)
    return decide(policy, signals)


def decide(policy: Policy, signals: dict[str, Any]) -> Decision:
    """evaluate for signals the caller has already validated (the runtime does, once per request)."""
    rules, decisions = _compiled(policy)
    index = rules(signals)
    if index < 0:
        raise EvaluationError(
            "SYS-006",
            "execute",
            f"no rule of {policy.policyId} {policy.policyVersion} matched these signals; refusing to decide (fail closed)",
        )
    return decisions[index]


def rule_matcher(policy: Policy) -> Callable[[dict[str, Any]], int]:
    """The policy's compiled rules: signals -> index of the first matching rule, or -1 (no Decision built)."""
    return _compiled(policy)[0]


def _compiled(policy: Policy) -> tuple[Callable[[dict[str, Any]], int], tuple[Decision, ...]]:
    # Cached on the (frozen) policy the way functools.cached_property caches:
    # in its __dict__, which a plain attribute read finds at dict speed.
    compiled = policy.__dict__.get("_evaluator")
    if compiled is None:
        compiled = policy.__dict__["_evaluator"] = (
            compile_rules([rule.condition for rule in policy.rules]),
            tuple(Decision(ruleId=rule.id, **rule.outcome.model_dump()) for rule in policy.rules),
        )
    return compiled


_PYTHON_OPS = {
    "equals": "==",
    "not_equals": "!=",
    "greater_than": ">",
    "greater_than_or_equal": ">=",
    "less_than": "<",
    "less_than_or_equal": "<=",
    "in": "in",
}


def compile_rules(conditions: list[dict[str, Any]]) -> Callable[[dict[str, Any]], int]:
    """One Python function returning the index of the first matching condition, or -1.

    Conditions (validated by policy.check_condition, depth-limited) become a
    chain of ``if`` tests. Signal names and literals never enter the source:
    they are read from the constant tuple ``K`` by index, so nothing a policy
    says can change what the generated code does beyond its comparisons.
    """
    consts: list[Any] = []
    lines = ["def decide(s):"]
    for i, cond in enumerate(conditions):
        lines.append(f"    if {_expr(cond, consts)}: return {i}")
    lines.append("    return -1")
    namespace: dict[str, Any] = {"K": tuple(consts)}
    exec(compile("\n".join(lines), "<policy>", "exec"), namespace)  # noqa: S102 - source built above from indices only
    return namespace["decide"]


def _expr(cond: dict[str, Any], consts: list[Any]) -> str:
    if "signal" not in cond:
        (op, arg), = cond.items()
        if op == "not":
            return f"(not {_expr(arg, consts)})"
        parts = [_expr(c, consts) for c in arg]
        if not parts:
            return "True" if op == "all" else "False"
        return "(" + (" and " if op == "all" else " or ").join(parts) + ")"
    (op, literal), = ((k, v) for k, v in cond.items() if k != "signal")
    if op == "in":
        literal = tuple(literal)
    consts.append(cond["signal"])
    consts.append(literal)
    return f"(s[K[{len(consts) - 2}]] {_PYTHON_OPS[op]} K[{len(consts) - 1}])"
