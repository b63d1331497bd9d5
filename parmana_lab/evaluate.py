"""Deterministic evaluation: the ordered rules of a policy, first match wins.

Pure functions only: no clock, no randomness, no I/O. Conditions are compiled
once per policy into closures, so evaluating is a handful of comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import EvaluationError
from .policy import Policy

Predicate = Callable[[dict[str, Any]], bool]


class Decision(BaseModel):
    """The matched rule's outcome plus its ruleId."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    action: str
    requires_override: bool
    reason: str
    ruleId: str

    @property
    def execution_state(self) -> str:
        return "pending_override" if self.requires_override else "completed"


def evaluate(policy: Policy, signals: dict[str, Any]) -> Decision:
    """Decide on already validated signals; SYS-006 when no rule matches."""
    for predicate, decision in _compiled(policy):
        if predicate(signals):
            return decision
    raise EvaluationError(
        "SYS-006",
        "execute",
        f"no rule of {policy.policyId} {policy.policyVersion} matched these signals; refusing to decide (fail closed)",
    )


def _compiled(policy: Policy) -> tuple[tuple[Predicate, Decision], ...]:
    compiled = policy._compiled
    if compiled is None:
        compiled = tuple(
            (compile_condition(rule.condition), Decision(ruleId=rule.id, **rule.outcome.model_dump()))
            for rule in policy.rules
        )
        policy._compiled = compiled
    return compiled


def compile_condition(cond: dict[str, Any]) -> Predicate:
    """Turn a validated condition (see policy.check_condition) into a predicate."""
    if "signal" not in cond:
        (op, arg), = cond.items()
        if op == "not":
            inner = compile_condition(arg)
            return lambda s: not inner(s)
        subs = tuple(compile_condition(c) for c in arg)
        if op == "all":
            return lambda s: all(f(s) for f in subs) if subs else True
        return lambda s: any(f(s) for f in subs)
    name = cond["signal"]
    (op, lit), = ((k, v) for k, v in cond.items() if k != "signal")
    if op == "equals":
        return lambda s: s[name] == lit
    if op == "not_equals":
        return lambda s: s[name] != lit
    if op == "greater_than":
        return lambda s: s[name] > lit
    if op == "greater_than_or_equal":
        return lambda s: s[name] >= lit
    if op == "less_than":
        return lambda s: s[name] < lit
    if op == "less_than_or_equal":
        return lambda s: s[name] <= lit
    if op == "in":
        members = tuple(lit)
        return lambda s: s[name] in members
    raise ValueError(f"unvalidated operator {op!r}")  # policy.check_condition rules this out
